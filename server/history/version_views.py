"""Rich renderings of versions that the admin console and ``fl-history`` share.

Headers are short and long cells fold, so every table stays readable in an 80-column pipe.
"""

from __future__ import annotations

from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.tree import Tree

from server.history.privacy_views import ACCOUNTING_NOTE, version_privacy_table
from server.history.queries import VersionDetails, validation_accuracy
from server.store.records import RoundInfo, VersionInfo
from shared.terminal import narrow_table


def percent(value: float | None) -> str:
    """A fraction as a percentage with one decimal; blank when unknown."""
    return f"{value:.1%}" if value is not None else ""


NOT_EVALUATED = "not evaluated"


def validation_text(version: VersionInfo) -> str:
    """The validation accuracy of the version's own weights, or "not evaluated".

    Only a secure session's last round scores weights (inside the masked sum; plain sites send no
    validation metrics), and only those it will commit: a version has no number of another model.
    """
    accuracy = validation_accuracy(version)
    return NOT_EVALUATED if accuracy is None else percent(accuracy)


def versions_table(versions: list[VersionInfo]) -> Table:
    """One row per version; merge weights and dates are in the details (lineage tree)."""
    table = narrow_table("Model versions", "ver", "kind", "from", "sess", "sites", "rnd", "val. acc", "released to",
                   "sha256")
    for v in versions:
        table.add_row(v.label + ("" if v.has_weights else " pruned"), v.kind, ", ".join(f"v{p}" for p in v.parents),
                      str(v.session_id or ""), ", ".join(v.participants), str(v.rounds),
                      validation_text(v), ", ".join(v.released_to),
                      v.sha256[:8])
    return table


def lineage_tree(versions: list[VersionInfo], highlight: int | None = None) -> Tree:
    """Versions as a tree from v0; a merge hangs under its head parent and names its base."""
    tree = Tree("[bold]lineage")
    nodes: dict[int, Tree] = {}
    for v in sorted(versions, key=lambda x: x.number):
        label = f"{v.label} [dim]{v.kind}[/]"
        if v.merge_weight is not None:
            label += f" (merged from v{v.parents[-1]}, weight {v.merge_weight:.3f}, staleness {v.staleness})"
        if v.number == highlight:
            label = f"[bold]{label} <-"
        parent = nodes.get(v.parents[0]) if v.parents else None
        nodes[v.number] = (parent or tree).add(label)
    return tree


def rounds_table(rounds: list[RoundInfo], title: str = "Per-round metrics") -> Table:
    table = narrow_table(title, "round", "phase", "loss", "acc", "examples", "sites", right=("loss", "acc", "examples"))
    for r in rounds:
        m = r.metrics
        loss = m.get("loss")
        table.add_row(str(r.round_number), r.phase, f"{loss:.4f}" if loss is not None else "",
                      percent(m.get("accuracy")), str(m.get("examples", "")), ", ".join(sorted(r.per_site)))
    return table


def privacy_table(dp_summary: dict[str, Any]) -> Group:
    """A version's privacy: the server ledger's charge for its session, per site, and what it means."""
    return Group(version_privacy_table(dp_summary), ACCOUNTING_NOTE)


def _validation_line(v: VersionInfo) -> str:
    """Whose weights the validation figures are of, so a merge's number is never read as its session's."""
    evaluate = v.metrics.get("evaluate") or {}
    if validation_accuracy(v) is None:
        return f"validation: {NOT_EVALUATED} (no secure round scored these weights)"
    loss = evaluate.get("loss")
    scored = "the merged weights, in the session's last round" if v.kind == "merge" else "these weights"
    return (f"validation: accuracy {validation_text(v)}" + (f", loss {loss:.4f}" if isinstance(loss, float) else "")
            + f" on {evaluate.get('examples', '?')} validation images of the sites, scored on {scored}")


def version_details_view(details: VersionDetails) -> Group:
    """Lineage, per-round metrics, participants, privacy and the file's sha256 of one version."""
    v = details.version
    parts: list[RenderableType] = [versions_table([v]), lineage_tree(details.lineage, highlight=v.number)]
    if details.rounds:
        parts.append(rounds_table(details.rounds))
    parts.append(f"created {v.created_at:%Y-%m-%d %H:%M:%S}; participants: {', '.join(v.participants) or 'none'}"
                 + (f"; merge weight {v.merge_weight:.3f}" if v.merge_weight is not None else ""))
    if details.aggregation:
        parts.append(f"aggregation: {details.aggregation}")
    parts.append(_validation_line(v))
    if v.dp_summary:
        parts.append(privacy_table(v.dp_summary))
    parts.append(f"sha256 {v.sha256}\nfile {v.path}" + ("" if v.has_weights else " (pruned)"))
    return Group(*parts)
