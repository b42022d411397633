"""Rich renderings for the admin; the console menu and the subcommands print the same tables.

Headers are short and long cells fold, so every table stays readable in an 80-column pipe.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from rich.console import Group
from rich.table import Table

from server.console.actions import SessionProgress
from server.console.statistics import Statistics
from server.history.privacy_views import eps_text
from server.history.version_views import (  # noqa: F401  (re-exported for the console)
    lineage_tree,
    percent,
    privacy_table,
    rounds_table,
    version_details_view,
    versions_table,
)
from server.store.analysts import AnalystInfo
from server.store.records import (
    ChargeInfo,
    CleanupReport,
    RequestInfo,
    RoundInfo,
    SessionInfo,
    SiteInfo,
)
from shared.privacy_accounting import IMAGE_UNIT
from shared.terminal import narrow_table, untrusted


def _when(value: Any) -> str:
    return value.strftime("%m-%d %H:%M") if value else ""


def dp_text(dp: dict[str, Any]) -> str:
    noise = f"eps<={dp['target_epsilon']:g}" if dp.get("target_epsilon") else f"noise {dp.get('noise_multiplier')}"
    return f"{noise} d={dp.get('delta', 0):g}"


def requests_table(requests: list[RequestInfo], title: str = "Training requests") -> Table:
    table = narrow_table(title, "req", "site", "state", "rnd", "ep", "privacy", "sess", "decided", "note / reason")
    for r in requests:
        table.add_row(r.label, r.site, r.state.value, str(r.rounds), str(r.local_epochs), dp_text(r.dp),
                      str(r.session_id or ""), _when(r.decided_at), untrusted(r.reason or r.note))
    return table


def _done(rounds: list[RoundInfo]) -> list[RoundInfo]:
    """Completed rounds (their fit phase; there is no evaluate phase, see ``server.sessions.fedprox``)."""
    return [r for r in rounds if r.phase == "fit"]


def _accuracy(rounds: list[RoundInfo]) -> str:
    evaluated = [r for r in rounds if r.phase == "evaluate"]
    return percent(evaluated[-1].metrics.get("accuracy")) if evaluated else "not evaluated"


def sessions_table(progress: list[SessionProgress], title: str = "Sessions") -> Table:
    table = narrow_table(title, "sess", "state", "sites", "port", "round", "acc", "from", "result", "reason")
    for p in progress:
        s, done = p.session, _done(p.rounds)
        table.add_row(str(s.id), s.state.value, ", ".join(s.participants), str(s.port or ""),
                      f"{len(done)} of {s.config.get('rounds', '?')}", _accuracy(p.rounds) if done else "",
                      f"v{s.base_version}", f"v{s.version_number}" if s.version_number is not None else "",
                      untrusted(s.reason))
    return table


def live_sessions_table(progress: list[SessionProgress]) -> Table:
    """Active sessions: round k of n, who takes part and how many sent updates, for the live display."""
    table = narrow_table("Active sessions (any key or Ctrl-C returns)", "sess", "state", "round", "sites",
                   "last round: updates", "running for")
    for p in progress:
        s = p.session
        done = _done(p.rounds)
        updates = f"{done[-1].metrics.get('sites', '')} of {len(s.participants)}" if done else ""
        table.add_row(str(s.id), s.state.value, f"{len(done)} of {s.config.get('rounds', '?')}",
                      ", ".join(s.participants), updates, _elapsed(s))
    if not progress:
        table.add_row("", "no active session", "", "", "", "")
    return table


def approval_view(session: SessionInfo, charges: list[ChargeInfo]) -> Table:
    """What each site of a new session will train and what the server's ledger charged for it."""
    table = narrow_table(f"Session {session.id}: DP schedules sent (server ledger; {IMAGE_UNIT}; PLD)", "site",
                         "rounds", "epochs", "images", "sigma", "q", "steps", "eps session", "eps total", "budget")
    plans = session.config.get("sites", {})
    for c in charges:
        plan, s = plans.get(c.site, {}), c.schedule
        table.add_row(c.site, str(c.rounds), str(plan.get("local_epochs", "")), str(c.examples),
                      f"{s['noise_multiplier']:.3f}", f"{s['sampling_rate']:.4f}", str(s["steps"]),
                      eps_text(c.epsilon), eps_text(c.total_epsilon), f"{c.budget_epsilon:g}")
    return table


def _elapsed(session: SessionInfo) -> str:
    if session.started_at is None:
        return ""
    started = session.started_at if session.started_at.tzinfo else session.started_at.replace(tzinfo=timezone.utc)
    seconds = int((datetime.now(timezone.utc) - started).total_seconds())
    return f"{seconds // 60}m {seconds % 60:02d}s"


def history_view(requests: list[RequestInfo], sessions: list[SessionProgress]) -> Group:
    return Group(requests_table(requests, title="Training history: requests"),
                 sessions_table(sessions, title="Training history: sessions"))


def statistics_view(stats: Statistics) -> Group:
    """Per site (server ledger: max eps the largest one-session charge, eps total the latest composed
    total) and per version."""
    sites = narrow_table("Per site", "site", "requests", "done", "rejected", "sessions", "examples",
                   "max eps", "eps total", right=("requests", "done", "rejected", "sessions", "examples"))
    for s in stats.sites:
        sites.add_row(s.site, str(s.requests), str(s.completed), str(s.rejected), str(s.sessions), str(s.examples),
                      _eps(s.max_session_epsilon), "inf (no DP)" if s.without_dp else _eps(s.latest_total_epsilon))
    versions = narrow_table("Per version", "ver", "kind", "sites", "examples", "val. acc", "val. loss",
                      right=("sites", "examples"))
    for v in stats.versions:
        versions.add_row(v.label, v.kind, str(v.sites), str(v.examples),
                         "not evaluated" if v.accuracy is None else percent(v.accuracy),
                         f"{v.loss:.4f}" if v.loss is not None else "")
    return Group(sites, versions)


def _eps(value: float | None) -> str:
    return f"{value:.3f}" if value is not None else ""


def sites_table(sites: list[SiteInfo]) -> Table:
    table = narrow_table("Sites", "site", "enabled", "budget eps", "delta", "no DP", "enrolled")
    for s in sites:
        table.add_row(s.name, "yes" if s.enabled else "no", f"{s.budget_epsilon:g}", f"{s.budget_delta:g}",
                      "allowed" if s.allow_no_dp else "", _when(s.created_at))
    return table


def cleanup_table(report: CleanupReport) -> Table:
    verb = "would free" if report.dry_run else "freed"
    table = narrow_table(f"Clean-up {verb} {report.freed_bytes / 1e6:.2f} MB", "kept", "removed", "orphan files")
    table.add_row(", ".join(f"v{n}" for n in report.kept), ", ".join(f"v{n}" for n in report.removed),
                  str(len(report.orphans)))
    return table


def analyst_tokens_table(tokens: list[AnalystInfo]) -> Table:
    """Dashboard tokens: who, when, whether revoked; the secret is never stored, so never shown."""
    table = narrow_table("Analyst tokens (fl-history web)", "id", "analyst", "created", "by", "state")
    for t in tokens:
        table.add_row(str(t.id), t.name, _when(t.created_at), t.created_by,
                      "active" if t.active else f"revoked {_when(t.revoked_at)}")
    if not tokens:
        table.add_row("", "none yet: fl-server analyst-token create NAME", "", "", "")
    return table
