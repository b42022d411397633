"""Rich renderings for the admin; the console menu and the subcommands print the same tables."""

from __future__ import annotations

from typing import Any

from rich.table import Table
from rich.tree import Tree

from server.records import CleanupReport, RequestInfo, RoundInfo, SessionInfo, SiteInfo, VersionInfo


def _when(value: Any) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value else ""


def _dp(dp: dict[str, Any]) -> str:
    noise = f"eps<={dp['target_epsilon']:g}" if dp.get("target_epsilon") else f"noise {dp.get('noise_multiplier')}"
    return f"{noise}, delta {dp.get('delta', 0):g}"


def requests_table(requests: list[RequestInfo], title: str = "Training requests") -> Table:
    table = Table(title=title)
    for column in ("request", "site", "state", "rounds", "epochs", "privacy", "note", "session", "decided", "reason"):
        table.add_column(column)
    for r in requests:
        table.add_row(r.label, r.site, r.state.value, str(r.rounds), str(r.local_epochs), _dp(r.dp), r.note,
                      str(r.session_id or ""), _when(r.decided_at), r.reason)
    return table


def sessions_table(sessions: list[SessionInfo], rounds: dict[int, list[RoundInfo]] | None = None) -> Table:
    table = Table(title="Sessions")
    for column in ("session", "state", "sites", "port", "round", "last accuracy", "base", "result", "reason"):
        table.add_column(column)
    for s in sessions:
        done = [r for r in (rounds or {}).get(s.id, []) if r.phase == "evaluate"]
        last = done[-1].metrics.get("accuracy") if done else None
        table.add_row(str(s.id), s.state.value, ", ".join(s.participants), str(s.port or ""),
                      f"{len(done)} of {s.config.get('rounds', '?')}", f"{last:.1%}" if last is not None else "",
                      f"v{s.base_version}", f"v{s.version_number}" if s.version_number is not None else "", s.reason)
    return table


def versions_table(versions: list[VersionInfo]) -> Table:
    table = Table(title="Model versions")
    for column in ("version", "kind", "parents", "session", "sites", "rounds", "val. accuracy", "merge weight",
                   "released to", "created", "sha256"):
        table.add_column(column)
    for v in versions:
        accuracy = v.metrics.get("evaluate", {}).get("accuracy")
        table.add_row(v.label + ("" if v.has_weights else " (pruned)"), v.kind, ", ".join(f"v{p}" for p in v.parents),
                      str(v.session_id or ""), ", ".join(v.participants), str(v.rounds),
                      f"{accuracy:.1%}" if accuracy is not None else "",
                      f"{v.merge_weight:.3f}" if v.merge_weight is not None else "", ", ".join(v.released_to),
                      _when(v.created_at), v.sha256[:12])
    return table


def lineage_tree(versions: list[VersionInfo]) -> Tree:
    """Versions as a tree from v0; a merge hangs under its head parent and names its base."""
    tree = Tree("[bold]lineage")
    nodes: dict[int, Tree] = {}
    for v in sorted(versions, key=lambda x: x.number):
        label = f"{v.label} [dim]{v.kind}[/]"
        if v.merge_weight is not None:
            label += f" (merged from v{v.parents[-1]}, weight {v.merge_weight:.3f}, staleness {v.staleness})"
        parent = nodes.get(v.parents[0]) if v.parents else None
        nodes[v.number] = (parent or tree).add(label)
    return tree


def rounds_table(rounds: list[RoundInfo], title: str = "Per-round metrics") -> Table:
    table = Table(title=title)
    for column in ("round", "phase", "loss", "accuracy", "examples", "sites"):
        table.add_column(column)
    for r in rounds:
        m = r.metrics
        table.add_row(str(r.round_number), r.phase, f"{m.get('loss', float('nan')):.4f}",
                      f"{m['accuracy']:.1%}" if "accuracy" in m else "", str(m.get("examples", "")),
                      str(m.get("sites", "")))
    return table


def privacy_table(dp_summary: dict[str, Any], title: str = "Privacy reported by the sites") -> Table:
    table = Table(title=title)
    for column in ("site", "epsilon (this session)", "delta", "noise multiplier", "examples"):
        table.add_column(column)
    for site, report in sorted(dp_summary.items()):
        table.add_row(site, f"{report.get('epsilon', float('nan')):.3f}", f"{report.get('delta', 0):g}",
                      f"{report.get('noise_multiplier', float('nan')):.3f}", str(report.get("examples", "")))
    return table


def sites_table(sites: list[SiteInfo]) -> Table:
    table = Table(title="Sites")
    for column in ("site", "enabled", "budget epsilon", "delta", "enrolled"):
        table.add_column(column)
    for s in sites:
        table.add_row(s.name, "yes" if s.enabled else "no", f"{s.budget_epsilon:g}", f"{s.budget_delta:g}",
                      _when(s.created_at))
    return table


def cleanup_table(report: CleanupReport) -> Table:
    verb = "would free" if report.dry_run else "freed"
    table = Table(title=f"Clean-up {verb} {report.freed_bytes / 1e6:.2f} MB")
    table.add_column("kept")
    table.add_column("removed")
    table.add_column("orphan files")
    table.add_row(", ".join(f"v{n}" for n in report.kept), ", ".join(f"v{n}" for n in report.removed),
                  str(len(report.orphans)))
    return table
