"""``fl-client --site NAME``: with no command the hospital menu; with one, that action and exit.

This module only parses arguments and dispatches; the handlers live in ``site_commands`` and
the menu in ``site_menu``, and both call the same ``site_actions``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from client.menu.commands import COMMANDS, console, setup
from client.site_profile import load_profile
from shared.cli_types import version_number
from shared.errors import FLError
from shared.logging_setup import configure_logging
from shared.settings import load_settings
from shared.terminal import print_error


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fl-client", description="A hospital site of the federation. "
                                     "Without a command: the interactive menu.")
    parser.add_argument("--site", required=True, help="this site's name, as enrolled by the admin")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    setup_parser = commands.add_parser("setup", help="save this site's server, token, data folder and budget")
    setup_parser.add_argument("--token", required=True)
    setup_parser.add_argument("--data", type=Path, required=True,
                              help="folder with glioma/ meningioma/ notumor/ pituitary/")
    setup_parser.add_argument("--server", default="127.0.0.1:9090", help="request socket host:port")
    setup_parser.add_argument("--budget-epsilon", type=float, default=10.0)
    setup_parser.add_argument("--budget-delta", type=float, default=1e-5)
    setup_parser.add_argument("--backbone-weights", type=Path, help="local ResNet50 weights file (.h5)")
    setup_parser.add_argument("--tls-ca", type=Path, help="the federation's ca.pem when the server uses TLS")
    setup_parser.add_argument("--require-secure-aggregation", action="store_true",
                              help="refuse every session without secure aggregation, whatever the server says")

    request = commands.add_parser("request", help="send a training request")
    request.add_argument("--rounds", type=int, default=3)
    request.add_argument("--local-epochs", type=int, default=1)
    noise = request.add_mutually_exclusive_group()
    noise.add_argument("--target-epsilon", type=float, help="privacy to spend on this request (default 1)")
    noise.add_argument("--noise", type=float, help="noise multiplier (instead of a target epsilon)")
    request.add_argument("--delta", type=float, help="default: the site's budget delta")
    request.add_argument("--clip", type=float, default=1.0, help="per-example L2 clip norm")
    request.add_argument("--note", default="")
    request.add_argument("--train", action="store_true", help="wait for approval, then train")
    request.add_argument("--timeout", type=float, default=3600.0, help="seconds to wait for approval (--train)")

    commands.add_parser("requests", help="my requests and their status")
    train = commands.add_parser("train", help="wait for a request's approval, then train in its session")
    train.add_argument("request", help="e.g. REQ-3")
    train.add_argument("--timeout", type=float, default=3600.0, help="seconds to wait for approval")
    notes = commands.add_parser("notifications", help="messages from the server")
    notes.add_argument("--unread", action="store_true")
    commands.add_parser("updates", help="model versions available to this site")
    accept = commands.add_parser("accept", help="download, verify and save a model version")
    accept.add_argument("version", type=version_number, help="e.g. v1 or 1")
    evaluate = commands.add_parser("evaluate", help="accuracy and confusion matrix of an accepted version")
    evaluate.add_argument("version", type=version_number, help="e.g. v1 or 1")
    commands.add_parser("dataset", help="local dataset summary")
    commands.add_parser("privacy", help="privacy spent (composed) versus budget")
    commands.add_parser("log", help="versions this site accepted")
    return parser




def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = load_settings()
        if args.command is None:  # the menu's screen belongs to the menu; logs go to a file
            from client.menu.site_menu import run_menu

            configure_logging(settings.log_level, settings.site_dir(args.site) / "menu.log", console=False)
            return run_menu(settings, args.site)
        configure_logging(settings.log_level)
        if args.command == "setup":
            return setup(args, settings)
        return COMMANDS[args.command](args, load_profile(settings, args.site))
    except FLError as error:
        print_error(console, error)
        return 1
    except KeyboardInterrupt:
        console.print("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
