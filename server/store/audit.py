"""The audit trail as the store exposes it: append, verify the chain (and, with the server key,
its seals), export its head, list entries.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select

from server.store import audit_chain
from server.store.base import StoreBase
from server.store.models import (
    AuditRow,
)
from server.store.records import (
    AuditEntry,
    AuditVerdict,
)


class AuditStore(StoreBase):
    """The audit trail through the store."""

    def audit(self, actor: str, action: str, detail: dict[str, Any]) -> None:
        with self._write() as session:
            audit_chain.append(session, actor, action, detail)

    def verify_audit(self, expected_head: audit_chain.AuditHead | None = None) -> AuditVerdict:
        """Check the keyed chain; with a head exported earlier, also that it is still in the log."""
        with self._read() as session:
            return audit_chain.verify_chain(session, expected_head)

    def audit_head(self) -> audit_chain.AuditHead:
        """The newest row's id and hash, to keep outside the server (see ``fl-server audit``)."""
        with self._read() as session:
            return audit_chain.head(session)

    def audit_trail(self, *, action: str | None = None, actor: str | None = None) -> list[AuditEntry]:
        """Audit rows oldest first, optionally of one action or actor (for the admin and tests)."""
        query = select(AuditRow).order_by(AuditRow.id)
        if action is not None:
            query = query.where(AuditRow.action == action)
        if actor is not None:
            query = query.where(AuditRow.actor == actor)
        with self._read() as session:
            return [AuditEntry(r.id, r.at, r.actor, r.action, dict(r.detail)) for r in session.scalars(query)]

    def audit_page(self, *, offset: int, limit: int) -> tuple[list[AuditEntry], int]:
        """``limit`` audit rows newest first, skipping ``offset``, and how many rows there are (the dashboard's pages)."""
        query = select(AuditRow).order_by(AuditRow.id.desc()).offset(offset).limit(limit)
        with self._read() as session:
            total = session.scalar(select(func.count()).select_from(AuditRow)) or 0
            return [AuditEntry(r.id, r.at, r.actor, r.action, dict(r.detail)) for r in session.scalars(query)], total
