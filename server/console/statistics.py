"""Per-site and per-version statistics for the admin, computed from the store's records.

Privacy is never summed across sessions (DP spends compose, they do not add): the epsilon shown
for a site is the latest composed *total* in the server's own privacy ledger (PLD, from the
schedules it approved), next to the largest single-session epsilon charged there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from server.store import Store
from server.store.lifecycle import RequestState
from server.store.records import (
    ChargeInfo,
    RequestInfo,
    RoundInfo,
    SessionInfo,
    VersionInfo,
)


@dataclass(frozen=True)
class SiteStats:
    site: str
    requests: int
    completed: int
    rejected: int
    sessions: int
    examples: int  # approved (declared or bucketed) training examples, summed over its sessions
    max_session_epsilon: float | None  # None: nothing charged, or a no-DP session (see ``without_dp``)
    latest_total_epsilon: float | None
    without_dp: bool = False


@dataclass(frozen=True)
class VersionStats:
    label: str
    kind: str
    sites: int
    examples: int
    accuracy: float | None
    loss: float | None


@dataclass(frozen=True)
class Statistics:
    sites: list[SiteStats]
    versions: list[VersionStats]


def statistics(store: Store) -> Statistics:
    sessions = store.list_sessions()
    last_fits = {s.id: _last_fit(store.session_rounds(s.id)) for s in sessions}
    requests = store.list_requests()
    site_names = sorted({s.name for s in store.list_sites()} | {r.site for r in requests})
    charges = store.privacy_charges()
    sites = [_site_stats(name, requests, sessions, last_fits, [c for c in charges if c.site == name])
             for name in site_names]
    return Statistics(sites, [_version_stats(v) for v in store.list_versions()])


def _version_stats(version: VersionInfo) -> VersionStats:
    """Validation accuracy and loss after the last round; examples trained on in that round."""
    evaluate = version.metrics.get("evaluate", {})
    return VersionStats(version.label, version.kind, len(version.participants),
                        int(version.metrics.get("fit", {}).get("examples", 0)),
                        evaluate.get("accuracy"), evaluate.get("loss"))


def _last_fit(rounds: list[RoundInfo]) -> dict[str, dict[str, Any]]:
    """Per-site records of the session's fit rounds, the latest one per site (its approved count)."""
    merged: dict[str, dict[str, Any]] = {}
    for fit in (r for r in rounds if r.phase == "fit"):
        merged.update(fit.per_site)
    return merged


def _site_stats(site: str, requests: list[RequestInfo], sessions: list[SessionInfo],
                last_fits: dict[int, dict[str, dict[str, Any]]], charges: list[ChargeInfo]) -> SiteStats:
    mine = [r for r in requests if r.site == site]
    reports = [last_fits[s.id][site] for s in sessions if site in last_fits[s.id]]
    epsilons = [c.epsilon for c in charges if c.epsilon is not None]
    return SiteStats(
        site=site,
        requests=len(mine),
        completed=sum(r.state == RequestState.COMPLETED for r in mine),
        rejected=sum(r.state == RequestState.REJECTED for r in mine),
        sessions=sum(site in s.participants for s in sessions),
        examples=sum(int(r.get("examples", 0)) for r in reports),
        max_session_epsilon=max(epsilons) if epsilons else None,
        latest_total_epsilon=charges[-1].total_epsilon if charges else None,
        without_dp=any(c.epsilon is None for c in charges),
    )
