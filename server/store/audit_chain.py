"""Append-only audit log whose rows form a hash chain, so editing or removing a row shows.

Each row stores ``row_hash = sha256(prev_hash + canonical_json(content))`` where the content is
its id, time, actor, action and detail, and ``prev_hash`` is the previous row's hash (64 zeros
for the first). Appends happen inside the caller's write transaction, which holds the
database-wide write lock, so two writers can never chain onto the same row.

The chain proves the rows are unchanged relative to each other; cutting rows off the *end*
leaves a valid shorter chain, which only a copy of the last hash kept elsewhere would reveal.
"""

from __future__ import annotations

import hashlib
import json
import math
from datetime import datetime
from enum import Enum
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from server.store.models import AuditRow, utcnow
from server.store.records import AuditVerdict

GENESIS_HASH = "0" * 64


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


def append(session: Session, actor: str, action: str, detail: dict[str, Any]) -> AuditRow:
    """Chain one row onto the log; call only inside a write transaction."""
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
    return row


def verify_chain(session: Session) -> AuditVerdict:
    """Walk the log in id order and report the first row that breaks the chain."""
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
        if (
            row_hash(row.prev_hash, row.id, row.at, row.actor, row.action, row.detail)
            != row.row_hash
        ):
            return _broken(
                row.id,
                checked,
                f"audit row {row.id} was edited: its content no longer matches its hash",
            )
        expected_prev = row.row_hash
        previous_id = row.id
    return AuditVerdict(
        ok=True,
        rows_checked=checked,
        first_bad_row_id=None,
        message=f"audit chain intact ({checked} rows)",
    )


def _broken(row_id: int, checked: int, message: str) -> AuditVerdict:
    return AuditVerdict(ok=False, rows_checked=checked, first_bad_row_id=row_id, message=message)
