"""CSV and JSON export of the history: versions, rounds, sites and every privacy report.

Both formats carry the same tables with the same columns (one file per table), so a spreadsheet
user and a notebook user see identical numbers. In CSV, lists are joined with ``;`` and nested
mappings (metrics, DP summary) are compact JSON text.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

from server.history.queries import all_rounds, metric, site_contributions
from server.store import Store
from server.store.records import VersionInfo

FORMATS = ("csv", "json")
Row = dict[str, Any]


def version_row(v: VersionInfo) -> Row:
    return {
        "version": v.number, "kind": v.kind, "parents": v.parents, "session_id": v.session_id,
        "participants": v.participants, "rounds": v.rounds,
        "val_accuracy": metric(v, "evaluate", "accuracy"), "val_loss": metric(v, "evaluate", "loss"),
        "fit_accuracy": metric(v, "fit", "accuracy"), "fit_loss": metric(v, "fit", "loss"),
        "merge_weight": v.merge_weight, "staleness": v.staleness, "created_at": v.created_at,
        "released_to": v.released_to, "has_weights": v.has_weights, "sha256": v.sha256,
        "metrics": v.metrics, "dp_summary": v.dp_summary,
    }


def tables(store: Store) -> dict[str, list[Row]]:
    """Every exported table by name, rows as flat-ish dicts."""
    contributions = site_contributions(store)
    return {
        "versions": [version_row(v) for v in store.list_versions()],
        "rounds": [asdict(r) for r in all_rounds(store)],
        "sites": [{"site": c.site, "sessions": c.sessions, "versions": c.versions, "examples": c.examples,
                   "latest_total_epsilon": c.latest_total_epsilon, "trained_without_dp": c.without_dp}
                  for c in contributions],
        "privacy_reports": [asdict(p) for c in contributions for p in c.points],
    }


def export(store: Store, out_dir: Path, fmt: str) -> list[Path]:
    """Write one ``<table>.<fmt>`` per table into ``out_dir``; returns the files written."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    out_dir.mkdir(parents=True, exist_ok=True)
    write = _write_csv if fmt == "csv" else _write_json
    return [write(out_dir / f"{name}.{fmt}", rows) for name, rows in tables(store).items()]


def _write_json(path: Path, rows: list[Row]) -> Path:
    path.write_text(json_text(rows), encoding="utf-8")
    return path


def _write_csv(path: Path, rows: list[Row]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as out:
        _csv_rows(out, rows)
    return path


def csv_text(rows: list[Row]) -> str:
    """The CSV a table would get in a file, as text (the dashboard's downloads)."""
    out = io.StringIO(newline="")
    _csv_rows(out, rows)
    return out.getvalue()


def json_text(rows: list[Row]) -> str:
    """The JSON a table would get in a file, as text (the dashboard's downloads)."""
    return json.dumps(rows, indent=2, default=_text) + "\n"


def _csv_rows(out: TextIO, rows: list[Row]) -> None:
    if rows:
        writer = csv.DictWriter(out, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows({key: _cell(value) for key, value in row.items()} for row in rows)


def _cell(value: Any) -> Any:
    if isinstance(value, list):
        return ";".join(str(item) for item in value)
    if isinstance(value, dict):
        return json.dumps(value, separators=(",", ":"), default=_text)
    if isinstance(value, datetime):
        return value.isoformat()
    return "" if value is None else value


def _text(value: Any) -> str:
    """JSON has no dates or paths: write them as ISO text / plain text."""
    return value.isoformat() if isinstance(value, datetime) else str(value)
