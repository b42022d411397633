"""Sites' identity public keys: registered once by the site, handed to its co-participants in tickets.

The first registration over the authenticated socket wins (trust on first use); registering the
same key again is a no-op, another key is refused until the admin resets it, and both changes
go to the audit log, so a swapped key always leaves a trace. Keys are stored as the base64 the
wire carries; their validity is checked by the caller (``shared.secagg_identity``).
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import select

from server.store import audit_chain
from server.store.base import StoreBase
from server.store.models import SiteIdentityKey, utcnow
from server.store.rows import site_row
from shared.errors import DuplicateError


class IdentityKeyStore(StoreBase):
    """Register, look up and reset sites' identity keys."""

    def register_identity_key(self, site: str, public_key: str, *, fingerprint: str = "") -> bool:
        """Record ``site``'s key; True when newly registered, False when it was already this key."""
        with self._write() as session:
            site_row(session, site)
            row = session.get(SiteIdentityKey, site)
            if row is not None and row.public_key == public_key:
                return False
            if row is not None:
                raise DuplicateError(
                    f"site '{site}' already registered another identity key",
                    hint="If the site really lost its key, the admin can reset it: fl-server reset-identity-key "
                         f"{site}; then run setup again.",
                )
            session.add(SiteIdentityKey(site=site, public_key=public_key, registered_at=utcnow()))
            audit_chain.append(session, site, "register_identity_key", {"site": site, "fingerprint": fingerprint})
        return True

    def identity_keys(self, sites: Iterable[str]) -> dict[str, str]:
        """The registered key of each of ``sites`` that has one (base64)."""
        wanted = list(sites)
        with self._read() as session:
            rows = session.scalars(select(SiteIdentityKey).where(SiteIdentityKey.site.in_(wanted)))
            return {row.site: row.public_key for row in rows}

    def reset_identity_key(self, site: str, *, actor: str = "admin") -> bool:
        """Forget ``site``'s key so it can register a new one; False when it had none."""
        with self._write() as session:
            site_row(session, site)
            row = session.get(SiteIdentityKey, site)
            if row is None:
                return False
            session.delete(row)
            audit_chain.append(session, actor, "reset_identity_key", {"site": site})
        return True
