"""``fl-client --site NAME``: with no command the hospital menu; with one, that action and exit.

``fl-client evaluate MODEL_FILE --data DIR`` needs no site: a hospital can try a released model
file on its scans before it sets up a site or lets the software near its training data.

This module only parses arguments and dispatches; the handlers live in ``site_commands`` and
the menu in ``site_menu``, and both call the same ``site_actions``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pydantic import TypeAdapter, ValidationError

from client.menu.commands import COMMANDS, console, evaluate, setup
from client.site_profile import load_profile
from shared import protocol, training_defaults
from shared.cli_types import add_verbose_option, version_number
from shared.program import Program
from shared.settings import Settings, load_settings


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fl-client", description="A hospital site of the federation. "
                                     "Without a command: the interactive menu.")
    parser.add_argument("--site", help="this site's name, as enrolled by the admin (needed by every command "
                        "except evaluate MODEL_FILE --data DIR)")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    setup_parser = commands.add_parser("setup", help="save this site's server, token, data folder and budget")
    token = setup_parser.add_mutually_exclusive_group()
    token.add_argument("--token-file", type=Path, help="file holding the token ('-': standard input); "
                       "without it the token is asked for, or read from piped standard input")
    token.add_argument("--token", help="the token itself (discouraged: it shows in the process list)")
    setup_parser.add_argument("--data", type=Path, required=True,
                              help="folder with glioma/ meningioma/ notumor/ pituitary/")
    setup_parser.add_argument("--server", default="127.0.0.1:9090", help="request socket host:port")
    setup_parser.add_argument("--budget-epsilon", type=float, default=10.0)
    setup_parser.add_argument("--budget-delta", type=float, default=1e-5)
    setup_parser.add_argument("--backbone-weights", type=Path, help="local ResNet50 weights file (.h5)")
    setup_parser.add_argument("--tls-ca", type=Path, help="the federation's ca.pem when the server uses TLS")
    setup_parser.add_argument("--tls-cert", type=Path, help="this site's certificate, when the server wants mutual TLS")
    setup_parser.add_argument("--tls-key", type=Path, help="the key of --tls-cert")
    setup_parser.add_argument("--count-public", action="store_true",
                              help="send the exact training-image count (default: rounded up to a bucket)")
    setup_parser.add_argument("--slices-per-patient", type=int,
                              help="most MRI slices of one patient; views then show patient-level epsilon")
    setup_parser.add_argument("--dp-engine", choices=protocol.DP_ENGINES, default=protocol.DEFAULT_DP_ENGINE,
                              help="DP-SGD engine of this site's requests (default %(default)s)")
    setup_parser.add_argument("--require-secure-aggregation", action="store_true",
                              help="refuse every session without secure aggregation, whatever the server says")

    request = commands.add_parser("request", help="send a training request")
    request.add_argument("--rounds", type=int, default=training_defaults.ROUNDS)
    request.add_argument("--local-epochs", type=int, default=training_defaults.LOCAL_EPOCHS)
    noise = request.add_mutually_exclusive_group()
    noise.add_argument("--target-epsilon", type=float, help="privacy to spend on this request (default 1)")
    noise.add_argument("--noise", type=float, help="noise multiplier (instead of a target epsilon)")
    request.add_argument("--delta", type=float, help="default: the site's budget delta")
    request.add_argument("--clip", type=float, default=training_defaults.L2_NORM_CLIP, help="per-example L2 clip norm")
    request.add_argument("--dp-engine", choices=protocol.DP_ENGINES, help="DP-SGD engine (default: the site's)")
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
    evaluate = commands.add_parser("evaluate", help="accuracy, confusion matrix and recall of a model on a folder "
                                   "of scans; works without a set-up site when given a saved model file")
    evaluate.add_argument("model", type=version_or_file, metavar="VERSION|MODEL_FILE",
                          help="an accepted version (v3), or a saved model file (north_FinalGlobal_v3.h5)")
    evaluate.add_argument("--data", type=Path, help="folder with class sub-folders (default: the site's data)")
    commands.add_parser("dataset", help="local dataset summary")
    commands.add_parser("privacy", help="privacy spent (composed) versus budget")
    commands.add_parser("log", help="versions this site accepted")
    add_verbose_option(parser, commands)
    return parser



def version_or_file(text: str) -> int | Path:
    """``v3``/``3`` -> 3; an existing file or a ``.h5`` name -> that path."""
    path = Path(text).expanduser()
    if path.suffix.lower() == ".h5" or path.is_file():
        return path
    try:
        return version_number(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"not a version or a model file: {text!r} "
                                         "(use e.g. v3, or a saved north_FinalGlobal_v3.h5)") from None


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.site is None and not (args.command == "evaluate" and isinstance(args.model, Path)):
        parser.error("--site NAME is needed (only 'evaluate MODEL_FILE --data DIR' works without a site)")
    program = Program(console, verbose=args.verbose)
    return program.run(lambda: _run(args, program))


def _run(args: argparse.Namespace, program: Program) -> int:
    settings = load_settings()
    if args.command is None:  # the menu's screen belongs to the menu; logs go to a file only
        from client.menu.site_menu import run_menu

        program.log_to(_log_folder(settings, args.site) / "menu.log", level=settings.log_level, console_logs=False)
        return run_menu(settings, args.site)
    program.log_to(_log_folder(settings, args.site) / "fl-client.log", level=settings.log_level)
    if args.command == "setup":
        return setup(args, settings)
    if args.site is None:  # evaluate MODEL_FILE --data DIR: no site, no profile, no network
        evaluate(console, None, args.model, args.data)
        return 0
    return COMMANDS[args.command](args, load_profile(settings, args.site))


def _log_folder(settings: Settings, site: str | None) -> Path:
    """The site's own folder; ``home/logs`` without a site or for a name that is no site name
    (which must not become a path: ``--site ../x``)."""
    try:
        return settings.site_dir(TypeAdapter(protocol.SiteName).validate_python(site))
    except ValidationError:
        return settings.home / "logs"


if __name__ == "__main__":
    sys.exit(main())
