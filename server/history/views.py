"""Rich renderings that only the analyst's ``fl-history`` needs (the ones shared with the admin console live in ``version_views``).

Cells are short and fold, like the admin's tables, so everything stays readable in an 80-column pipe.
"""

from __future__ import annotations

from rich.console import Group
from rich.table import Table

from server.history.queries import RoundRow, SiteContribution, VersionComparison
from server.store.records import VersionInfo
from shared.terminal import narrow_table


def _num(value: float | None, fmt: str = ".4f") -> str:
    return "" if value is None else format(value, fmt)


def _pct(value: float | None) -> str:
    return "" if value is None else f"{value:.1%}"


def _eps(value: float | None) -> str:
    """A missing epsilon in a privacy report means the run had no finite guarantee (no noise)."""
    return "inf (no DP)" if value is None else f"{value:.3f}"


def round_rows_table(rows: list[RoundRow], title: str) -> Table:
    table = narrow_table(title, "ver", "sess", "round", "phase", "loss", "acc", "examples", "sites")
    for r in rows:
        table.add_row(f"v{r.version}", str(r.session_id), str(r.round_number), r.phase, _num(r.loss),
                      _pct(r.accuracy), "" if r.examples is None else str(r.examples), ", ".join(r.sites))
    return table


def comparison_view(c: VersionComparison) -> Group:
    """Metrics with their change, who took part in which, privacy of each, and the weight distance."""
    a, b = c.a.label, c.b.label
    metrics = narrow_table(f"Compare {a} and {b}", "metric", a, b, "change")
    for d in c.metrics:
        change = "" if d.change is None else f"{d.change:+.4f}"
        missing = "not evaluated" if d.name.startswith("evaluate") else ""
        metrics.add_row(d.name, _num(d.a) or missing, _num(d.b) or missing, change)
    metrics.add_row("kind", c.a.kind, c.b.kind, "")
    metrics.add_row("parents", _parents(c.a), _parents(c.b), "")
    people = (f"participants: both {', '.join(c.both) or '-'}; only {a}: {', '.join(c.only_a) or '-'}; "
              f"only {b}: {', '.join(c.only_b) or '-'}")
    privacy = narrow_table("Privacy per site (server ledger: epsilon of that session)", "site", a, b)
    for site in sorted(set(c.a.dp_summary) | set(c.b.dp_summary)):
        privacy.add_row(site, _site_eps(c.a, site), _site_eps(c.b, site))
    if c.l2_distance is None:
        distance = "L2 distance of weights: unavailable (a weight file was pruned)"
    else:
        distance = f"L2 distance of weights: {c.l2_distance:.4f} ({_pct(c.relative_l2)} of |{a}|)"
    return Group(metrics, people, privacy, distance)


def _parents(v: VersionInfo) -> str:
    return ", ".join(f"v{p}" for p in v.parents) or "-"


def _site_eps(v: VersionInfo, site: str) -> str:
    if site not in v.dp_summary:
        return ""
    return _eps(v.dp_summary[site].get("epsilon"))


def sites_view(contributions: list[SiteContribution]) -> Table:
    """Per site: sessions, versions, examples, and the latest composed epsilon of the server's ledger."""
    table = narrow_table("Per-site contribution and privacy (server ledger, PLD)", "site", "sessions", "versions",
                         "examples", "charges", "eps total (latest)")
    for c in contributions:
        total = "inf (no DP)" if c.without_dp else _num(c.latest_total_epsilon, ".3f")
        table.add_row(c.site, ", ".join(map(str, c.sessions)), ", ".join(f"v{n}" for n in c.versions),
                      str(c.examples), str(len(c.points)), total)
    return table


def epsilon_timeline_table(contributions: list[SiteContribution]) -> Table:
    """Every charge of the server's ledger, oldest first: the numbers behind the epsilon plot."""
    table = narrow_table("Epsilon charged over time (Poisson sampling, add/remove one image; PLD, RDP check)",
                         "approved", "site", "sess", "rounds", "eps session", "eps total", "RDP total", "delta")
    points = sorted((p for c in contributions for p in c.points), key=lambda p: p.recorded_at)
    for p in points:
        table.add_row(f"{p.recorded_at:%m-%d %H:%M:%S}", p.site, str(p.session_id), str(p.rounds),
                      _eps(p.epsilon), _eps(p.epsilon_total), _eps(p.epsilon_total_rdp), f"{p.delta:g}")
    return table

