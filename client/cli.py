"""``fl-client --site NAME <command>``: the hospital's commands (the menu calls the same actions)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.console import Console

from client import site_actions, views
from client.site_profile import load_profile
from shared.errors import FLError
from shared.logging_setup import configure_logging
from shared.settings import load_settings

console = Console()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fl-client", description="A hospital site of the federation.")
    parser.add_argument("--site", required=True, help="this site's name, as enrolled by the admin")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    setup = commands.add_parser("setup", help="save this site's server, token, data folder and budget")
    setup.add_argument("--token", required=True)
    setup.add_argument("--data", type=Path, required=True, help="folder with glioma/ meningioma/ notumor/ pituitary/")
    setup.add_argument("--server", default="127.0.0.1:9090", help="request socket host:port")
    setup.add_argument("--budget-epsilon", type=float, default=10.0)
    setup.add_argument("--budget-delta", type=float, default=1e-5)
    setup.add_argument("--backbone-weights", type=Path, help="local ResNet50 weights file (.h5)")

    request = commands.add_parser("request", help="send a training request")
    request.add_argument("--rounds", type=int, default=3)
    request.add_argument("--local-epochs", type=int, default=1)
    noise = request.add_mutually_exclusive_group()
    noise.add_argument("--target-epsilon", type=float, help="privacy to spend on this request")
    noise.add_argument("--noise", type=float, help="noise multiplier (instead of a target epsilon)")
    request.add_argument("--delta", type=float, help="default: the site's budget delta")
    request.add_argument("--clip", type=float, default=1.0, help="per-example L2 clip norm")
    request.add_argument("--note", default="")
    request.add_argument("--train", action="store_true", help="wait for approval, then train")

    commands.add_parser("requests", help="my requests and their status")
    train = commands.add_parser("train", help="wait for a request's approval, then train in its session")
    train.add_argument("request", help="e.g. REQ-3")
    train.add_argument("--timeout", type=float, default=3600.0, help="seconds to wait for approval")
    notes = commands.add_parser("notifications", help="messages from the server")
    notes.add_argument("--unread", action="store_true")
    commands.add_parser("updates", help="model versions available to this site")
    accept = commands.add_parser("accept", help="download, verify and save a model version")
    accept.add_argument("version", help="e.g. v1 or 1")
    commands.add_parser("dataset", help="local dataset summary")
    commands.add_parser("privacy", help="privacy spent (composed) versus budget")
    commands.add_parser("log", help="versions this site accepted")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    settings = load_settings()
    configure_logging(settings.log_level)
    try:
        return _run(args, settings)
    except FLError as error:
        console.print(f"[red]error:[/] {error}")
        if error.hint:
            console.print(f"[yellow]hint:[/] {error.hint}")
        return 1
    except KeyboardInterrupt:
        console.print("interrupted")
        return 130


def _run(args: argparse.Namespace, settings) -> int:  # noqa: ANN001 (Settings)
    if args.command is None:
        _parser().print_help()
        return 0
    if args.command == "setup":
        host, _, port = args.server.rpartition(":")
        profile = site_actions.setup_site(
            settings, site=args.site, token=args.token, data_root=args.data, server_host=host or "127.0.0.1",
            server_port=int(port), budget_epsilon=args.budget_epsilon, budget_delta=args.budget_delta,
            backbone_weights=args.backbone_weights)
        console.print(f"site {profile.site} set up: data {profile.data_root}, server {host}:{port}")
        return 0
    profile = load_profile(settings, args.site)
    if args.command == "request":
        dp = {"delta": args.delta or profile.budget_delta, "l2_norm_clip": args.clip}
        dp.update({"noise_multiplier": args.noise} if args.noise is not None
                  else {"target_epsilon": args.target_epsilon or 1.0})
        view = site_actions.request_training(profile, rounds=args.rounds, local_epochs=args.local_epochs,
                                             dp=dp, note=args.note)
        console.print(f"sent {view.label} ({view.state}); the admin will approve or reject it")
        if args.train:
            return _train(profile, view.label, 3600.0)
        return 0
    if args.command == "requests":
        console.print(views.requests_table(site_actions.my_requests(profile)))
    elif args.command == "train":
        return _train(profile, args.request, args.timeout)
    elif args.command == "notifications":
        console.print(views.notifications_table(site_actions.notifications(profile, unread_only=args.unread)))
    elif args.command == "updates":
        console.print(views.versions_table(site_actions.available_updates(profile)))
    elif args.command == "accept":
        path = site_actions.accept_update(profile, int(str(args.version).lstrip("vV")))
        console.print(f"saved {path} (sha256 verified)")
    elif args.command == "dataset":
        scan = site_actions.dataset_summary(profile)
        console.print(views.dataset_table(scan))
        if scan.skipped:
            console.print(views.skipped_table(scan))
    elif args.command == "privacy":
        console.print(views.privacy_table(site_actions.privacy_status(profile)))
    elif args.command == "log":
        console.print(views.version_log_table(site_actions.version_log(profile)))
    return 0


def _train(profile, request: str, timeout: float) -> int:  # noqa: ANN001 (SiteProfile)
    console.print(f"waiting for approval of {request} ...")
    ticket = site_actions.train(profile, request, approval_timeout_s=timeout,
                                progress=lambda r, e, loss, acc: console.print(
                                    f"round {r} epoch {e}: loss {loss:.3f} accuracy {acc:.1%}"))
    console.print(f"session {ticket.session_id} finished")
    return 0


if __name__ == "__main__":
    sys.exit(main())
