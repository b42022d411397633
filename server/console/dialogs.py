"""One dialog per admin menu item: ask with questionary, call ``admin_actions``, print ``admin_views``.

A dialog may raise ``KeyboardInterrupt`` (Ctrl-C) at any question; changes run inside
``deferred_interrupt`` so Ctrl-C never cuts one in half.
"""

from __future__ import annotations

from dataclasses import dataclass

from questionary import Choice
from rich.console import Console

from server.console import actions, views
from server.console.commands import approved_text, print_token
from server.console.monitor import watch
from server.console.statistics import statistics
from server.history import queries
from server.sessions.aggregation_rule import DEFAULT_TRIM_FRACTION, Aggregator
from server.sessions.manager import ApprovalOptions, SessionManager
from server.socket.request_socket import RequestServer
from server.store import Store
from server.store.records import RequestInfo, VersionInfo
from shared import prompts
from shared.errors import NotFoundError
from shared.interrupts import deferred_interrupt
from shared.plain_text import strip_control


@dataclass
class AdminContext:
    store: Store
    manager: SessionManager
    server: RequestServer
    console: Console


def show_pending(ctx: AdminContext) -> None:
    ctx.console.print(views.requests_table(actions.pending_requests(ctx.store), title="Pending requests"))


def approve(ctx: AdminContext) -> None:
    pending = actions.pending_requests(ctx.store)
    if not pending:
        ctx.console.print("no pending requests")
        return
    chosen = prompts.choose_many("Approve which requests into one session? (space selects, a = all)",
                                 [Choice(_request_title(r), value=r.label) for r in pending])
    if not chosen:
        ctx.console.print("nothing selected; nothing approved")
        return
    options = _ask_options(actions.approval_defaults(ctx.store, chosen), len(chosen))
    with deferred_interrupt():
        session = actions.approve(ctx.manager, chosen, options)
    ctx.console.print(approved_text(session, ctx.manager))
    ctx.console.print(views.approval_view(session, ctx.store.privacy_charges(session_id=session.id)))


def _request_title(r: RequestInfo) -> str:
    note = f" - {strip_control(r.note)}" if r.note else ""  # a choice label is printed raw
    return f"{r.label} {r.site}: {r.rounds} round(s) x {r.local_epochs} epoch(s), {views.dp_text(r.dp)}{note}"


#: The aggregator question's answers; the robust ones say what they cost.
_AGGREGATORS = [
    Choice("FedProx weighted mean (secure aggregation as usual)", value=Aggregator.FEDPROX.value),
    Choice("coordinate-wise trimmed mean, one vote per site (no secure aggregation: the server sees each "
           "site's update)", value=Aggregator.TRIMMED_MEAN.value),
    Choice("coordinate-wise median, one vote per site (no secure aggregation: the server sees each site's "
           "update)", value=Aggregator.MEDIAN.value),
]


def _ask_options(defaults: ApprovalOptions, requests: int) -> ApprovalOptions:
    asked = {
        "rounds": prompts.number("Rounds", defaults.rounds, int, minimum=1),
        "local_epochs": prompts.number("Local epochs per round", defaults.local_epochs, int, minimum=1),
        "proximal_mu": prompts.number("FedProx proximal mu (0 = FedAvg)", defaults.proximal_mu, float, minimum=0),
        "min_clients": prompts.number(f"Minimum clients per round (of {requests})", defaults.min_clients, int,
                                      minimum=1, maximum=requests),
        "join_timeout_s": prompts.number("Seconds the sites have to join", defaults.join_timeout_s, float, minimum=1),
        "batch_size": prompts.number("Batch size", defaults.batch_size, int, minimum=1),
    }
    aggregator = prompts.choose("How should the server combine the sites' updates?", _AGGREGATORS)
    robust: dict = {}
    if aggregator != Aggregator.FEDPROX.value:  # refused under secure aggregation: the choice says it is off
        robust = {"secure_aggregation": False}
    if aggregator == Aggregator.TRIMMED_MEAN.value:
        robust["trim_fraction"] = prompts.number("Share cut at each end of each coordinate", DEFAULT_TRIM_FRACTION,
                                                 float, minimum=0.01, maximum=0.49)
    return ApprovalOptions(**asked, aggregator=aggregator, **robust, round_timeout_s=defaults.round_timeout_s,
                           learning_rate=defaults.learning_rate)


