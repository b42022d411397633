"""Append-only audit log whose rows form a keyed hash chain, so editing or removing a row shows.

Each row stores ``row_hash = HMAC-SHA256(audit key, prev_hash + canonical_json(content))`` where
the content is its id, time, actor, action and detail, and ``prev_hash`` is the previous row's
hash (64 zeros for the first). The audit key is derived from the server key file, which lives
outside the database (:mod:`server.store.server_key`): someone who can write the database but
not read that file cannot edit a row and re-chain the rest. The key reaches this module through
the write session's ``info`` (:data:`AUDIT_KEY`), set by the store. Appends happen inside the
caller's write transaction, which holds the database-wide write lock, so two writers can never
chain onto the same row.

The chain proves the rows are unchanged relative to each other; cutting rows off the *end*, or
a rewrite by someone holding the key, leaves a valid chain that only a copy of an earlier head
kept elsewhere reveals: :func:`head` gives that copy (``fl-server audit --export-head``) and
:func:`verify_chain` checks the log still contains it.
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

from server.store.models import AuditRow, utcnow
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
    key: bytes,
    prev_hash: str,
    row_id: int,
    at: datetime,
    actor: str,
    action: str,
    detail: dict[str, Any],
) -> str:
    content = {
        "id": row_id,
        "at": at.isoformat(),
        "actor": actor,
        "action": action,
        "detail": detail,
    }
    message = (prev_hash + canonical_json(content)).encode("utf-8")
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def audit_key(session: Session) -> bytes:
    """The audit key the store attached to this session; none on an analyst's read-only store."""
    key = session.info.get(AUDIT_KEY)
    if key is None:
        raise ReadOnlyStoreError(
            "the audit chain needs the server key, which this store was opened without",
            hint="Append to and verify the audit log from the admin's fl-server.",
        )
    return key


def append(session: Session, actor: str, action: str, detail: dict[str, Any]) -> AuditRow:
    """Chain one row onto the log; call only inside a write transaction."""
    key = audit_key(session)
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
        row_hash=row_hash(key, prev, row_id, at, actor, action, detail),
    )
    session.add(row)
    session.flush()
    return row


def head(session: Session) -> AuditHead:
    """The newest row's id and hash (row 0 and the genesis hash for an empty log)."""
    last = session.scalars(select(AuditRow).order_by(AuditRow.id.desc()).limit(1)).first()
    return AuditHead(0, GENESIS_HASH) if last is None else AuditHead(last.id, last.row_hash)


def verify_chain(session: Session, expected_head: AuditHead | None = None) -> AuditVerdict:
    """Walk the log in id order and report the first row that breaks the chain; with
    ``expected_head`` (exported earlier) also that the log still holds that row unchanged."""
    key = audit_key(session)
    pinned: str | None = None
    expected_prev = GENESIS_HASH
    checked = 0
    previous_id: int | None = None
    for row in session.scalars(
        select(AuditRow).order_by(AuditRow.id).execution_options(yield_per=500)
    ):
        checked += 1
        if row.prev_hash != expected_prev:
            after = f"row {previous_id}" if previous_id is not None else "the start of the log"
            return _broken(
                row.id,
                checked,
                f"audit row {row.id} does not follow {after}: a row was removed, inserted or reordered",
            )
        if not hmac.compare_digest(
            row_hash(key, row.prev_hash, row.id, row.at, row.actor, row.action, row.detail),
            row.row_hash,
        ):
            return _broken(
                row.id,
                checked,
                f"audit row {row.id} was edited: its content no longer matches its hash",
            )
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
    return AuditVerdict(
        ok=True,
        rows_checked=checked,
        first_bad_row_id=None,
        message=f"audit chain intact ({checked} rows)",
    )


def _broken(row_id: int, checked: int, message: str) -> AuditVerdict:
    return AuditVerdict(ok=False, rows_checked=checked, first_bad_row_id=row_id, message=message)
