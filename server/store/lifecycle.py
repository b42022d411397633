"""Life cycles of training requests and Flower sessions, and the only way their states change.

Every state change in the store goes through :func:`check_transition`, so a rejected request
can never be approved and a finished session can never be finished twice, whatever the caller.
"""

from __future__ import annotations

from enum import Enum

from shared.errors import IllegalTransitionError


class RequestState(str, Enum):
    """Where a site's training request stands."""

    PENDING = "PENDING"
    APPROVED = "APPROVED"
    REJECTED = "REJECTED"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    INTERRUPTED = "INTERRUPTED"
    CANCELLED = "CANCELLED"


class SessionState(str, Enum):
    """Where one Flower session process stands."""

    STARTING = "STARTING"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    INTERRUPTED = "INTERRUPTED"


_R, _S = RequestState, SessionState  # short names keep the tables readable

REQUEST_TRANSITIONS: dict[RequestState, frozenset[RequestState]] = {
    _R.PENDING: frozenset({_R.APPROVED, _R.REJECTED, _R.CANCELLED}),
    _R.APPROVED: frozenset({_R.RUNNING, _R.FAILED, _R.CANCELLED, _R.INTERRUPTED}),
    _R.RUNNING: frozenset({_R.COMPLETED, _R.FAILED, _R.CANCELLED, _R.INTERRUPTED}),
    _R.INTERRUPTED: frozenset({_R.PENDING}),
    _R.FAILED: frozenset({_R.PENDING}),
    _R.REJECTED: frozenset(),
    _R.COMPLETED: frozenset(),
    _R.CANCELLED: frozenset(),
}

SESSION_TRANSITIONS: dict[SessionState, frozenset[SessionState]] = {
    _S.STARTING: frozenset({_S.RUNNING, _S.FAILED, _S.CANCELLED, _S.INTERRUPTED}),
    _S.RUNNING: frozenset({_S.COMPLETED, _S.FAILED, _S.CANCELLED, _S.INTERRUPTED}),
    _S.COMPLETED: frozenset(),
    _S.FAILED: frozenset(),
    _S.CANCELLED: frozenset(),
    _S.INTERRUPTED: frozenset(),
}

# The verb a person would use for moving *into* a state; it makes refusals read naturally.
_VERBS: dict[str, str] = {
    "PENDING": "requeue",
    "APPROVED": "approve",
    "REJECTED": "reject",
    "STARTING": "restart",
    "RUNNING": "start",
    "COMPLETED": "complete",
    "FAILED": "fail",
    "INTERRUPTED": "interrupt",
    "CANCELLED": "cancel",
}

# What a session's end means for the requests it carries.
REQUEST_STATE_AFTER_SESSION: dict[SessionState, RequestState] = {
    _S.COMPLETED: _R.COMPLETED,
    _S.FAILED: _R.FAILED,
    _S.CANCELLED: _R.CANCELLED,
    _S.INTERRUPTED: _R.INTERRUPTED,
}

LIVE_SESSION_STATES = frozenset({_S.STARTING, _S.RUNNING})


def allowed(current: RequestState | SessionState, target: RequestState | SessionState) -> bool:
    """Whether the life cycle of ``current``'s kind lets it move to ``target``."""
    table = REQUEST_TRANSITIONS if isinstance(current, RequestState) else SESSION_TRANSITIONS
    if type(current) is not type(target):
        return False
    return target in table[current]  # type: ignore[index]


def check_transition(
    label: str,
    current: RequestState | SessionState,
    target: RequestState | SessionState,
) -> None:
    """Refuse an illegal move with a message a person can act on.

    ``label`` names the thing, e.g. ``"REQ-3"`` or ``"session 4"``; the message then reads
    ``cannot approve REQ-3: it is REJECTED``.
    """
    if not allowed(current, target):
        verb = _VERBS[target.value]
        raise IllegalTransitionError(
            f"cannot {verb} {label}: it is {current.value}",
            hint=_hint(current),
        )


def _hint(current: RequestState | SessionState) -> str:
    table = REQUEST_TRANSITIONS if isinstance(current, RequestState) else SESSION_TRANSITIONS
    nexts = sorted(_VERBS[s.value] for s in table[current])  # type: ignore[index]
    if not nexts:
        return f"{current.value} is final; nothing more can happen to it."
    return f"From {current.value} you can only: {', '.join(nexts)}."
