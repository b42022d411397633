"""``fl-server``: with no command the admin console (menu); with one, that action and exit.

This module only parses arguments and dispatches; the handlers live in ``admin_commands`` and
the menu in ``admin_console``, and both call the same ``admin_actions``.
"""

from __future__ import annotations

import argparse
import sys
from contextlib import closing
from pathlib import Path

from server.console.commands import COMMANDS, console
from server.sessions.aggregation_rule import DEFAULT_TRIM_FRACTION, Aggregator
from server.sessions.manager import ApprovalOptions
from server.store import Store
from server.store.file_modes import restrict_umask
from shared.cli_types import add_verbose_option, version_number
from shared.program import Program
from shared.settings import load_settings
from shared.tls import require_tls_for_listeners
from shared.training_defaults import BATCH_SIZE, LEARNING_RATE


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fl-server", description="Admin of the federation. "
                                     "Without a command: the interactive admin console.")
    parser.add_argument("--insecure", action="store_true",
                        help="allow listening beyond loopback without TLS (tokens and weights in clear)")
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
    enrol.add_argument("--issue-cert", type=Path, metavar="CA_DIR",
                       help="also issue the site's client certificate (mutual TLS) with the CA in CA_DIR")
    enrol.add_argument("--allow-no-dp", action="store_true",
                       help="let this site train without noise (no finite epsilon; benchmarks only)")
    commands.add_parser("disable", help="disable a site and revoke its live session secrets").add_argument("site")
    commands.add_parser("enable", help="re-enable a disabled site").add_argument("site")
    commands.add_parser("rotate-token", help="give a site a new token; the old one stops working").add_argument("site")
    commands.add_parser("sites", help="enrolled sites")
    commands.add_parser("reset-identity-key", help="forget a site's identity key so it can register a new one"
                        ).add_argument("site")

    listing = commands.add_parser("requests", help="training requests")
    listing.add_argument("--pending", action="store_true", help="only PENDING ones")
    listing.add_argument("--site")
    approve = commands.add_parser("approve", help="approve requests into one session")
    approve.add_argument("requests", nargs="+", help="request ids, e.g. 3 4 or REQ-3")
    approve.add_argument("--rounds", type=int, help="default and maximum: the fewest any request asked for")
    approve.add_argument("--local-epochs", type=int, help="cap on each site's own epochs (default: no cap)")
    approve.add_argument("--mu", type=float, default=0.01, help="FedProx proximal mu (0 = FedAvg)")
    approve.add_argument("--min-clients", type=int, help="default: one per request")
    approve.add_argument("--join-timeout", type=float, default=300.0, help="seconds for sites to connect")
    approve.add_argument("--round-timeout", type=float, default=3600.0)
    approve.add_argument("--batch-size", type=int, default=BATCH_SIZE,
                         help="expected Poisson batch (default %(default)s)")
    approve.add_argument("--lr", type=float, default=LEARNING_RATE, help="sites' learning rate (default %(default)s)")
    approve.add_argument("--secure-aggregation", action=argparse.BooleanOptionalAction, default=None,
                         help="mask updates so the server sees only their sum (default: on for 3+ sites)")
    approve.add_argument("--secagg-threshold", type=int,
                         help="shares that rebuild a site's secrets, within its neighbourhood of "
                              "k = min(n, 2*ceil(log2 n)+1) sites (default ceil(2k/3))")
    approve.add_argument("--aggregator", choices=[a.value for a in Aggregator], default=Aggregator.FEDPROX.value,
                         help="how the server combines updates: the FedProx weighted mean, or one vote per site "
                              "(coordinate-wise trimmed mean or median; needs --no-secure-aggregation and 3+ sites)")
    approve.add_argument("--trim-fraction", type=float,
                         help=f"trimmed mean: share cut at each end of each coordinate (default {DEFAULT_TRIM_FRACTION})")
    approve.add_argument("--max-update-norm", type=float, default=ApprovalOptions.max_update_norm,
                         help="largest L2 norm of any site's update, and of the combined one (default: "
                              "per site, how far its approved DP schedule lets an honest round go)")
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
    commands.add_parser("privacy", help="the server's privacy ledger: what each site was charged")

    commands.add_parser("versions", help="model versions")
    commands.add_parser("version", help="one version's lineage, rounds, privacy").add_argument("number", type=version_number)
    export = commands.add_parser("export", help="release a version to sites")
    export.add_argument("number", type=version_number)
    export.add_argument("--sites", required=True, help="comma-separated site names")
    commands.add_parser("rollback", help="make an older version the head again").add_argument("number", type=version_number)
    cleanup = commands.add_parser("cleanup", help="delete old weight files (dry run unless --yes)")
    cleanup.add_argument("--keep", type=int, default=5)
    cleanup.add_argument("--yes", action="store_true")
    audit = commands.add_parser("audit", help="verify the audit log's hash chain and its keyed seals")
    audit.add_argument("--export-head", type=Path, metavar="FILE",
                       help="after a good check, write the newest row's hash to FILE (keep it elsewhere)")
    audit.add_argument("--against", type=Path, metavar="FILE",
                       help="also check that the log still holds the head exported to FILE")
    _analyst_token_options(commands.add_parser(
        "analyst-token", help="dashboard tokens for analysts (fl-history web off loopback)"))
    add_verbose_option(parser, commands)
    return parser


def _analyst_token_options(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="token_action", metavar="ACTION", required=True)
    actions.add_parser("create", help="a new token for an analyst, shown once").add_argument("name")
    actions.add_parser("revoke", help="revoke an analyst's token at once").add_argument("name")
    actions.add_parser("list", help="every analyst token (never the secret)")


def _model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--image-size", type=int, help="default: settings.image_size")
    parser.add_argument("--trainable-blocks", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--weights", type=Path, help="local ResNet50 weights file; default none")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    program = Program(console, verbose=args.verbose)
    return program.run(lambda: _run(args, program))


def _run(args: argparse.Namespace, program: Program) -> int:
    settings = load_settings(**({"insecure": True} if args.insecure else {}))
    if args.command in (None, "serve", "approve"):  # both listeners, checked before anything starts
        require_tls_for_listeners(settings)
    if args.command in (None, "serve"):  # the long-running server: its logs and files 0600 (0640)
        restrict_umask(settings)
    menu = args.command is None  # the console's screen belongs to the menu; logs go to a file only
    program.log_to(settings.home / "logs" / ("admin-console.log" if menu else "fl-server.log"),
                   level=settings.log_level, console_logs=not menu)
    with closing(Store.open(settings)) as store:
        if menu:
            from server.console.menu import run_console

            return run_console(store, settings)
        return COMMANDS[args.command](args, store, settings)


if __name__ == "__main__":
    sys.exit(main())
