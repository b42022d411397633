"""The ``fl-server`` subcommands: parsed arguments in, ``admin_actions`` called, ``admin_views`` printed.

Every handler returns the exit status; errors are ``FLError`` and ``cli.main`` prints them.
"""

from __future__ import annotations

import argparse
import json
import signal
import threading
from collections.abc import Callable
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from server.console import actions, views
from server.console.monitor import watch
from server.console.statistics import statistics
from server.history.privacy_views import ledger_view
from server.history.queries import version_details
from server.sessions.aggregation_rule import AggregationRule
from server.sessions.manager import ApprovalOptions, SessionEvent, SessionManager
from server.socket.request_socket import RequestServerThread
from server.store import Store
from server.store.audit_chain import AuditHead
from server.store.lifecycle import RequestState, SessionState
from server.store.records import SessionInfo
from shared.certificates import issue_site_certificate
from shared.errors import SessionFailedError, UsageError
from shared.progress import ProgressDisplay
from shared.settings import Settings
from shared.terminal import make_console, print_unwrapped

console = make_console()

Handler = Callable[[argparse.Namespace, Store, Settings], int]


def model_choice(args: argparse.Namespace, settings: Settings) -> actions.ModelChoice:
    return actions.ModelChoice(image_size=args.image_size or settings.image_size,
                               trainable_blocks=args.trainable_blocks, seed=args.seed, weights=args.weights)


def event_notice(event: SessionEvent) -> str:
    """One line about a session that ended (``serve`` prints it, the console queues it), as Rich
    markup with the detail escaped: it may quote session log lines, i.e. text a client chose."""
    return f"session {event.session_id} {event.state.lower()}" + (f": {escape(event.detail)}" if event.detail else "")


def _init(args: argparse.Namespace, store: Store, settings: Settings) -> int:
    from server.sessions.initial_model import ensure_initial_version

    choice = model_choice(args, settings)
    with console.status("building the initial model (ResNet50) ..."):
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
    token = store.enrol_site(args.site, budget_epsilon=args.budget_epsilon, budget_delta=args.budget_delta,
                             allow_no_dp=args.allow_no_dp)
    print_token(console, args.site, token)
    if args.issue_cert is not None:
        site_cert = issue_site_certificate(args.issue_cert, args.site)
        console.print(f"client certificate {site_cert.cert} and key {site_cert.key} (give both to {args.site} only; "
                      f"the site adds --tls-cert and --tls-key to its setup)", markup=False)
    return 0


def print_token(out: Console, site: str, token: str, *, verb: str = "enrolled") -> None:
    """The token once, and the set-up line, which reads the token from a prompt, not from argv."""
    out.print(f"{verb} {site}. Its token (shown only now, give it to the site):")
    out.print(f"token: {token}", markup=False, soft_wrap=True)
    out.print(f"the site runs: fl-client --site {site} setup --data FOLDER (and types or pipes the token; "
              "--token-file FILE reads it from a file)", markup=False, soft_wrap=True)


def _disable(args: argparse.Namespace, store: Store, settings: Settings) -> int:
    revoked = actions.disable_site(store, args.site)
    console.print(f"site {args.site} disabled (a running server refuses it within 30 s); "
                  f"its secret in {revoked} live session(s) revoked")
    return 0


def _enable(args: argparse.Namespace, store: Store, settings: Settings) -> int:
    store.enable_site(args.site)
    console.print(f"site {args.site} enabled again (sessions it was revoked from stay closed to it)")
    return 0


def _rotate_token(args: argparse.Namespace, store: Store, settings: Settings) -> int:
    token = store.rotate_token(args.site)
    print_token(console, args.site, token, verb="new token for")
    console.print("the old token stops working at once here, within 30 s on a running server")
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
                           secure_aggregation=args.secure_aggregation, secagg_threshold=args.secagg_threshold,
                           aggregator=args.aggregator, trim_fraction=args.trim_fraction,
                           max_update_norm=args.max_update_norm)


