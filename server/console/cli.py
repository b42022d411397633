"""``fl-server``: with no command the admin console (menu); with one, that action and exit.

This module only parses arguments and dispatches; the handlers live in ``admin_commands`` and
the menu in ``admin_console``, and both call the same ``admin_actions``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from server.console.commands import COMMANDS, console
from server.store import Store
from shared.cli_types import version_number
from shared.errors import FLError
from shared.logging_setup import configure_logging
from shared.settings import load_settings
from shared.terminal import print_error


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fl-server", description="Admin of the federation. "
                                     "Without a command: the interactive admin console.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    _model_options(commands.add_parser("init", help="create the store and the initial model v0"))
    serve = commands.add_parser("serve", help="run the request socket and sessions headless (no menu)")
    serve.add_argument("--on-exit", choices=("wait", "stop"), default="wait",
                       help="on Ctrl-C/SIGTERM: wait for running sessions or stop them")
    _model_options(serve)

    enrol = commands.add_parser("enrol", help="enrol a site and show its token once")
    enrol.add_argument("site")
    enrol.add_argument("--budget-epsilon", type=float, default=10.0)
    enrol.add_argument("--budget-delta", type=float, default=1e-5)
    commands.add_parser("disable", help="disable a site").add_argument("site")
    commands.add_parser("sites", help="enrolled sites")
    commands.add_parser("reset-identity-key", help="forget a site's identity key so it can register a new one"
                        ).add_argument("site")

    listing = commands.add_parser("requests", help="training requests")
    listing.add_argument("--pending", action="store_true", help="only PENDING ones")
    listing.add_argument("--site")
    approve = commands.add_parser("approve", help="approve requests into one session")
    approve.add_argument("requests", nargs="+", help="request ids, e.g. 3 4 or REQ-3")
    approve.add_argument("--rounds", type=int, help="default: the most any request asked for")
    approve.add_argument("--local-epochs", type=int, help="default: the most any request asked for")
    approve.add_argument("--mu", type=float, default=0.01, help="FedProx proximal mu (0 = FedAvg)")
    approve.add_argument("--min-clients", type=int, help="default: one per request")
    approve.add_argument("--join-timeout", type=float, default=300.0, help="seconds for sites to connect")
    approve.add_argument("--round-timeout", type=float, default=3600.0)
    approve.add_argument("--batch-size", type=int, default=16)
    approve.add_argument("--lr", type=float, default=0.05)
    approve.add_argument("--secure-aggregation", action=argparse.BooleanOptionalAction, default=None,
                         help="mask updates so the server sees only their sum (default: on for 3+ sites)")
    approve.add_argument("--secagg-threshold", type=int,
                         help="shares that rebuild a site's secrets, within its neighbourhood of "
                              "k = min(n, 2*ceil(log2 n)+1) sites (default ceil(2k/3))")
    approve.add_argument("--wait", action="store_true", help="block until the session ends")
    reject = commands.add_parser("reject", help="reject a request with a reason")
    reject.add_argument("request")
    reject.add_argument("--reason", required=True)
    commands.add_parser("requeue", help="put an interrupted or failed request back to PENDING").add_argument("request")

    sessions = commands.add_parser("sessions", help="sessions and their progress")
    sessions.add_argument("--active", action="store_true")
    sessions.add_argument("--watch", action="store_true", help="live view of active sessions until Ctrl-C")
    stop = commands.add_parser("stop", help="stop a running session cleanly")
    stop.add_argument("session", type=int)
    stop.add_argument("--reason", default="stopped by the admin")
    commands.add_parser("history", help="every request and session with its outcome")
    commands.add_parser("stats", help="per-site and per-version statistics")

    commands.add_parser("versions", help="model versions")
    commands.add_parser("version", help="one version's lineage, rounds, privacy").add_argument("number", type=version_number)
    export = commands.add_parser("export", help="release a version to sites")
    export.add_argument("number", type=version_number)
    export.add_argument("--sites", required=True, help="comma-separated site names")
    commands.add_parser("rollback", help="make an older version the head again").add_argument("number", type=version_number)
    cleanup = commands.add_parser("cleanup", help="delete old weight files (dry run unless --yes)")
    cleanup.add_argument("--keep", type=int, default=5)
    cleanup.add_argument("--yes", action="store_true")
    commands.add_parser("audit", help="verify the audit log's hash chain")
    return parser


def _model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--image-size", type=int, help="default: settings.image_size")
    parser.add_argument("--trainable-blocks", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--weights", type=Path, help="local ResNet50 weights file; default none")




def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = load_settings()
        if args.command is None:  # the console's screen belongs to the menu; logs go to a file
            configure_logging(settings.log_level, settings.home / "logs" / "admin-console.log", console=False)
        else:
            configure_logging(settings.log_level)
        store = Store.open(settings)
    except FLError as error:
        print_error(console, error)
        return 1
    try:
        if args.command is None:
            from server.console.menu import run_console

            return run_console(store, settings)
        return COMMANDS[args.command](args, store, settings)
    except FLError as error:
        print_error(console, error)
        return 1
    finally:
        store.close()


if __name__ == "__main__":
    sys.exit(main())
