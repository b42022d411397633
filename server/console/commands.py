"""The ``fl-server`` subcommands: parsed arguments in, ``admin_actions`` called, ``admin_views`` printed.

Every handler returns the exit status; errors are ``FLError`` and ``cli.main`` prints them.
"""

from __future__ import annotations

import argparse
import signal
import threading
from collections.abc import Callable

from rich.console import Console

from server.console import actions, views
from server.console.monitor import watch
from server.console.statistics import statistics
from server.history.queries import version_details
from server.sessions.manager import ApprovalOptions, SessionEvent, SessionManager
from server.socket.request_socket import RequestServerThread
from server.store import Store
from server.store.lifecycle import RequestState, SessionState
from server.store.records import SessionInfo
from shared.settings import Settings
from shared.terminal import make_console

console = make_console()

Handler = Callable[[argparse.Namespace, Store, Settings], int]


def model_choice(args: argparse.Namespace, settings: Settings) -> actions.ModelChoice:
    return actions.ModelChoice(image_size=args.image_size or settings.image_size,
                               trainable_blocks=args.trainable_blocks, seed=args.seed, weights=args.weights)


def event_notice(event: SessionEvent) -> str:
    """One line about a session that ended (``serve`` prints it, the console queues it)."""
    return f"session {event.session_id} {event.state.lower()}" + (f": {event.detail}" if event.detail else "")


def _init(args: argparse.Namespace, store: Store, settings: Settings) -> int:
    from server.sessions.initial_model import ensure_initial_version

    choice = model_choice(args, settings)
    version = ensure_initial_version(store, image_size=choice.image_size, trainable_blocks=choice.trainable_blocks,
                                     seed=choice.seed, weights=choice.weights)
    console.print(f"store ready at {settings.database_url}; initial model {version.label} "
                  f"({version.metadata['model']['image_size']} px, {version.size_bytes / 1e6:.2f} MB)")
    return 0


def _serve(args: argparse.Namespace, store: Store, settings: Settings) -> int:
    manager, interrupted = actions.start_serving(store, settings, model=model_choice(args, settings),
                                                 on_event=lambda e: console.print(event_notice(e)))
    for session in interrupted:
        console.print(f"session {session.id} was interrupted by the last shutdown; its requests can be re-queued")
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
    print_token(console, args.site, token)
    return 0


def print_token(out: Console, site: str, token: str) -> None:
    """The token once, and the set-up line with ``--token=`` (a token may start with '-')."""
    out.print(f"enrolled {site}. Its token (shown only now, give it to the site):")
    out.print(f"token: {token}", markup=False, soft_wrap=True)
    out.print(f"the site runs: fl-client --site {site} setup --token={token} --data FOLDER", markup=False,
              soft_wrap=True)


def _disable(args: argparse.Namespace, store: Store, settings: Settings) -> int:
    actions.disable_site(store, args.site)
    console.print(f"site {args.site} disabled (a running server refuses it within 30 s)")
    return 0


def _reset_identity_key(args: argparse.Namespace, store: Store, settings: Settings) -> int:
    if store.reset_identity_key(args.site):
        console.print(f"identity key of {args.site} forgotten; the site registers a new one with "
                      f"fl-client --site {args.site} setup", markup=False)
    else:
        console.print(f"site {args.site} has no registered identity key", markup=False)
    return 0


def _sites(args: argparse.Namespace, store: Store, settings: Settings) -> int:
    console.print(views.sites_table(store.list_sites()))
    return 0


def _requests(args: argparse.Namespace, store: Store, settings: Settings) -> int:
    states = [RequestState.PENDING] if args.pending else None
    console.print(views.requests_table(store.list_requests(site=args.site, states=states)))
    return 0


def approval_options(args: argparse.Namespace, store: Store) -> ApprovalOptions:
    defaults = actions.approval_defaults(store, args.requests)
    return ApprovalOptions(rounds=args.rounds or defaults.rounds,
                           local_epochs=args.local_epochs or defaults.local_epochs,
                           proximal_mu=args.mu, min_clients=args.min_clients or defaults.min_clients,
                           join_timeout_s=args.join_timeout, round_timeout_s=args.round_timeout,
                           batch_size=args.batch_size, learning_rate=args.lr,
                           secure_aggregation=args.secure_aggregation, secagg_threshold=args.secagg_threshold)


