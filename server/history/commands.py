"""The ``fl-history`` subcommands: parsed arguments in, ``history_queries`` asked, views printed.

The interactive browser calls the same ``show_*`` functions, so both print the same tables.
Every handler gets a store opened read-only and returns the exit status.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from rich.console import Console

from server.history import privacy_views, version_views
from server.history import views as history_views
from server.history.export import export
from server.history.plots import write_plots
from server.history.queries import (
    compare_versions,
    site_contributions,
    version_details,
    version_rounds,
)
from server.store import Store

Handler = Callable[[argparse.Namespace, Store, Console], int]


def show_versions(out: Console, store: Store) -> None:
    out.print(version_views.versions_table(store.list_versions()))


def show_lineage(out: Console, store: Store) -> None:
    out.print(version_views.lineage_tree(store.list_versions()))


def show_version(out: Console, store: Store, number: int) -> None:
    out.print(version_views.version_details_view(version_details(store, number)))


def show_rounds(out: Console, store: Store, number: int) -> None:
    version = store.get_version(number)
    rows = version_rounds(store, version)
    if not rows:
        out.print(f"{version.label} is a {version.kind} version: no training rounds behind it")
        return
    out.print(history_views.round_rows_table(rows, f"Rounds of session {version.session_id} ({version.label})"))


def show_comparison(out: Console, store: Store, a: int, b: int) -> None:
    out.print(history_views.comparison_view(compare_versions(store, a, b)))


def show_sites(out: Console, store: Store) -> None:
    contributions = site_contributions(store)
    out.print(history_views.sites_view(contributions))
    out.print(history_views.epsilon_timeline_table(contributions))


def show_privacy(out: Console, store: Store) -> None:
    out.print(privacy_views.ledger_view(store.privacy_charges(), store.list_sites()))


def write_export(out: Console, store: Store, directory: Path, fmt: str) -> list[Path]:
    files = export(store, directory, fmt)
    out.print(f"exported {len(files)} {fmt.upper()} files:")
    for path in files:
        out.print(f"  {path}", markup=False, soft_wrap=True)
    return files


def write_plot_files(out: Console, store: Store, directory: Path, study: Path | None) -> list[Path]:
    files = write_plots(store, directory, study=study)
    out.print(f"wrote {len(files)} plots:")
    for path in files:
        out.print(f"  {path}", markup=False, soft_wrap=True)
    return files


def _versions(args: argparse.Namespace, store: Store, out: Console) -> int:
    show_versions(out, store)
    return 0


def _lineage(args: argparse.Namespace, store: Store, out: Console) -> int:
    show_lineage(out, store)
    return 0


def _show(args: argparse.Namespace, store: Store, out: Console) -> int:
    show_version(out, store, args.number)
    return 0


def _rounds(args: argparse.Namespace, store: Store, out: Console) -> int:
    show_rounds(out, store, args.number)
    return 0


def _compare(args: argparse.Namespace, store: Store, out: Console) -> int:
    show_comparison(out, store, args.a, args.b)
    return 0


def _sites(args: argparse.Namespace, store: Store, out: Console) -> int:
    show_sites(out, store)
    return 0


def _privacy(args: argparse.Namespace, store: Store, out: Console) -> int:
    show_privacy(out, store)
    return 0


def _export(args: argparse.Namespace, store: Store, out: Console) -> int:
    write_export(out, store, args.out, args.format)
    return 0


def _plot(args: argparse.Namespace, store: Store, out: Console) -> int:
    write_plot_files(out, store, args.out, args.study)
    return 0


COMMANDS: dict[str, Handler] = {
    "versions": _versions, "lineage": _lineage, "show": _show, "rounds": _rounds, "compare": _compare,
    "sites": _sites, "privacy": _privacy, "export": _export, "plot": _plot,
}
