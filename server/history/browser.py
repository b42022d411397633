"""The analyst's interactive browser: ``fl-history`` with no subcommand.

A questionary menu over the same ``show_*`` functions as the subcommands. Ctrl-C inside an action
returns to the menu; Ctrl-C (or "quit") at the menu leaves.
"""

from __future__ import annotations

from pathlib import Path

import questionary
from rich.console import Console

from server.history import commands
from server.history.export import FORMATS
from server.store import Store
from shared import prompts
from shared.errors import FLError
from shared.terminal import print_error

ACTIONS = ("versions", "lineage", "show a version", "rounds of a version", "compare two versions",
           "sites and privacy", "export", "plots", "quit")


def _pick_version(store: Store, message: str) -> int:
    choices = [questionary.Choice(f"{v.label}  {v.kind}  {', '.join(v.participants) or '-'}", value=str(v.number))
               for v in store.list_versions()]
    return int(prompts.choose(message, choices))


def _run(action: str, out: Console, store: Store) -> None:
    if action == "versions":
        commands.show_versions(out, store)
    elif action == "lineage":
        commands.show_lineage(out, store)
    elif action == "show a version":
        commands.show_version(out, store, _pick_version(store, "Which version?"))
    elif action == "rounds of a version":
        commands.show_rounds(out, store, _pick_version(store, "Which version?"))
    elif action == "compare two versions":
        a = _pick_version(store, "First version?")
        commands.show_comparison(out, store, a, _pick_version(store, "Compare with?"))
    elif action == "sites and privacy":
        commands.show_sites(out, store)
    elif action == "export":
        fmt = prompts.choose("Format?", list(FORMATS))
        commands.write_export(out, store, Path(prompts.text("Folder?", "var/history-export", required=True)), fmt)
    elif action == "plots":
        study = prompts.text("Privacy-utility study JSON (empty: none)?", "")
        commands.write_plot_files(out, store, Path(prompts.text("Folder?", "var/history-plots", required=True)),
                                  Path(study) if study else None)


def run_browser(store: Store, out: Console) -> int:
    """Loop until the analyst quits; errors are shown and the menu comes back."""
    out.print(f"[bold]Model history[/] (read-only): {len(store.list_versions())} versions")
    while True:
        try:
            action = prompts.choose("What would you like to see?", list(ACTIONS))
        except KeyboardInterrupt:
            return 0
        if action == "quit":
            return 0
        try:
            _run(action, out, store)
        except KeyboardInterrupt:
            out.print("cancelled")
        except FLError as error:
            print_error(out, error)
