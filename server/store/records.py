"""Plain, frozen records that the store hands out instead of ORM objects.

Callers (request socket, session manager, menus, analysts) hold these across threads and
processes without ever touching a database session, so detached-instance errors cannot happen.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from server.store.lifecycle import RequestState, SessionState
from shared.errors import NotFoundError

_REQUEST_ID = re.compile(r"^\s*(?:REQ-)?(\d+)\s*$", re.IGNORECASE)


def parse_request_id(value: int | str) -> int:
    """Accept ``3``, ``"3"``, ``"REQ-3"`` (any case) and return ``3``; anything else is not found."""
    if isinstance(value, bool):
        raise NotFoundError(f"no request {value!r}", hint="Request ids look like REQ-3.")
    if isinstance(value, int):
        return value
    match = _REQUEST_ID.match(str(value))
    if not match:
        raise NotFoundError(f"no request {value!r}", hint="Request ids look like REQ-3.")
    return int(match.group(1))


def request_label(request_id: int) -> str:
    """How people see a request id."""
    return f"REQ-{request_id}"


def version_label(number: int) -> str:
    """How people see a version number."""
    return f"v{number}"


@dataclass(frozen=True)
class SiteInfo:
    name: str
    enabled: bool
    budget_epsilon: float
    budget_delta: float
    created_at: datetime
    allow_no_dp: bool = False


@dataclass(frozen=True)
class RequestInfo:
    id: int
    label: str
    site: str
    state: RequestState
    rounds: int
    local_epochs: int
    dp: dict[str, Any]
    note: str
    created_at: datetime
    decided_at: datetime | None
    decided_by: str | None
    reason: str
    session_id: int | None
    declaration: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SessionInfo:
    id: int
    state: SessionState
    request_ids: list[int]
    participants: list[str]
    config: dict[str, Any]
    port: int | None
    pid: int | None
    base_version: int
    version_number: int | None
    created_at: datetime
    started_at: datetime | None
    ended_at: datetime | None
    reason: str


@dataclass(frozen=True)
class RoundInfo:
    session_id: int
    round_number: int
    phase: str
    metrics: dict[str, Any]
    per_site: dict[str, Any]
    recorded_at: datetime


@dataclass(frozen=True)
class VersionInfo:
    number: int
    label: str
    kind: str  # "initial" | "session" | "merge" | "rollback"
    parents: list[int]
    session_id: int | None
    participants: list[str]
    rounds: int
    metrics: dict[str, Any]
    dp_summary: dict[str, Any]
    metadata: dict[str, Any]
    merge_weight: float | None
    staleness: int
    path: Path
    size_bytes: int
    sha256: str
    created_at: datetime
    note: str
    released_to: list[str]
    pruned_at: datetime | None  # when clean-up removed the weight file; the record stays

    @property
    def has_weights(self) -> bool:
        return self.pruned_at is None


@dataclass(frozen=True)
class NotificationInfo:
    id: int
    site: str
    kind: str
    message: str
    payload: dict[str, Any]
    created_at: datetime
    read_at: datetime | None


@dataclass(frozen=True)
class AuditEntry:
    id: int
    at: datetime
    actor: str
    action: str
    detail: dict[str, Any]


@dataclass(frozen=True)
class AuditVerdict:
    ok: bool
    rows_checked: int
    first_bad_row_id: int | None
    message: str


@dataclass(frozen=True)
class CleanupReport:
    dry_run: bool
    kept: list[int]
    removed: list[int]  # versions whose weight files are (or would be) deleted
    files: list[Path] = field(default_factory=list)  # every file deleted, orphans included
    orphans: list[Path] = field(default_factory=list)  # files no version refers to
    freed_bytes: int = 0


@dataclass(frozen=True)
class PlannedCharge:
    """What an approval will charge one site: ``rounds`` runs of ``schedule`` (a ``DpSchedule``)."""

    site: str
    request_id: int
    schedule: Any  # shared.privacy_accounting.DpSchedule
    rounds: int
    examples: int


@dataclass(frozen=True)
class ChargeInfo:
    """One row of the server's privacy ledger (see ``models.PrivacyCharge``); None epsilon = no DP."""

    id: int
    site: str
    session_id: int
    request_id: int
    schedule: dict[str, Any]
    rounds: int
    examples: int
    delta: float
    budget_epsilon: float
    epsilon: float | None
    epsilon_rdp: float | None
    total_epsilon: float | None
    total_epsilon_rdp: float | None
    slices_per_patient: int | None
    created_at: datetime
    event: Any = None  # the session's DpEvent (dp_accounting), as charged
