"""Enrolled sites: names, salted token hashes, privacy budgets, the enabled flag.

A token is shown once at enrolment (or rotation) and only its scrypt hash is kept
(:mod:`server.store.tokens`). A failed login says the same thing, after the same work, whether
the site is unknown or the token wrong. Disabling a site also revokes its secrets in live
sessions, so it is out of a running session from the next admission or result check.
"""

from __future__ import annotations

import re

from sqlalchemy import select

from server.store import audit_chain
from server.store import tokens as site_tokens
from server.store.base import StoreBase
from server.store.lifecycle import LIVE_SESSION_STATES
from server.store.models import (
    FlSession,
    SessionMember,
    Site,
    utcnow,
)
from server.store.records import (
    SiteInfo,
)
from server.store.row_records import (
    site_info,
)
from server.store.rows import (
    site_row,
)
from shared.errors import (
    AuthError,
    DuplicateError,
    StoreError,
)

SITE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
#: One answer for an unknown site and a wrong token, so an outsider cannot list enrolled names.
LOGIN_FAILED = "unknown site or wrong token"
LOGIN_HINT = "Check the site name and the token the admin gave you (fl-client setup saves them)."


class SiteStore(StoreBase):
    """Enrolled sites: tokens (salted hashes only), budgets, enabled flag."""

    def enrol_site(
        self,
        name: str,
        *,
        budget_epsilon: float = 10.0,
        budget_delta: float = 1e-5,
        allow_no_dp: bool = False,
        actor: str = "admin",
    ) -> str:
        """Register a site and return its token; only a salted hash is kept, so show it now or never.

        ``allow_no_dp`` grants training without noise (no finite epsilon; benchmarks only).
        """
        if not SITE_NAME.match(name):
            raise StoreError(
                f"invalid site name {name!r}",
                hint="Use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit.",
            )
        if not (budget_epsilon > 0 and 0 < budget_delta < 1):
            raise StoreError(
                f"invalid privacy budget epsilon={budget_epsilon} delta={budget_delta}"
            )
        token = site_tokens.new_token()
        token_hash = site_tokens.hash_token(token)
        with self._write() as session:
            if session.get(Site, name) is not None:
                raise DuplicateError(f"site '{name}' is already enrolled")
            session.add(
                Site(
                    name=name,
                    token_hash=token_hash,
                    budget_epsilon=budget_epsilon,
                    budget_delta=budget_delta,
                    enabled=True,
                    created_at=utcnow(),
                    allow_no_dp=allow_no_dp,
                )
            )
            audit_chain.append(
                session,
                actor,
                "enrol_site",
                {"site": name, "budget_epsilon": budget_epsilon, "budget_delta": budget_delta,
                 "allow_no_dp": allow_no_dp},
            )
        return token

    def authenticate(self, site: str, token: str) -> SiteInfo:
        with self._read() as session:
            row = session.get(Site, site)
            if row is None:
                site_tokens.burn_like_verify(token)
                raise AuthError(LOGIN_FAILED, hint=LOGIN_HINT)
            if not site_tokens.verify_token(token, row.token_hash):
                raise AuthError(LOGIN_FAILED, hint=LOGIN_HINT)
            if not row.enabled:
                raise AuthError(
                    f"site '{site}' is disabled", hint="Ask the admin to re-enable the site."
                )
            return site_info(row)

    def disable_site(self, name: str, *, actor: str = "admin") -> int:
        """Disable a site and revoke its secrets in live sessions; returns how many were revoked."""
        with self._write() as session:
            site_row(session, name).enabled = False
            members = session.scalars(
                select(SessionMember)
                .join(FlSession, FlSession.id == SessionMember.session_id)
                .where(SessionMember.site == name, FlSession.state.in_(LIVE_SESSION_STATES))
            ).all()
            revoked = [m.session_id for m in members if m.secret is not None]
            for member in members:
                member.secret = None
            audit_chain.append(session, actor, "disable_site", {"site": name, "revoked_sessions": revoked})
            return len(revoked)

    def enable_site(self, name: str, *, actor: str = "admin") -> None:
        """Let a disabled site log in again (its revoked session secrets stay revoked)."""
        with self._write() as session:
            site_row(session, name).enabled = True
            audit_chain.append(session, actor, "enable_site", {"site": name})

    def rotate_token(self, name: str, *, actor: str = "admin") -> str:
        """Replace a site's token; the old one stops working. Returns the new one (shown once)."""
        token = site_tokens.new_token()
        token_hash = site_tokens.hash_token(token)
        with self._write() as session:
            site_row(session, name).token_hash = token_hash
            audit_chain.append(session, actor, "rotate_token", {"site": name})
        return token

    def get_site(self, name: str) -> SiteInfo:
        with self._read() as session:
            return site_info(site_row(session, name))

    def list_sites(self) -> list[SiteInfo]:
        with self._read() as session:
            return [site_info(row) for row in session.scalars(select(Site).order_by(Site.name))]

