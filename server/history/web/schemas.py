"""What the dashboard shows, as pydantic models: each page renders one, its ``/api`` twin returns it.

Built only from the records of ``server.history.queries``, so a page and its JSON never disagree.
Fields are chosen, not dumped: no file paths on the server, no per-site training metrics
(participants appear as aggregates), and any key that looks like a secret is redacted.
"""

from __future__ import annotations

import re
from dataclasses import asdict
from datetime import datetime
from typing import Any

from pydantic import BaseModel

from server.history.queries import (
    AuditPage,
    EpsilonPoint,
    RoundRow,
    SessionOverview,
    VersionComparison,
    metric,
)
from server.store.records import AuditEntry, VersionInfo

REDACTED = "[redacted]"
_SECRET_KEY = re.compile(r"token|secret|password|passphrase|private|credential|api_?key", re.IGNORECASE)


def redact(value: Any) -> Any:
    """``value`` with every mapping entry whose key names a secret replaced, at any depth."""
    if isinstance(value, dict):
        return {k: REDACTED if _SECRET_KEY.search(str(k)) else redact(v) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(item) for item in value]
    return value


class VersionSummary(BaseModel):
    """One row of the versions table."""

    number: int
    label: str
    kind: str
    parents: list[int]
    session_id: int | None
    participants: list[str]
    rounds: int
    val_accuracy: float | None
    val_loss: float | None
    fit_accuracy: float | None
    fit_loss: float | None
    merge_weight: float | None
    staleness: int
    released_to: list[str]
    sha256: str
    has_weights: bool
    created_at: datetime

    @classmethod
    def of(cls, v: VersionInfo) -> VersionSummary:
        return cls(number=v.number, label=v.label, kind=v.kind, parents=v.parents, session_id=v.session_id,
                   participants=v.participants, rounds=v.rounds,
                   val_accuracy=metric(v, "evaluate", "accuracy"), val_loss=metric(v, "evaluate", "loss"),
                   fit_accuracy=metric(v, "fit", "accuracy"), fit_loss=metric(v, "fit", "loss"),
                   merge_weight=v.merge_weight, staleness=v.staleness, released_to=v.released_to,
                   sha256=v.sha256, has_weights=v.has_weights, created_at=v.created_at)


class RoundOut(BaseModel):
    """One recorded round: aggregated metrics and who took part (names only, no per-site metrics)."""

    session_id: int
    round_number: int
    phase: str
    loss: float | None
    accuracy: float | None
    examples: int | None
    sites: list[str]
    recorded_at: datetime

    @classmethod
    def of(cls, r: RoundRow) -> RoundOut:
        data = asdict(r)
        data.pop("version")
        return cls(**data)


class SitePrivacy(BaseModel):
    """What one site's accountant reported for a version's session."""

    site: str
    epsilon: float | None  # None: no finite guarantee (trained without noise)
    delta: float | None
    noise_multiplier: float | None


class VersionDetail(BaseModel):
    """One version: its row, lineage neighbours, rounds, participants as aggregates, privacy."""

    version: VersionSummary
    children: list[int]
    aggregation: str | None  # how the session behind it combined the updates; None: no session
    note: str
    participant_count: int
    examples_total: int | None
    privacy: list[SitePrivacy]
    rounds: list[RoundOut]

    @classmethod
    def of(cls, v: VersionInfo, rounds: list[RoundRow], children: list[int],
           aggregation: str | None = None) -> VersionDetail:
        counts = [r.get("examples") for r in v.dp_summary.values() if isinstance(r, dict)]
        total = sum(int(c) for c in counts if isinstance(c, (int, float))) if counts else None
        return cls(version=VersionSummary.of(v), children=children, aggregation=aggregation, note=v.note,
                   participant_count=len(v.participants), examples_total=total,
                   privacy=[_site_privacy(site, report) for site, report in sorted(v.dp_summary.items())],
                   rounds=[RoundOut.of(r) for r in rounds])


def _site_privacy(site: str, report: Any) -> SitePrivacy:
    report = report if isinstance(report, dict) else {}
    return SitePrivacy(site=site, epsilon=_num(report.get("epsilon")), delta=_num(report.get("delta")),
                       noise_multiplier=_num(report.get("noise_multiplier")))


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


class MetricChange(BaseModel):
    name: str
    a: float | None
    b: float | None
    change: float | None


