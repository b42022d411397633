"""ORM rows -> frozen records (:mod:`server.store.records`), so no caller ever holds a live ORM
object outside its transaction.
"""

from __future__ import annotations

from pathlib import Path

from server.store.models import (
    FlSession,
    Notification,
    Request,
    SessionRound,
    Site,
    Version,
)
from server.store.records import (
    NotificationInfo,
    RequestInfo,
    RoundInfo,
    SessionInfo,
    SiteInfo,
    VersionInfo,
    request_label,
)


def site_info(row: Site) -> SiteInfo:
    return SiteInfo(
        name=row.name,
        enabled=row.enabled,
        budget_epsilon=row.budget_epsilon,
        budget_delta=row.budget_delta,
        created_at=row.created_at,
        allow_no_dp=bool(row.allow_no_dp),
    )


def request_info(row: Request) -> RequestInfo:
    return RequestInfo(
        id=row.id,
        label=request_label(row.id),
        site=row.site,
        state=row.state,
        rounds=row.rounds,
        local_epochs=row.local_epochs,
        dp=dict(row.dp),
        note=row.note,
        created_at=row.created_at,
        decided_at=row.decided_at,
        decided_by=row.decided_by,
        reason=row.reason,
        session_id=row.session_id,
        declaration=dict(row.declaration or {}),
    )


def session_info(row: FlSession) -> SessionInfo:
    members = sorted(row.members, key=lambda m: m.request_id)
    return SessionInfo(
        id=row.id,
        state=row.state,
        request_ids=[m.request_id for m in members],
        participants=sorted(m.site for m in members),
        config=dict(row.config),
        port=row.port,
        pid=row.pid,
        base_version=row.base_version,
        version_number=row.version_number,
        created_at=row.created_at,
        started_at=row.started_at,
        ended_at=row.ended_at,
        reason=row.reason,
    )


def round_info(row: SessionRound) -> RoundInfo:
    return RoundInfo(
        session_id=row.session_id,
        round_number=row.round_number,
        phase=row.phase,
        metrics=dict(row.metrics),
        per_site=dict(row.per_site),
        recorded_at=row.recorded_at,
    )


def version_info(row: Version, versions_dir: Path) -> VersionInfo:
    return VersionInfo(
        number=row.number,
        label=f"v{row.number}",
        kind=row.kind,
        parents=list(row.parents),
        session_id=row.session_id,
        participants=list(row.participants),
        rounds=row.rounds,
        metrics=dict(row.metrics),
        dp_summary=dict(row.dp_summary),
        metadata=dict(row.meta),
        merge_weight=row.merge_weight,
        staleness=row.staleness,
        path=versions_dir / row.filename,
        size_bytes=row.size_bytes,
        sha256=row.sha256,
        created_at=row.created_at,
        note=row.note,
        released_to=[r.site for r in row.releases],
        pruned_at=row.pruned_at,
    )


def notification_info(row: Notification) -> NotificationInfo:
    return NotificationInfo(
        id=row.id,
        site=row.site,
        kind=row.kind,
        message=row.message,
        payload=dict(row.payload),
        created_at=row.created_at,
        read_at=row.read_at,
    )