def approved_text(session: SessionInfo, manager: SessionManager) -> str:
    secure = session.config.get("secure_aggregation")
    masking = f"secure aggregation on, threshold {session.config.get('secagg_threshold')}" if secure else "plain"
    rule = AggregationRule.from_config(session.config)
    combined = f"; {rule.describe()}" if rule.robust else ""
    return (f"approved into session {session.id} on port {session.port} "
            f"(sites: {', '.join(session.participants)}; {masking}{combined}; log {manager.session_log(session.id)})")


def _approve(args: argparse.Namespace, store: Store, settings: Settings) -> int:
    options = approval_options(args, store)
    manager = SessionManager(store, settings)
    session = actions.approve(manager, args.requests, options)
    print_unwrapped(console, approved_text(session, manager))  # it ends with the session log's path
    console.print(views.approval_view(session, store.privacy_charges(session_id=session.id)))
    if not args.wait:
        return 0
    session = _wait_showing_rounds(manager, store, session)
    console.print(views.sessions_table([actions.SessionProgress(session, store.session_rounds(session.id))]))
    return 0 if session.state == SessionState.COMPLETED else 1


def _wait_showing_rounds(manager: SessionManager, store: Store, session: SessionInfo) -> SessionInfo:
    """``manager.wait`` with a rounds bar (plain lines in a pipe), refreshed every 2 s."""
    total = int(session.config.get("rounds", 1))
    with ProgressDisplay(console) as display:
        while True:
            try:
                return manager.wait(session.id, timeout_s=2.0)
            except SessionFailedError:  # not over yet
                done = len({r.round_number for r in store.session_rounds(session.id) if r.phase == "fit"})
                display.update(f"session {session.id}", done, total, "rounds")


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


def _privacy(args: argparse.Namespace, store: Store, settings: Settings) -> int:
    console.print(ledger_view(store.privacy_charges(), store.list_sites()))
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
    """Verify the keyed chain; ``--against FILE`` also checks a head exported earlier is still
    there, ``--export-head FILE`` writes today's head (after a successful check) for safekeeping."""
    expected = _read_head(args.against) if args.against else None
    verdict = store.verify_audit(expected)
    console.print(("[green]" if verdict.ok else "[red]") + escape(verdict.message))
    if args.against and verdict.ok:
        console.print(f"the log still holds row {expected.row_id} as exported in {args.against}", markup=False)
    if args.export_head and verdict.ok:
        head = store.audit_head()
        args.export_head.write_text(json.dumps(head.as_json(), indent=2) + "\n")
        console.print(f"head (row {head.row_id}) written to {args.export_head}: keep a copy off this machine",
                      markup=False)
    return 0 if verdict.ok else 1


def _analyst_token(args: argparse.Namespace, store: Store, settings: Settings) -> int:
    if args.token_action == "create":
        analyst, token = store.create_analyst_token(args.name)
        console.print(f"analyst token for {analyst.name} (shown only now; it opens the dashboard):")
        console.print(f"token: {token}", markup=False, soft_wrap=True)
    elif args.token_action == "revoke":
        revoked = store.revoke_analyst_token(args.name)
        console.print(f"revoked {len(revoked)} token(s) of {args.name}; the dashboard refuses them now")
    else:
        console.print(views.analyst_tokens_table(store.list_analyst_tokens()))
    return 0


def _read_head(path: Path) -> AuditHead:
    try:
        return AuditHead.from_json(json.loads(path.read_text()))
    except (OSError, ValueError) as exc:
        raise UsageError(f"{path} is not an exported audit head: {exc}",
                         hint="Use a file written by `fl-server audit --export-head FILE`.") from None


COMMANDS: dict[str, Handler] = {
    "init": _init, "serve": _serve, "enrol": _enrol, "disable": _disable, "enable": _enable,
    "rotate-token": _rotate_token, "sites": _sites,
    "requests": _requests, "approve": _approve, "reject": _reject, "requeue": _requeue,
    "sessions": _sessions, "stop": _stop, "history": _history, "stats": _stats, "privacy": _privacy,
    "versions": _versions,
    "version": _version, "export": _export, "rollback": _rollback, "cleanup": _cleanup, "audit": _audit,
    "analyst-token": _analyst_token,
    "reset-identity-key": _reset_identity_key,
}
