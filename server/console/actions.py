"""What the admin can do, as plain functions: the console menu and the subcommands both call these.

Each function takes the store (and the session manager or the in-process request socket where
it needs them) and returns records; rendering is ``admin_views``' job, so both entry points show
the same tables.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path

from server.sessions.initial_model import ensure_initial_version
from server.sessions.manager import (
    ACTIVE_STATES,
    ApprovalOptions,
    SessionEvent,
    SessionManager,
)
from server.socket.request_socket import RequestServer
from server.store import Store
from server.store.lifecycle import RequestState
from server.store.records import (
    CleanupReport,
    RequestInfo,
    RoundInfo,
    SessionInfo,
)
from shared.errors import StoreError
from shared.settings import Settings


@dataclass(frozen=True)
class ModelChoice:
    """How v0 is built when the store has none yet."""

    image_size: int
    trainable_blocks: int = 0
    seed: int = 0
    weights: Path | None = None


@dataclass(frozen=True)
class SessionProgress:
    """A session with its recorded rounds (what the live display and the history show)."""

    session: SessionInfo
    rounds: list[RoundInfo]


def pending_requests(store: Store) -> list[RequestInfo]:
    return store.list_requests(states=[RequestState.PENDING])


def approval_defaults(store: Store, request_ids: Iterable[int | str]) -> ApprovalOptions:
    """The fewest rounds any request asked for (no site trains more rounds than it asked), the most
    epochs (a cap: each site trains at most its own), one client per request."""
    requests = [store.get_request(r) for r in request_ids]
    if not requests:
        raise StoreError("choose at least one request to approve")
    return replace(ApprovalOptions(), rounds=min(r.rounds for r in requests),
                   local_epochs=max(r.local_epochs for r in requests), min_clients=len(requests))


def approve(manager: SessionManager, request_ids: list[int | str], options: ApprovalOptions) -> SessionInfo:
    """Approve the requests into one new session and spawn its process."""
    if not request_ids:
        raise StoreError("choose at least one request to approve")
    return manager.approve(request_ids, options)


def reject(store: Store, request_id: int | str, reason: str) -> RequestInfo:
    """Reject with a reason the site will read (an empty one is refused)."""
    if not reason.strip():
        raise StoreError("a rejection needs a reason", hint="The site sees it; say what to change.")
    return store.reject_request(request_id, reason=reason.strip())


def disable_site(store: Store, site: str, server: RequestServer | None = None) -> int:
    """Disable a site and revoke its live session secrets (returns how many); an in-process
    request socket forgets its cached login at once."""
    revoked = store.disable_site(site)
    if server is not None:
        server.forget_site(site)
    return revoked


def session_progress(store: Store, *, active_only: bool) -> list[SessionProgress]:
    sessions = store.list_sessions(states=ACTIVE_STATES if active_only else None)
    return [SessionProgress(s, store.session_rounds(s.id)) for s in sessions]


def history(store: Store) -> tuple[list[RequestInfo], list[SessionProgress]]:
    """Every request that was decided (or is still waiting) and every session with its outcome."""
    return store.list_requests(), session_progress(store, active_only=False)


def cleanup(store: Store, *, keep_last: int, confirmed: bool) -> CleanupReport:
    """Without ``confirmed`` only report what would be freed."""
    return store.cleanup(keep_last=keep_last, dry_run=not confirmed)


def parse_sites(text: str) -> list[str]:
    """``"a, b"`` -> ``["a", "b"]``; an empty list is refused."""
    sites = [s.strip() for s in text.split(",") if s.strip()]
    if not sites:
        raise StoreError("name at least one site", hint="Separate site names with commas.")
    return sites


def start_serving(store: Store, settings: Settings, *, on_event: Callable[[SessionEvent], None],
                  model: ModelChoice | None = None) -> tuple[SessionManager, list[SessionInfo]]:
    """What ``serve`` and the console do first: make sure v0 exists, settle sessions the last
    server left behind, and start watching session processes. Returns the interrupted sessions."""
    model = model or ModelChoice(image_size=settings.image_size)
    ensure_initial_version(store, image_size=model.image_size, trainable_blocks=model.trainable_blocks,
                           seed=model.seed, weights=model.weights)
    manager = SessionManager(store, settings, on_event=on_event)
    interrupted = manager.recover()
    manager.start()
    return manager, interrupted
