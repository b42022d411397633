"""``fl-server <command>``: the admin's commands (the console menu calls the same functions)."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path

from rich.console import Console

from server import admin_views as views
from server.initial_model import ensure_initial_version
from server.lifecycle import RequestState, SessionState
from server.request_socket import RequestServerThread
from server.session_manager import ApprovalOptions, SessionManager
from server.store import Store
from shared.errors import FLError, StoreError
from shared.logging_setup import configure_logging
from shared.settings import Settings, load_settings

console = Console()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fl-server", description="Admin of the federation.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    init = commands.add_parser("init", help="create the store and the initial model v0")
    _model_options(init)
    serve = commands.add_parser("serve", help="run the request socket and sessions headless")
    serve.add_argument("--on-exit", choices=("wait", "stop"), default="wait",
                       help="on Ctrl-C/SIGTERM: wait for running sessions or stop them")
    _model_options(serve)

    enrol = commands.add_parser("enrol", help="enrol a site and show its token once")
    enrol.add_argument("site")
    enrol.add_argument("--budget-epsilon", type=float, default=10.0)
    enrol.add_argument("--budget-delta", type=float, default=1e-5)
    commands.add_parser("disable", help="disable a site").add_argument("site")
    commands.add_parser("sites", help="enrolled sites")

    listing = commands.add_parser("requests", help="training requests")
    listing.add_argument("--pending", action="store_true", help="only PENDING ones")
    listing.add_argument("--site")
    approve = commands.add_parser("approve", help="approve requests into one session")
    approve.add_argument("requests", nargs="+", help="request ids, e.g. 3 4 or REQ-3")
    approve.add_argument("--rounds", type=int)
    approve.add_argument("--local-epochs", type=int)
    approve.add_argument("--mu", type=float, default=0.01, help="FedProx proximal mu (0 = FedAvg)")
    approve.add_argument("--min-clients", type=int)
    approve.add_argument("--join-timeout", type=float, default=300.0, help="seconds for sites to connect")
    approve.add_argument("--round-timeout", type=float, default=3600.0)
    approve.add_argument("--batch-size", type=int, default=16)
    approve.add_argument("--lr", type=float, default=0.05)
    approve.add_argument("--wait", action="store_true", help="block until the session ends")
    reject = commands.add_parser("reject", help="reject a request with a reason")
    reject.add_argument("request")
    reject.add_argument("--reason", required=True)
    commands.add_parser("requeue", help="put an interrupted or failed request back to PENDING").add_argument("request")

    sessions = commands.add_parser("sessions", help="sessions and their progress")
    sessions.add_argument("--active", action="store_true")
    stop = commands.add_parser("stop", help="stop a running session cleanly")
    stop.add_argument("session", type=int)
    stop.add_argument("--reason", default="stopped by the admin")

    commands.add_parser("versions", help="model versions")
    commands.add_parser("version", help="one version's lineage, rounds, privacy").add_argument("number", type=int)
    export = commands.add_parser("export", help="release a version to sites")
    export.add_argument("number", type=int)
    export.add_argument("--sites", required=True, help="comma-separated site names")
    commands.add_parser("rollback", help="make an older version the head again").add_argument("number", type=int)
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
    settings = load_settings()
    configure_logging(settings.log_level)
    if args.command is None:
        _parser().print_help()
        return 0
    try:
        store = Store.open(settings)
    except FLError as error:
        return _report(error)
    try:
        return COMMANDS[args.command](args, store, settings)
    except FLError as error:
        return _report(error)
    finally:
        store.close()


def _report(error: FLError) -> int:
    console.print(f"[red]error:[/] {error}")
    if error.hint:
        console.print(f"[yellow]hint:[/] {error.hint}")
    return 1


def _init(args: argparse.Namespace, store: Store, settings: Settings) -> int:
    version = ensure_initial_version(store, image_size=args.image_size or settings.image_size,
                                     trainable_blocks=args.trainable_blocks, seed=args.seed, weights=args.weights)
    console.print(f"store ready at {settings.database_url}; initial model {version.label} "
                  f"({version.metadata['model']['image_size']} px, {version.size_bytes / 1e6:.2f} MB)")
    return 0


def _serve(args: argparse.Namespace, store: Store, settings: Settings) -> int:
    _init(args, store, settings)
    manager = SessionManager(store, settings, on_event=lambda e: console.print(
        f"session {e.session_id} {e.state.lower()} {e.detail}"))
    for session in manager.recover():
        console.print(f"session {session.id} was interrupted by the last shutdown; its requests can be re-queued")
    manager.start()
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    with RequestServerThread(store, settings) as server:
        console.print(f"request socket on {settings.request_host}:{server.port}; sessions on ports "
                      f"{settings.session_ports.start}-{settings.session_ports.stop - 1}. Ctrl-C stops.")
        stop.wait()
    console.print(f"shutting down ({args.on_exit} for running sessions)")
    manager.shutdown(stop_running=args.on_exit == "stop")
    return 0


def _enrol(args: argparse.Namespace, store: Store, settings: Settings) -> int:
    token = store.enrol_site(args.site, budget_epsilon=args.budget_epsilon, budget_delta=args.budget_delta)
    console.print(f"enrolled {args.site}. Its token (shown only now, give it to the site):")
    console.print(token, markup=False, highlight=False)
    return 0


def _disable(args: argparse.Namespace, store: Store, settings: Settings) -> int:
    store.disable_site(args.site)
    console.print(f"site {args.site} disabled")
    return 0


def _sites(args: argparse.Namespace, store: Store, settings: Settings) -> int:
    console.print(views.sites_table(store.list_sites()))
    return 0


def _requests(args: argparse.Namespace, store: Store, settings: Settings) -> int:
    states = [RequestState.PENDING] if args.pending else None
    console.print(views.requests_table(store.list_requests(site=args.site, states=states)))
    return 0


def _approve(args: argparse.Namespace, store: Store, settings: Settings) -> int:
    options = ApprovalOptions(rounds=args.rounds, local_epochs=args.local_epochs, proximal_mu=args.mu,
                              min_clients=args.min_clients, join_timeout_s=args.join_timeout,
                              round_timeout_s=args.round_timeout, batch_size=args.batch_size,
                              learning_rate=args.lr)
    manager = SessionManager(store, settings)
    session = manager.approve(args.requests, options)
    console.print(f"approved into session {session.id} on port {session.port} "
                  f"(sites: {', '.join(session.participants)}; log {manager.session_log(session.id)})")
    if args.wait:
        session = manager.wait(session.id)
        console.print(views.sessions_table([session], {session.id: store.session_rounds(session.id)}))
        return 0 if session.state == SessionState.COMPLETED else 1
    return 0


def _reject(args: argparse.Namespace, store: Store, settings: Settings) -> int:
    if not args.reason.strip():
        raise StoreError("a rejection needs a reason", hint="The site sees it; say what to change.")
    request = store.reject_request(args.request, reason=args.reason)
    console.print(f"{request.label} rejected: {request.reason}")
    return 0


def _requeue(args: argparse.Namespace, store: Store, settings: Settings) -> int:
    request = store.requeue_request(args.request)
    console.print(f"{request.label} is {request.state.value} again")
    return 0


def _sessions(args: argparse.Namespace, store: Store, settings: Settings) -> int:
    states = [SessionState.STARTING, SessionState.RUNNING] if args.active else None
    sessions = store.list_sessions(states=states)
    console.print(views.sessions_table(sessions, {s.id: store.session_rounds(s.id) for s in sessions}))
    return 0


def _stop(args: argparse.Namespace, store: Store, settings: Settings) -> int:
    SessionManager(store, settings).stop(args.session, reason=args.reason)
    console.print(f"session {args.session} stopped")
    return 0


def _versions(args: argparse.Namespace, store: Store, settings: Settings) -> int:
    console.print(views.versions_table(store.list_versions()))
    return 0


def _version(args: argparse.Namespace, store: Store, settings: Settings) -> int:
    version = store.get_version(args.number)
    console.print(views.versions_table([version]))
    console.print(views.lineage_tree(store.list_versions()))
    if version.session_id is not None:
        console.print(views.rounds_table(store.session_rounds(version.session_id)))
    console.print(views.privacy_table(version.dp_summary))
    console.print(f"sha256 {version.sha256}  file {version.path}")
    return 0


def _export(args: argparse.Namespace, store: Store, settings: Settings) -> int:
    sites = [s.strip() for s in args.sites.split(",") if s.strip()]
    store.export_version(args.number, sites)
    console.print(f"v{args.number} released to {', '.join(sites)}")
    return 0


def _rollback(args: argparse.Namespace, store: Store, settings: Settings) -> int:
    version = store.rollback(args.number)
    console.print(f"head is now {version.label} (same weights as v{args.number})")
    return 0


def _cleanup(args: argparse.Namespace, store: Store, settings: Settings) -> int:
    report = store.cleanup(keep_last=args.keep, dry_run=not args.yes)
    console.print(views.cleanup_table(report))
    if report.dry_run:
        console.print("dry run: nothing deleted; add --yes to delete")
    return 0


def _audit(args: argparse.Namespace, store: Store, settings: Settings) -> int:
    verdict = store.verify_audit()
    console.print(("[green]" if verdict.ok else "[red]") + verdict.message)
    return 0 if verdict.ok else 1


COMMANDS = {
    "init": _init, "serve": _serve, "enrol": _enrol, "disable": _disable, "sites": _sites,
    "requests": _requests, "approve": _approve, "reject": _reject, "requeue": _requeue,
    "sessions": _sessions, "stop": _stop, "versions": _versions, "version": _version,
    "export": _export, "rollback": _rollback, "cleanup": _cleanup, "audit": _audit,
}


if __name__ == "__main__":
    sys.exit(main())
