"""Rich renderings of what a site sees; the menu and the subcommands print the same tables.

Headers are short and long cells fold, so every table stays readable in an 80-column pipe;
paths are never put in a table (a cell folds them mid-name): ``print_*`` puts them on lines
of their own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console, Group
from rich.table import Table

from client.menu.evaluation import Evaluation
from shared import protocol
from shared.dataset_layout import CLASS_NAMES, DatasetScan, SkippedFile
from shared.terminal import narrow_table, print_unwrapped


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
    """Aggregates only: how many sites took part (and whether this one did), never who the others are."""
    table = narrow_table("Model updates available to this site", "ver", "kind", "from", "rnd", "sites", "val. acc",
                   "sha256")
    for v in versions:
        accuracy = v.metrics.get("evaluate", {}).get("accuracy")
        sites = f"{v.sites}" + (" incl. this site" if v.participants else "")
        table.add_row(v.label, v.kind, ", ".join(f"v{p}" for p in v.parents), str(v.rounds), sites,
                      f"{accuracy:.1%}" if accuracy is not None else "not evaluated", v.sha256[:12])
    return table


def print_dataset(out: Console, scan: DatasetScan) -> None:
    """Images per class, then every skipped file with why (paths on lines of their own)."""
    print_unwrapped(out, f"data folder: {scan.root}")
    table = narrow_table("Local dataset", "class", "images", right=("images",))
    for name in CLASS_NAMES:
        table.add_row(name, str(scan.counts[name]))
    table.add_row("[bold]total", f"[bold]{scan.total}")
    out.print(table)
    print_skipped(out, scan.root, scan.skipped)


def print_skipped(out: Console, root: Path, skipped: list[SkippedFile]) -> None:
    """``N file(s) skipped:`` and one ``class/file: reason`` line each, nothing when none."""
    if not skipped:
        return
    out.print(f"{len(skipped)} file(s) skipped:")
    for item in skipped:
        name = item.path.relative_to(root) if item.path.is_relative_to(root) else item.path
        print_unwrapped(out, f"  {name}: {item.reason}")


def privacy_table(status: dict[str, Any]) -> Group:
    """Spent (PLD, RDP cross-check), budget, remaining at the budget's delta; patient level if declared."""
    table = narrow_table(f"Privacy budget (delta {status['delta']:g}, all runs composed)", "spent epsilon (PLD)",
                         "RDP check", "budget", "remaining", right=("spent epsilon (PLD)", "RDP check", "budget",
                                                                    "remaining"))
    table.add_row(f"{status['spent']:.3f}", f"{status['spent_rdp']:.3f}", f"{status['budget']:.3f}",
                  f"{status['remaining']:.3f}")
    lines: list[Any] = [table, f"unit: {status['unit']}"]
    if "patient_epsilon" in status:
        lines.append(f"patient level ({status['patient_unit']}): epsilon {status['patient_epsilon']:.3f} "
                     f"at delta {status['patient_delta']:.3g}")
    return Group(*lines)


def version_log_table(entries: list[dict[str, Any]]) -> Table:
    """File names only: the folder is the site's models folder (printed beside, unbroken)."""
    table = narrow_table("Accepted versions", "ver", "accepted", "model file", "sha256")
    for e in entries:
        table.add_row(f"v{e['version']}", e["accepted_at"], Path(e["h5"]).name, e["sha256"][:12])
    return table


def print_evaluation(out: Console, result: Evaluation) -> None:
    """Accuracy, the confusion matrix with each class's recall, and what was skipped and why."""
    print_unwrapped(out, f"{result.model} on {result.examples} images in {result.data_root}: "
                         f"accuracy {result.accuracy:.1%}")
    matrix = narrow_table("Confusion matrix (rows: true class, columns: predicted)", "true \\ predicted",
                          *CLASS_NAMES, "recall", right=(*CLASS_NAMES, "recall"))
    for index, (name, row) in enumerate(zip(CLASS_NAMES, result.confusion)):
        recall = result.recall(index)
        matrix.add_row(name, *map(str, row), f"{recall:.1%}" if recall is not None else "no images")
    out.print(matrix)
    if result.data_root is not None:
        print_skipped(out, result.data_root, result.skipped)
