"""Rich renderings of what a site sees; the menu and the subcommands print the same tables."""

from __future__ import annotations

from typing import Any

from rich.table import Table

from shared import protocol
from shared.dataset_layout import CLASS_NAMES, DatasetScan


def requests_table(requests: list[protocol.RequestView]) -> Table:
    table = Table(title="My training requests")
    for column in ("request", "state", "rounds", "epochs", "privacy", "session", "decided", "reason / note"):
        table.add_column(column)
    for r in requests:
        table.add_row(r.label, r.state, str(r.rounds), str(r.local_epochs), dp_text(r.dp),
                      str(r.session_id or ""), r.decided_at.strftime("%Y-%m-%d %H:%M") if r.decided_at else "",
                      r.reason or r.note)
    return table


def dp_text(dp: dict[str, Any]) -> str:
    noise = f"eps<={dp['target_epsilon']:g}" if dp.get("target_epsilon") else f"noise {dp.get('noise_multiplier')}"
    return f"{noise}, delta {dp.get('delta', 0):g}, clip {dp.get('l2_norm_clip', 0):g}"


def notifications_table(notes: list[protocol.NotificationView]) -> Table:
    table = Table(title="Notifications")
    for column in ("id", "when", "kind", "message", "read"):
        table.add_column(column)
    for n in notes:
        table.add_row(str(n.id), n.created_at.strftime("%Y-%m-%d %H:%M:%S"), n.kind, n.message,
                      "yes" if n.read_at else "")
    return table


def versions_table(versions: list[protocol.VersionView]) -> Table:
    table = Table(title="Model updates available to this site")
    for column in ("version", "kind", "parents", "rounds", "sites", "val. accuracy", "sha256"):
        table.add_column(column)
    for v in versions:
        accuracy = v.metrics.get("evaluate", {}).get("accuracy")
        table.add_row(v.label, v.kind, ", ".join(f"v{p}" for p in v.parents), str(v.rounds),
                      ", ".join(v.participants), f"{accuracy:.1%}" if accuracy is not None else "",
                      v.sha256[:12])
    return table


def dataset_table(scan: DatasetScan) -> Table:
    table = Table(title=f"Local dataset {scan.root}")
    table.add_column("class")
    table.add_column("images", justify="right")
    for name in CLASS_NAMES:
        table.add_row(name, str(scan.counts[name]))
    table.add_row("[bold]total", f"[bold]{scan.total}")
    return table


def skipped_table(scan: DatasetScan) -> Table:
    table = Table(title=f"Skipped files ({len(scan.skipped)})")
    table.add_column("file")
    table.add_column("why")
    for skipped in scan.skipped:
        table.add_row(str(skipped.path), skipped.reason)
    return table


def privacy_table(status: dict[str, float]) -> Table:
    table = Table(title=f"Privacy budget (delta {status['delta']:g}, all runs composed)")
    for column in ("spent epsilon", "budget", "remaining"):
        table.add_column(column, justify="right")
    table.add_row(f"{status['spent']:.3f}", f"{status['budget']:.3f}", f"{status['remaining']:.3f}")
    return table


def version_log_table(entries: list[dict[str, Any]]) -> Table:
    table = Table(title="Accepted versions")
    for column in ("version", "accepted", "model file", "sha256"):
        table.add_column(column)
    for e in entries:
        table.add_row(f"v{e['version']}", e["accepted_at"], e["h5"], e["sha256"][:12])
    return table
