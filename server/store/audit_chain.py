"""Append-only audit log: a hash chain, each row sealed with a key outside the database.

Each row stores ``row_hash = sha256(prev_hash + canonical_json(content))`` where the content is
its id, time, actor, action and detail, and ``prev_hash`` is the previous row's hash (64 zeros
for the first); editing, removing or reordering a row breaks the chain, and anyone who can read
the database (analysts too) can check that. But anyone who can *write* the database could also
recompute the chain after an edit, so every row also gets a seal, ``HMAC-SHA256(audit key,
row_hash)`` in ``audit_seals``, under a key derived from the server key file
(:mod:`server.store.server_key`), which is not in the database. The admin's check
(``fl-server audit``) verifies chain and seals; a read-only store, without the key, verifies
the chain and says the seals are the admin's to check. The key reaches this module through
the session's ``info`` (:data:`AUDIT_KEY`), set by the store. Appends happen inside the
caller's write transaction, which holds the database-wide write lock, so two writers can never
chain onto the same row.

Cutting rows off the *end*, or a rewrite by someone holding the key, leaves a valid chain that
only a copy of an earlier head kept elsewhere reveals: :func:`head` gives that copy
(``fl-server audit --export-head``) and :func:`verify_chain` checks the log still holds it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from server.store.models import AuditRow, AuditSeal, utcnow
from server.store.records import AuditVerdict
from shared.errors import ReadOnlyStoreError

GENESIS_HASH = "0" * 64
#: Key of ``Session.info`` under which the store puts the audit HMAC key.
AUDIT_KEY = "fl_audit_key"


@dataclass(frozen=True)
class AuditHead:
    """The last row of the log at one moment: keep it outside the server to pin the past."""

    row_id: int
    row_hash: str

    def as_json(self) -> dict[str, Any]:
        return {"row_id": self.row_id, "row_hash": self.row_hash}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> AuditHead:
        row_id, row_hash = data.get("row_id"), data.get("row_hash")
        if not isinstance(row_id, int) or not isinstance(row_hash, str) or len(row_hash) != 64:
            raise ValueError("an audit head is {\"row_id\": N, \"row_hash\": \"<64 hex digits>\"}")
        return cls(row_id, row_hash)


def canonical_json(value: Any) -> str:
    """One spelling per value: sorted keys, no spaces, no NaN."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )


def json_safe(value: Any) -> Any:
    """``value`` as it will read back from a JSON column: numpy scalars become numbers, NaN/Inf
    become None (JSON has no spelling for them), paths, enums and dates become strings."""
    if isinstance(value, dict):
        return {str(key): json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    if isinstance(value, np.ndarray):
        return json_safe(value.tolist())
    if isinstance(value, np.generic):
        return json_safe(value.item())
    if isinstance(value, Enum):
        return json_safe(value.value)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


def row_hash(
    prev_hash: str, row_id: int, at: datetime, actor: str, action: str, detail: dict[str, Any]
) -> str:
    content = {
        "id": row_id,
        "at": at.isoformat(),
        "actor": actor,
        "action": action,
        "detail": detail,
    }
    return hashlib.sha256((prev_hash + canonical_json(content)).encode("utf-8")).hexdigest()


def seal(key: bytes, hash_of_row: str) -> str:
    """The server's HMAC over one row's hash."""
    return hmac.new(key, hash_of_row.encode("ascii"), hashlib.sha256).hexdigest()


def audit_key(session: Session) -> bytes | None:
    """The audit key the store attached to this session; None on an analyst's read-only store."""
    return session.info.get(AUDIT_KEY)


def append(session: Session, actor: str, action: str, detail: dict[str, Any]) -> AuditRow:
    """Chain and seal one row; call only inside a write transaction."""
    key = audit_key(session)
    if key is None:
        raise ReadOnlyStoreError(
            "the audit log can only be appended to with the server key",
            hint="Audit rows are written by the admin's fl-server and the session processes.",
        )
    last = session.scalars(select(AuditRow).order_by(AuditRow.id.desc()).limit(1)).first()
    row_id = 1 if last is None else last.id + 1
    prev = GENESIS_HASH if last is None else last.row_hash
    at = utcnow()
    detail = json_safe(detail)
    row = AuditRow(
        id=row_id,
        at=at,
        actor=actor,
        action=action,
        detail=detail,
        prev_hash=prev,
        row_hash=row_hash(prev, row_id, at, actor, action, detail),
    )
    session.add(row)
    session.flush()
    session.add(AuditSeal(row_id=row_id, mac=seal(key, row.row_hash)))
    session.flush()
    return row


def head(session: Session) -> AuditHead:
    """The newest row's id and hash (row 0 and the genesis hash for an empty log)."""
    last = session.scalars(select(AuditRow).order_by(AuditRow.id.desc()).limit(1)).first()
    return AuditHead(0, GENESIS_HASH) if last is None else AuditHead(last.id, last.row_hash)


def verify_chain(session: Session, expected_head: AuditHead | None = None) -> AuditVerdict:
    """Walk the log in id order and report the first row that breaks the chain (or, with the
    key, lacks the server's seal); with ``expected_head`` (exported earlier) also check that
    the log still holds that row unchanged."""
    key = audit_key(session)
    seals = {row_id: mac for row_id, mac in session.execute(select(AuditSeal.row_id, AuditSeal.mac))} if key else {}
    pinned: str | None = None
    expected_prev = GENESIS_HASH
    checked = 0
    previous_id: int | None = None
    for row in session.scalars(
        select(AuditRow).order_by(AuditRow.id).execution_options(yield_per=500)
    ):
        checked += 1
        problem = _row_problem(row, expected_prev, previous_id, key, seals)
        if problem is not None:
            return _broken(row.id, checked, problem)
        expected_prev = row.row_hash
        previous_id = row.id
        if expected_head is not None and row.id == expected_head.row_id:
            pinned = row.row_hash
    if expected_head is not None and expected_head.row_id > 0 and pinned != expected_head.row_hash:
        what = "is missing" if pinned is None else "does not match the exported head"
        return _broken(
            expected_head.row_id,
            checked,
            f"audit row {expected_head.row_id} {what}: "
            "the log was cut short or rewritten since that head was exported",
        )
    message = f"audit chain intact ({checked} rows"
    message += ", each sealed with the server key)" if key else "; the admin's `fl-server audit` checks the seals)"
    return AuditVerdict(ok=True, rows_checked=checked, first_bad_row_id=None, message=message)


def _row_problem(
    row: AuditRow, expected_prev: str, previous_id: int | None, key: bytes | None, seals: dict[int, str]
) -> str | None:
    if row.prev_hash != expected_prev:
        after = f"row {previous_id}" if previous_id is not None else "the start of the log"
        return f"audit row {row.id} does not follow {after}: a row was removed, inserted or reordered"
    if row_hash(row.prev_hash, row.id, row.at, row.actor, row.action, row.detail) != row.row_hash:
        return f"audit row {row.id} was edited: its content no longer matches its hash"
    if key is not None and not hmac.compare_digest(seals.get(row.id, ""), seal(key, row.row_hash)):
        return (
            f"audit row {row.id} does not carry the server's seal: the log was rewritten "
            "(and re-chained) by someone without the server key"
        )
    return None


def _broken(row_id: int, checked: int, message: str) -> AuditVerdict:
    return AuditVerdict(ok=False, rows_checked=checked, first_bad_row_id=row_id, message=message)
