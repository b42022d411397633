"""What analysts ask of the history, as pure functions over a (read-only) store.

Every function only reads; the records it returns are plain dataclasses that the views, the
plots and the export share, so all three show the same numbers. Privacy is never summed across
sessions (DP spends compose): a site's "total" is the latest composed total in the server's own
privacy ledger, computed from the schedules it approved (never from what a site reported).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np

from server.sessions.aggregation_rule import AggregationRule
from server.store import Store
from server.store.lifecycle import LIVE_SESSION_STATES
from server.store.records import (
    AuditEntry,
    AuditVerdict,
    RoundInfo,
    SessionInfo,
    VersionInfo,
)


@dataclass(frozen=True)
class RoundRow:
    """One recorded round of the session that produced a version."""

    version: int
    session_id: int
    round_number: int
    phase: str
    loss: float | None
    accuracy: float | None
    examples: int | None
    sites: list[str]
    recorded_at: datetime


@dataclass(frozen=True)
class EpsilonPoint:
    """One charge of the server's privacy ledger: a site's whole session, at approval (PLD epsilons)."""

    site: str
    session_id: int
    rounds: int
    recorded_at: datetime
    epsilon: float | None  # this session; None = no finite epsilon (trained without DP)
    epsilon_total: float | None  # the site's ledger composed up to this session
    epsilon_total_rdp: float | None  # the RDP cross-check of that total
    delta: float


@dataclass(frozen=True)
class SiteContribution:
    """What a site gave the federation: sessions, training examples, privacy reported over time."""

    site: str
    sessions: list[int]
    versions: list[int]
    examples: int
    points: list[EpsilonPoint]

    @property
    def latest_total_epsilon(self) -> float | None:
        totals = [p.epsilon_total for p in self.points]
        return totals[-1] if totals else None

    @property
    def without_dp(self) -> bool:
        """A charge with no finite epsilon means that site trained without noise at least once."""
        return any(p.epsilon is None for p in self.points)


@dataclass(frozen=True)
class MetricDelta:
    name: str
    a: float | None
    b: float | None

    @property
    def change(self) -> float | None:
        return None if self.a is None or self.b is None else self.b - self.a


@dataclass(frozen=True)
class VersionComparison:
    """Two versions side by side; ``l2_distance`` is None when a weight file was pruned."""

    a: VersionInfo
    b: VersionInfo
    metrics: list[MetricDelta]
    only_a: list[str]
    only_b: list[str]
    both: list[str]
    l2_distance: float | None
    relative_l2: float | None  # distance / |a|, a scale-free "how much did it move"


def metric(version: VersionInfo, phase: str, name: str) -> float | None:
    """A version's final ``phase`` metric (``evaluate``/``fit``), or None if it was not recorded."""
    value = version.metrics.get(phase, {}).get(name)
    return float(value) if isinstance(value, (int, float)) else None


def validation_accuracy(version: VersionInfo) -> float | None:
    """The accuracy of the version's own weights on the sites' validation splits; None: not evaluated."""
    return metric(version, "evaluate", "accuracy")


def version_aggregation(store: Store, version: VersionInfo) -> str | None:
    """How the session behind ``version`` combined the sites' updates (None: no session behind it)."""
    if version.session_id is None:
        return None
    config = store.get_session(version.session_id).config
    return AggregationRule.from_config(config).describe(secure_aggregation=bool(config.get("secure_aggregation")))


def l2_distance(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    """Euclidean distance between two weight lists, as if each were one flat vector."""
    if len(a) != len(b) or any(x.shape != y.shape for x, y in zip(a, b)):
        raise ValueError("the two versions have differently shaped weights")
    return math.sqrt(sum(float(np.sum((x.astype(np.float64) - y.astype(np.float64)) ** 2))
                         for x, y in zip(a, b)))


def _norm(weights: list[np.ndarray]) -> float:
    return math.sqrt(sum(float(np.sum(w.astype(np.float64) ** 2)) for w in weights))


def compare_versions(store: Store, a: int, b: int) -> VersionComparison:
    """Metrics, participants, and how far the weights moved from ``a`` to ``b``."""
    va, vb = store.get_version(a), store.get_version(b)
    names = [("evaluate", "accuracy"), ("evaluate", "loss"), ("fit", "accuracy"), ("fit", "loss")]
    deltas = [MetricDelta(f"{phase} {name}", metric(va, phase, name), metric(vb, phase, name))
              for phase, name in names]
    distance = relative = None
    if va.has_weights and vb.has_weights:
        wa, wb = store.load_weights(a), store.load_weights(b)
        distance = l2_distance(wa, wb)
        size = _norm(wa)
        relative = distance / size if size > 0 else None
    pa, pb = set(va.participants), set(vb.participants)
    return VersionComparison(va, vb, deltas, sorted(pa - pb), sorted(pb - pa), sorted(pa & pb),
                             distance, relative)


def version_rounds(store: Store, version: VersionInfo) -> list[RoundRow]:
    """The per-round metrics of the session behind ``version`` (none for v0 and rollbacks)."""
    if version.session_id is None:
        return []
    return [_round_row(version.number, r) for r in store.session_rounds(version.session_id)]


def all_rounds(store: Store) -> list[RoundRow]:
    """Every version's rounds, in version order."""
    return [row for v in store.list_versions() for row in version_rounds(store, v)]


def _round_row(version: int, r: RoundInfo) -> RoundRow:
    m = r.metrics
    return RoundRow(version=version, session_id=r.session_id, round_number=r.round_number, phase=r.phase,
                    loss=_number(m.get("loss")), accuracy=_number(m.get("accuracy")),
                    examples=int(m["examples"]) if isinstance(m.get("examples"), (int, float)) else None,
                    sites=sorted(r.per_site), recorded_at=r.recorded_at)


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) else None