class ComparisonOut(BaseModel):
    """Two versions side by side, as ``fl-history compare`` shows them."""

    a: VersionSummary
    b: VersionSummary
    metrics: list[MetricChange]
    only_a: list[str]
    only_b: list[str]
    both: list[str]
    privacy_a: list[SitePrivacy]
    privacy_b: list[SitePrivacy]
    l2_distance: float | None
    relative_l2: float | None

    @classmethod
    def of(cls, c: VersionComparison) -> ComparisonOut:
        return cls(a=VersionSummary.of(c.a), b=VersionSummary.of(c.b),
                   metrics=[MetricChange(name=d.name, a=d.a, b=d.b, change=d.change) for d in c.metrics],
                   only_a=c.only_a, only_b=c.only_b, both=c.both,
                   privacy_a=[_site_privacy(s, r) for s, r in sorted(c.a.dp_summary.items())],
                   privacy_b=[_site_privacy(s, r) for s, r in sorted(c.b.dp_summary.items())],
                   l2_distance=c.l2_distance, relative_l2=c.relative_l2)


class SessionOut(BaseModel):
    """A session and its progress: round k of n counts evaluated rounds, like the admin's view."""

    id: int
    state: str
    participants: list[str]
    rounds_done: int
    rounds_total: int | None
    last_accuracy: float | None
    last_fit_loss: float | None
    base_version: int
    version_number: int | None
    created_at: datetime
    started_at: datetime | None
    ended_at: datetime | None
    reason: str
    config: dict[str, Any]

    @classmethod
    def of(cls, o: SessionOverview) -> SessionOut:
        s = o.session
        return cls(id=s.id, state=s.state.value, participants=s.participants, rounds_done=o.rounds_done,
                   rounds_total=o.rounds_total, last_accuracy=o.last_accuracy, last_fit_loss=o.last_fit_loss,
                   base_version=s.base_version, version_number=s.version_number, created_at=s.created_at,
                   started_at=s.started_at, ended_at=s.ended_at, reason=s.reason, config=redact(s.config))


class SessionDetail(BaseModel):
    session: SessionOut
    rounds: list[RoundOut]

    @classmethod
    def of(cls, o: SessionOverview) -> SessionDetail:
        return cls(session=SessionOut.of(o), rounds=[RoundOut.of(r) for r in o.round_rows])


class PrivacyPoint(BaseModel):
    """One charge of the server's privacy ledger: a site's approved session (PLD epsilons)."""

    site: str
    session_id: int
    rounds: int
    recorded_at: datetime
    epsilon: float | None  # this session; None = trained without noise
    epsilon_total: float | None  # the site's whole ledger up to this session, composed (never a sum)
    epsilon_total_rdp: float | None  # the RDP accountant's figure for that total, as a cross-check
    delta: float

    @classmethod
    def of(cls, p: EpsilonPoint) -> PrivacyPoint:
        return cls(**asdict(p))


class AuditEntryOut(BaseModel):
    id: int
    at: datetime
    actor: str
    action: str
    detail: dict[str, Any]

    @classmethod
    def of(cls, e: AuditEntry) -> AuditEntryOut:
        return cls(id=e.id, at=e.at, actor=e.actor, action=e.action, detail=redact(e.detail))


class AuditPageOut(BaseModel):
    """One page of the audit log (newest first) and whether the whole chain verifies."""

    entries: list[AuditEntryOut]
    page: int
    per_page: int
    pages: int
    total: int
    chain_ok: bool
    chain_message: str
    rows_checked: int
    first_bad_row_id: int | None

    @classmethod
    def of(cls, p: AuditPage) -> AuditPageOut:
        return cls(entries=[AuditEntryOut.of(e) for e in p.entries], page=p.page, per_page=p.per_page,
                   pages=p.pages, total=p.total, chain_ok=p.verdict.ok, chain_message=p.verdict.message,
                   rows_checked=p.verdict.rows_checked, first_bad_row_id=p.verdict.first_bad_row_id)


class LineageEdge(BaseModel):
    """``parent -> child``; ``merged`` marks the candidate merged into a moved head."""

    parent: int
    child: int
    merged: bool


class LineageOut(BaseModel):
    versions: list[VersionSummary]
    edges: list[LineageEdge]

    @classmethod
    def of(cls, versions: list[VersionSummary]) -> LineageOut:
        edges = [LineageEdge(parent=p, child=v.number, merged=v.merge_weight is not None and i > 0)
                 for v in versions for i, p in enumerate(v.parents)]
        return cls(versions=versions, edges=edges)