def approved_text(session: SessionInfo, manager: SessionManager) -> str:
    secure = session.config.get("secure_aggregation")
    masking = f"secure aggregation on, threshold {session.config.get('secagg_threshold')}" if secure else "plain"
    return (f"approved into session {session.id} on port {session.port} "
            f"(sites: {', '.join(session.participants)}; {masking}; log {manager.session_log(session.id)})")


def _approve(args: argparse.Namespace, store: Store, settings: Settings) -> int:
    options = approval_options(args, store)
    manager = SessionManager(store, settings)
    session = actions.approve(manager, args.requests, options)
    console.print(approved_text(session, manager))
    if not args.wait:
        return 0
    session = manager.wait(session.id)
    console.print(views.sessions_table([actions.SessionProgress(session, store.session_rounds(session.id))]))
    return 0 if session.state == SessionState.COMPLETED else 1


def _reject(args: argparse.Namespace, store: Store, settings: Settings) -> int:
    request = actions.reject(store, args.request, args.reason)
    console.print(f"{request.label} rejected: {request.reason}")
    return 0


def _requeue(args: argparse.Namespace, store: Store, settings: Settings) -> int:
    request = store.requeue_request(args.request)
    console.print(f"{request.label} is {request.state.value} again")
    return 0


def _sessions(args: argparse.Namespace, store: Store, settings: Settings) -> int:
    if args.watch:
        try:
            watch(console, lambda: views.live_sessions_table(actions.session_progress(store, active_only=True)))
        except KeyboardInterrupt:
            pass
        return 0
    console.print(views.sessions_table(actions.session_progress(store, active_only=args.active)))
    return 0


def _stop(args: argparse.Namespace, store: Store, settings: Settings) -> int:
    SessionManager(store, settings).stop(args.session, reason=args.reason)
    console.print(f"session {args.session} stopped")
    return 0


def _history(args: argparse.Namespace, store: Store, settings: Settings) -> int:
    console.print(views.history_view(*actions.history(store)))
    return 0


def _stats(args: argparse.Namespace, store: Store, settings: Settings) -> int:
    console.print(views.statistics_view(statistics(store)))
    return 0


def _versions(args: argparse.Namespace, store: Store, settings: Settings) -> int:
    console.print(views.versions_table(store.list_versions()))
    return 0


def _version(args: argparse.Namespace, store: Store, settings: Settings) -> int:
    console.print(views.version_details_view(version_details(store, args.number)))
    return 0


def _export(args: argparse.Namespace, store: Store, settings: Settings) -> int:
    sites = actions.parse_sites(args.sites)
    store.export_version(args.number, sites)
    console.print(f"v{args.number} released to {', '.join(sites)}")
    return 0


def _rollback(args: argparse.Namespace, store: Store, settings: Settings) -> int:
    version = store.rollback(args.number)
    console.print(f"head is now {version.label} (same weights as v{args.number})")
    return 0


def _cleanup(args: argparse.Namespace, store: Store, settings: Settings) -> int:
    report = actions.cleanup(store, keep_last=args.keep, confirmed=args.yes)
    console.print(views.cleanup_table(report))
    if report.dry_run:
        console.print("dry run: nothing deleted; add --yes to delete")
    return 0


def _audit(args: argparse.Namespace, store: Store, settings: Settings) -> int:
    verdict = store.verify_audit()
    console.print(("[green]" if verdict.ok else "[red]") + verdict.message)
    return 0 if verdict.ok else 1


COMMANDS: dict[str, Handler] = {
    "init": _init, "serve": _serve, "enrol": _enrol, "disable": _disable, "sites": _sites,
    "requests": _requests, "approve": _approve, "reject": _reject, "requeue": _requeue,
    "sessions": _sessions, "stop": _stop, "history": _history, "stats": _stats, "versions": _versions,
    "version": _version, "export": _export, "rollback": _rollback, "cleanup": _cleanup, "audit": _audit,
    "reset-identity-key": _reset_identity_key,
}
