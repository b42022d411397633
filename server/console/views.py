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
    CleanupReport,
    RequestInfo,
    RoundInfo,
    SessionInfo,
    SiteInfo,
)
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


def _evaluated(rounds: list[RoundInfo]) -> list[RoundInfo]:
    return [r for r in rounds if r.phase == "evaluate"]


def sessions_table(progress: list[SessionProgress], title: str = "Sessions") -> Table:
    table = narrow_table(title, "sess", "state", "sites", "port", "round", "acc", "from", "result", "reason")
    for p in progress:
        s, done = p.session, _evaluated(p.rounds)
        table.add_row(str(s.id), s.state.value, ", ".join(s.participants), str(s.port or ""),
                      f"{len(done)} of {s.config.get('rounds', '?')}",
                      percent(done[-1].metrics.get("accuracy") if done else None), f"v{s.base_version}",
                      f"v{s.version_number}" if s.version_number is not None else "", untrusted(s.reason))
    return table


def live_sessions_table(progress: list[SessionProgress]) -> Table:
    """Active sessions: round k of n, who takes part and the last metrics, for the live display."""
    table = narrow_table("Active sessions (any key or Ctrl-C returns)", "sess", "state", "round", "sites",
                   "last fit loss", "last val. acc", "running for")
    for p in progress:
        s = p.session
        fits = [r for r in p.rounds if r.phase == "fit"]
        done = _evaluated(p.rounds)
        loss = fits[-1].metrics.get("loss") if fits else None
        table.add_row(str(s.id), s.state.value, f"{len(done)} of {s.config.get('rounds', '?')}",
                      ", ".join(s.participants), f"{loss:.4f}" if loss is not None else "",
                      percent(done[-1].metrics.get("accuracy") if done else None), _elapsed(s))
    if not progress:
        table.add_row("", "no active session", "", "", "", "", "")
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
    """Per site (max eps: largest one-session spend; eps total: the site's latest composed total)
    and per version."""
    sites = narrow_table("Per site", "site", "requests", "done", "rejected", "sessions", "examples",
                   "max eps", "eps total", right=("requests", "done", "rejected", "sessions", "examples"))
    for s in stats.sites:
        sites.add_row(s.site, str(s.requests), str(s.completed), str(s.rejected), str(s.sessions), str(s.examples),
                      _eps(s.max_session_epsilon), _eps(s.latest_total_epsilon))
    versions = narrow_table("Per version", "ver", "kind", "sites", "examples", "val. acc", "val. loss",
                      right=("sites", "examples"))
    for v in stats.versions:
        versions.add_row(v.label, v.kind, str(v.sites), str(v.examples), percent(v.accuracy),
                         f"{v.loss:.4f}" if v.loss is not None else "")
    return Group(sites, versions)


def _eps(value: float | None) -> str:
    return f"{value:.3f}" if value is not None else ""


def sites_table(sites: list[SiteInfo]) -> Table:
    table = narrow_table("Sites", "site", "enabled", "budget eps", "delta", "enrolled")
    for s in sites:
        table.add_row(s.name, "yes" if s.enabled else "no", f"{s.budget_epsilon:g}", f"{s.budget_delta:g}",
                      _when(s.created_at))
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