def reject(ctx: AdminContext) -> None:
    pending = actions.pending_requests(ctx.store)
    if not pending:
        ctx.console.print("no pending requests")
        return
    request = prompts.choose("Reject which request?", [Choice(_request_title(r), value=r.label) for r in pending])
    reason = prompts.text("Reason (the site reads it)", required=True)
    with deferred_interrupt():
        rejected = actions.reject(ctx.store, request, reason)
    ctx.console.print(f"{rejected.label} rejected: {rejected.reason}")


def active_sessions(ctx: AdminContext) -> None:
    try:
        watch(ctx.console, lambda: views.live_sessions_table(actions.session_progress(ctx.store, active_only=True)))
    except KeyboardInterrupt:
        pass  # Ctrl-C is how one leaves a live view; not a cancellation


def history(ctx: AdminContext) -> None:
    ctx.console.print(views.history_view(*actions.history(ctx.store)))


def versions(ctx: AdminContext) -> None:
    ctx.console.print(views.versions_table(ctx.store.list_versions()))


def version_details(ctx: AdminContext) -> None:
    number = _pick_version(ctx, "Details of which version?", ctx.store.list_versions())
    ctx.console.print(views.version_details_view(queries.version_details(ctx.store, number)))


def export(ctx: AdminContext) -> None:
    number = _pick_version(ctx, "Release which version?", [v for v in ctx.store.list_versions() if v.has_weights])
    sites = prompts.choose_many("To which sites?", [Choice(s.name) for s in ctx.store.list_sites() if s.enabled])
    if not sites:
        ctx.console.print("no site selected; nothing released")
        return
    with deferred_interrupt():
        ctx.store.export_version(number, sites)
    ctx.console.print(f"v{number} released to {', '.join(sites)}")


def stats(ctx: AdminContext) -> None:
    ctx.console.print(views.statistics_view(statistics(ctx.store)))


def cleanup(ctx: AdminContext) -> None:
    keep = prompts.number("Keep the last how many versions?", 5, int, minimum=0)
    preview = actions.cleanup(ctx.store, keep_last=keep, confirmed=False)
    ctx.console.print(views.cleanup_table(preview))
    if not preview.files:
        ctx.console.print("nothing to clean up")
        return
    if not prompts.confirm(f"Delete {len(preview.files)} file(s), freeing {preview.freed_bytes / 1e6:.2f} MB?"):
        ctx.console.print("nothing deleted")
        return
    with deferred_interrupt():
        done = actions.cleanup(ctx.store, keep_last=keep, confirmed=True)
    ctx.console.print(views.cleanup_table(done))


def enrol(ctx: AdminContext) -> None:
    site = prompts.text("Site name", required=True)
    budget = prompts.number("Privacy budget: max epsilon", 10.0, float, minimum=0.001)
    delta = prompts.number("Privacy budget: delta", 1e-5, float, minimum=1e-12)
    with deferred_interrupt():
        token = ctx.store.enrol_site(site, budget_epsilon=budget, budget_delta=delta)
    print_token(ctx.console, site, token)


def disable(ctx: AdminContext) -> None:
    enabled = [s.name for s in ctx.store.list_sites() if s.enabled]
    if not enabled:
        ctx.console.print("no enabled site")
        return
    site = prompts.choose("Disable which site?", enabled)
    if prompts.confirm(f"Disable {site}? It can no longer send requests or download versions."):
        with deferred_interrupt():
            actions.disable_site(ctx.store, site, ctx.server)
        ctx.console.print(f"site {site} disabled")


def rollback(ctx: AdminContext) -> None:
    head = ctx.store.head()
    older = [v for v in ctx.store.list_versions() if v.has_weights and v.number != head.number]
    if not older:
        ctx.console.print(f"nothing to roll back to: {head.label} is the only version with weights")
        return
    number = _pick_version(ctx, f"Head is {head.label}. Make which version the head again?", older)
    if prompts.confirm(f"Roll back to v{number}? (a new version with its weights becomes the head)"):
        with deferred_interrupt():
            version = ctx.store.rollback(number)
        ctx.console.print(f"head is now {version.label} (same weights as v{number})")


def _pick_version(ctx: AdminContext, message: str, versions: list[VersionInfo]) -> int:
    if not versions:
        raise NotFoundError("no version to choose from")
    choices = [Choice(f"{v.label} {v.kind} {', '.join(v.participants)}".rstrip(), value=str(v.number))
               for v in reversed(versions)]
    return int(prompts.choose(message, choices))
