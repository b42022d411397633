"""Rich renderings of what a site sees; the menu and the subcommands print the same tables.

Headers are short and long cells fold, so every table stays readable in an 80-column pipe.
"""

from __future__ import annotations

from typing import Any

from rich.console import Group
from rich.table import Table

from client.menu.evaluation import Evaluation
from shared import protocol
from shared.dataset_layout import CLASS_NAMES, DatasetScan
from shared.terminal import narrow_table


def requests_table(requests: list[protocol.RequestView]) -> Table:
    table = narrow_table("My training requests", "req", "state", "rnd", "ep", "privacy", "sess", "decided",
                   "reason / note")
    for r in requests:
        table.add_row(r.label, r.state, str(r.rounds), str(r.local_epochs), dp_text(r.dp),
                      str(r.session_id or ""), r.decided_at.strftime("%m-%d %H:%M") if r.decided_at else "",
                      r.reason or r.note)
    return table


def dp_text(dp: dict[str, Any]) -> str:
    noise = f"eps<={dp['target_epsilon']:g}" if dp.get("target_epsilon") else f"noise {dp.get('noise_multiplier')}"
    return f"{noise} d={dp.get('delta', 0):g} clip {dp.get('l2_norm_clip', 0):g} {dp.get('engine', 'dp-model')}"


def notifications_table(notes: list[protocol.NotificationView]) -> Table:
    table = narrow_table("Notifications", "id", "when", "kind", "message", "read")
    for n in notes:
        table.add_row(str(n.id), n.created_at.strftime("%m-%d %H:%M"), n.kind, n.message, "yes" if n.read_at else "")
    return table


def versions_table(versions: list[protocol.VersionView]) -> Table:
    table = narrow_table("Model updates available to this site", "ver", "kind", "from", "rnd", "sites", "val. acc",
                   "sha256")
    for v in versions:
        accuracy = v.metrics.get("evaluate", {}).get("accuracy")
        table.add_row(v.label, v.kind, ", ".join(f"v{p}" for p in v.parents), str(v.rounds),
                      ", ".join(v.participants), f"{accuracy:.1%}" if accuracy is not None else "", v.sha256[:12])
    return table


def dataset_table(scan: DatasetScan) -> Table:
    table = narrow_table(f"Local dataset {scan.root}", "class", "images", right=("images",))
    for name in CLASS_NAMES:
        table.add_row(name, str(scan.counts[name]))
    table.add_row("[bold]total", f"[bold]{scan.total}")
    return table


def skipped_table(scan: DatasetScan) -> Table:
    table = narrow_table(f"Skipped files ({len(scan.skipped)})", "file", "why")
    for skipped in scan.skipped:
        table.add_row(str(skipped.path), skipped.reason)
    return table


def privacy_table(status: dict[str, float]) -> Table:
    table = narrow_table(f"Privacy budget (delta {status['delta']:g}, all runs composed)", "spent epsilon", "budget",
                   "remaining", right=("spent epsilon", "budget", "remaining"))
    table.add_row(f"{status['spent']:.3f}", f"{status['budget']:.3f}", f"{status['remaining']:.3f}")
    return table


def version_log_table(entries: list[dict[str, Any]]) -> Table:
    table = narrow_table("Accepted versions", "ver", "accepted", "model file", "sha256")
    for e in entries:
        table.add_row(f"v{e['version']}", e["accepted_at"], e["h5"], e["sha256"][:12])
    return table


def evaluation_view(result: Evaluation) -> Group:
    """Accuracy, then the confusion matrix with each class's recall."""
    matrix = narrow_table(f"v{result.version} on {result.examples} local images: accuracy {result.accuracy:.1%}",
                    "true \\ predicted", *CLASS_NAMES, "recall", right=(*CLASS_NAMES, "recall"))
    for index, (name, row) in enumerate(zip(CLASS_NAMES, result.confusion)):
        recall = result.recall(index)
        matrix.add_row(name, *map(str, row), f"{recall:.1%}" if recall is not None else "")
    lines: list[Any] = [matrix]
    if result.skipped:
        lines.append(f"{result.skipped} file(s) skipped (see the dataset summary)")
    return Group(*lines)
