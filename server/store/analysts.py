"""Analyst tokens: who may read the dashboard when it is reachable from other machines.

A token reads ``<id>.<secret>``: the id finds one row (so checking a token costs one scrypt, not
one per analyst), the secret is kept only as a salted scrypt hash (:mod:`server.store.tokens`).
Analysts only read, so a token grants nothing in the store beyond what ``fl-history`` shows;
creating and revoking are admin actions and go to the audit log.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import inspect, select
from sqlalchemy.orm import Session

from server.store import audit_chain
from server.store import tokens as secret_tokens
from server.store.base import StoreBase
from server.store.models import AnalystToken, utcnow
from shared.errors import AuthError, DuplicateError, NotFoundError, StoreError

ANALYST_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")
_TOKEN = re.compile(r"^(\d{1,12})\.([A-Za-z0-9_-]{16,128})$")
_AUTH_HINT = "Ask the admin for a dashboard token (fl-server analyst-token create NAME)."


@dataclass(frozen=True)
class AnalystInfo:
    """An analyst token as the admin lists it: never the secret, never its hash."""

    id: int
    name: str
    created_by: str
    created_at: datetime
    revoked_at: datetime | None

    @property
    def active(self) -> bool:
        return self.revoked_at is None


def _info(row: AnalystToken) -> AnalystInfo:
    return AnalystInfo(row.id, row.name, row.created_by, row.created_at, row.revoked_at)


class AnalystStore(StoreBase):
    """Create, check, list and revoke analyst tokens."""

    def create_analyst_token(self, name: str, *, actor: str = "admin") -> tuple[AnalystInfo, str]:
        """A new token for ``name``; only its hash is kept, so show the returned token now or never."""
        if not ANALYST_NAME.match(name):
            raise StoreError(f"invalid analyst name {name!r}",
                             hint="Use 1-64 letters, digits, '.', '_', '@' or '-', starting with a letter or digit.")
        secret = secret_tokens.new_token()
        token_hash = secret_tokens.hash_token(secret)
        with self._write() as session:
            if _active_rows(session, name):
                raise DuplicateError(f"analyst '{name}' already has an active token",
                                     hint=f"Revoke it first: fl-server analyst-token revoke {name}")
            row = AnalystToken(name=name, token_hash=token_hash, created_by=actor, created_at=utcnow())
            session.add(row)
            session.flush()
            audit_chain.append(session, actor, "create_analyst_token", {"analyst": name, "token_id": row.id})
            return _info(row), f"{row.id}.{secret}"

    def authenticate_analyst(self, token: str) -> AnalystInfo:
        """The analyst whose active token this is; AuthError for anything else."""
        match = _TOKEN.match(token.strip())
        if match is None:
            raise AuthError("not an analyst token", hint=_AUTH_HINT)
        if not self._has_analyst_table():
            raise AuthError("no analyst token has been created yet", hint=_AUTH_HINT)
        with self._read() as session:
            row = session.get(AnalystToken, int(match.group(1)))
            if row is None or not secret_tokens.verify_token(match.group(2), row.token_hash):
                raise AuthError("unknown or wrong analyst token", hint=_AUTH_HINT)
            if row.revoked_at is not None:
                raise AuthError(f"the token of analyst '{row.name}' was revoked", hint=_AUTH_HINT)
            return _info(row)

    def analyst_token_active(self, token_id: int) -> bool:
        """Cheap re-check (no scrypt) for a token already verified once: revocation bites at once."""
        with self._read() as session:
            row = session.get(AnalystToken, token_id)
            return row is not None and row.revoked_at is None

    def revoke_analyst_token(self, name: str, *, actor: str = "admin") -> list[AnalystInfo]:
        """Revoke every active token of ``name``; the rows stay for the audit trail."""
        with self._write() as session:
            rows = _active_rows(session, name)
            if not rows:
                raise NotFoundError(f"analyst '{name}' has no active token",
                                    hint="See the tokens with: fl-server analyst-token list")
            now = utcnow()
            for row in rows:
                row.revoked_at = now
            audit_chain.append(session, actor, "revoke_analyst_token",
                               {"analyst": name, "token_ids": [r.id for r in rows]})
            return [_info(r) for r in rows]

    def list_analyst_tokens(self) -> list[AnalystInfo]:
        if not self._has_analyst_table():
            return []
        with self._read() as session:
            return [_info(r) for r in session.scalars(select(AnalystToken).order_by(AnalystToken.id))]

    def _has_analyst_table(self) -> bool:
        """A store created before analyst tokens existed, opened read-only, lacks the table."""
        return inspect(self._engine).has_table(AnalystToken.__tablename__)


def _active_rows(session: Session, name: str) -> list[AnalystToken]:
    query = select(AnalystToken).where(AnalystToken.name == name, AnalystToken.revoked_at.is_(None))
    return list(session.scalars(query))
