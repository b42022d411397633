"""``fl-history``: the analyst's read-only view of the model history.

With no subcommand, an interactive browser; with one, that view and exit. The store is opened
read-only (SQLite ``mode=ro``, read-only transactions elsewhere), so nothing here can write.
"""

from __future__ import annotations

import argparse
import sys
from contextlib import closing
from pathlib import Path

from server.history.commands import COMMANDS
from server.history.export import FORMATS
from server.store import Store
from shared.cli_types import add_verbose_option, version_number
from shared.program import Program
from shared.settings import load_settings
from shared.terminal import make_console


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fl-history", description="Browse the model history (read-only). "
                                     "Without a command: the interactive browser.")
    parser.add_argument("--home", type=Path, help="the server's FL_HOME (default: FL_HOME or ./var)")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.add_parser("versions", help="every version with its accuracy")
    commands.add_parser("lineage", help="the version tree; merges with their weights")
    commands.add_parser("show", help="one version: lineage, rounds, privacy").add_argument("number", type=version_number)
    commands.add_parser("rounds", help="per-round metrics of a version's session").add_argument(
        "number", type=version_number)
    compare = commands.add_parser("compare", help="metrics, participants, privacy, L2 distance of two versions")
    compare.add_argument("a", type=version_number)
    compare.add_argument("b", type=version_number)
    commands.add_parser("sites", help="per-site contribution and epsilon over time")
    commands.add_parser("privacy", help="the server's privacy ledger per site (PLD, RDP cross-check)")
    export = commands.add_parser("export", help="versions, rounds, sites as CSV or JSON files")
    export.add_argument("--format", choices=FORMATS, default="csv")
    export.add_argument("--out", type=Path, required=True, help="folder for the files")
    plot = commands.add_parser("plot", help="PNG plots; prints the file names")
    plot.add_argument("--out", type=Path, required=True, help="folder for the PNG files")
    plot.add_argument("--study", type=Path, help="privacy-utility JSON from bench/privacy_utility.py")
    web = commands.add_parser("web", help="the same views in a browser (read-only dashboard)")
    web.add_argument("--host", default="127.0.0.1",
                     help="address to listen on (default 127.0.0.1; any other needs TLS and an analyst token)")
    web.add_argument("--port", type=_port, default=8050, help="default 8050")
    add_verbose_option(parser, commands)
    return parser


def _port(text: str) -> int:
    port = int(text) if text.isdigit() else -1
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"not a port: {text!r} (use 0-65535)")
    return port


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    program = Program(make_console(), verbose=args.verbose)
    return program.run(lambda: _run(args, program))


def _run(args: argparse.Namespace, program: Program) -> int:
    settings = load_settings(**({"home": args.home} if args.home else {}))
    program.log_to(None, level=settings.log_level)  # read-only: the analyst writes nothing, not even a log
    with closing(Store.open(settings, readonly=True)) as store:
        if args.command is None:
            from server.history.browser import run_browser

            return run_browser(store, program.console)
        if args.command == "web":  # imported here: the terminal views need no web stack
            from server.history.web.serve import serve

            return serve(store, settings, program.console, host=args.host, port=args.port)
        return COMMANDS[args.command](args, store, program.console)


if __name__ == "__main__":
    sys.exit(main())