def site_contributions(store: Store) -> list[SiteContribution]:
    """Per enrolled (or participating) site: its sessions, versions, examples and ledger charges."""
    versions_by_session = {v.session_id: v.number for v in store.list_versions() if v.session_id is not None}
    points: dict[str, list[EpsilonPoint]] = {}
    examples: dict[str, dict[int, int]] = {}
    for session in store.list_sessions():
        for r in store.session_rounds(session.id):
            if r.phase != "fit":
                continue
            for site, report in r.per_site.items():
                examples.setdefault(site, {})[session.id] = int(report.get("examples", 0) or 0)
    for c in store.privacy_charges():
        points.setdefault(c.site, []).append(EpsilonPoint(
            c.site, c.session_id, c.rounds, c.created_at, c.epsilon, c.total_epsilon, c.total_epsilon_rdp, c.delta))
    names = sorted({s.name for s in store.list_sites()} | set(points))
    return [SiteContribution(
        site=name,
        sessions=sorted(examples.get(name, {})),
        versions=sorted(versions_by_session[s] for s in examples.get(name, {}) if s in versions_by_session),
        examples=sum(examples.get(name, {}).values()),
        points=sorted(points.get(name, []), key=lambda p: (p.recorded_at, p.session_id)),
    ) for name in names]


@dataclass(frozen=True)
class VersionDetails:
    """Everything the admin wants to know about one version."""

    version: VersionInfo
    lineage: list[VersionInfo]
    rounds: list[RoundInfo]
    aggregation: str | None = None  # the session's rule (``version_aggregation``)


def version_details(store: Store, number: int) -> VersionDetails:
    version = store.get_version(number)
    rounds = store.session_rounds(version.session_id) if version.session_id is not None else []
    return VersionDetails(version, store.list_versions(), rounds, version_aggregation(store, version))


@dataclass(frozen=True)
class SessionOverview:
    """A session and how far it got, counted as the admin's live view counts (completed fit rounds)."""

    session: SessionInfo
    rounds: list[RoundInfo]

    @property
    def rounds_done(self) -> int:
        return sum(1 for r in self.rounds if r.phase == "fit")

    @property
    def rounds_total(self) -> int | None:
        total = self.session.config.get("rounds")
        return int(total) if isinstance(total, (int, float)) else None

    @property
    def last_accuracy(self) -> float | None:
        evaluated = [r for r in self.rounds if r.phase == "evaluate"]
        return _number(evaluated[-1].metrics.get("accuracy")) if evaluated else None

    @property
    def last_fit_loss(self) -> float | None:
        fits = [r for r in self.rounds if r.phase == "fit"]
        return _number(fits[-1].metrics.get("loss")) if fits else None

    @property
    def round_rows(self) -> list[RoundRow]:
        """The rounds as ``fl-history rounds`` rows; ``version`` is -1 while the session made none."""
        number = self.session.version_number
        return [_round_row(-1 if number is None else number, r) for r in self.rounds]


def sessions_overview(store: Store, *, finished_limit: int | None = None) -> list[SessionOverview]:
    """Sessions newest first with their recorded rounds: every live one, and the latest
    ``finished_limit`` that ended (all when None)."""
    sessions = list(reversed(store.list_sessions()))
    live = [s for s in sessions if s.state in LIVE_SESSION_STATES]
    ended = [s for s in sessions if s.state not in LIVE_SESSION_STATES][:finished_limit]
    chosen = sorted(live + ended, key=lambda s: s.id, reverse=True)
    return [SessionOverview(s, store.session_rounds(s.id)) for s in chosen]


def session_overview(store: Store, session_id: int) -> SessionOverview:
    """One session with its rounds; NotFoundError when there is no such session."""
    return SessionOverview(store.get_session(session_id), store.session_rounds(session_id))


def privacy_over_time(store: Store) -> list[EpsilonPoint]:
    """Every charge of the server's privacy ledger, oldest first: the one source of the dashboard's
    privacy page (the same points as ``fl-history sites`` and ``fl-history privacy``)."""
    points = [p for c in site_contributions(store) for p in c.points]
    return sorted(points, key=lambda p: (p.recorded_at, p.site, p.session_id))


@dataclass(frozen=True)
class AuditPage:
    """One page of the audit log, newest first, with the verdict on the whole chain."""

    entries: list[AuditEntry]
    page: int
    per_page: int
    total: int
    verdict: AuditVerdict

    @property
    def pages(self) -> int:
        return max(1, math.ceil(self.total / self.per_page))


def audit_page(store: Store, page: int, per_page: int) -> AuditPage:
    """Page ``page`` (from 1) of ``per_page`` rows; the chain is verified whole on every call."""
    entries, total = store.audit_page(offset=(page - 1) * per_page, limit=per_page)
    return AuditPage(entries, page, per_page, total, store.verify_audit())

