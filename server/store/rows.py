"""Row access shared by the store's concerns: look rows up by key (with a clear NotFoundError),
move requests and sessions between states, and queue notifications, all inside the caller's
transaction.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from server.store.audit_chain import json_safe
from server.store.lifecycle import (
    REQUEST_STATE_AFTER_SESSION,
    RequestState,
    SessionState,
    check_transition,
)
from server.store.models import (
    FlSession,
    Notification,
    Request,
    Site,
    Version,
    utcnow,
)
from server.store.records import (
    parse_request_id,
    request_label,
)
from shared.errors import (
    NotFoundError,
)


def site_row(session: Session, name: str) -> Site:
    row = session.get(Site, name)
    if row is None:
        raise NotFoundError(f"no site '{name}'", hint="Enrol the site first.")
    return row


def request_row(session: Session, request_id: int | str) -> Request:
    number = parse_request_id(request_id)
    row = session.get(Request, number)
    if row is None:
        raise NotFoundError(f"no request {request_label(number)}")
    return row


def session_row(session: Session, session_id: int) -> FlSession:
    row = session.get(FlSession, session_id)
    if row is None:
        raise NotFoundError(f"no session {session_id}")
    return row


def version_row(session: Session, number: int) -> Version:
    row = session.get(Version, number)
    if row is None:
        raise NotFoundError(f"no version v{number}")
    return row


def head_row(session: Session) -> Version:
    row = session.scalars(select(Version).order_by(Version.number.desc()).limit(1)).first()
    if row is None:
        raise NotFoundError(
            "there is no model version yet", hint="The server creates v0 when it first starts."
        )
    return row


def require_weights(number: int, present: bool) -> None:
    if not present:
        raise NotFoundError(f"the weights of v{number} were removed by clean-up")




def move_request(row: Request, target: RequestState) -> None:
    check_transition(request_label(row.id), row.state, target)
    row.state = target




def attached_requests(session: Session, fl: FlSession) -> list[Request]:
    """The session's requests that still belong to it (a re-queued request has moved on)."""
    ids = [m.request_id for m in fl.members]
    return list(
        session.scalars(
            select(Request)
            .where(Request.id.in_(ids), Request.session_id == fl.id)
            .order_by(Request.id)
        )
    )


def end_session(
    session: Session,
    fl: FlSession,
    state: SessionState,
    reason: str,
    *,
    kind: str,
    message: str,
    payload: dict[str, Any] | None = None,
) -> None:
    """Move a session and its requests to a final state, wipe its secrets, tell its sites."""
    check_transition(f"session {fl.id}", fl.state, state)
    fl.state, fl.reason, fl.ended_at = state, reason, utcnow()
    for member in fl.members:
        member.secret = None
    for row in attached_requests(session, fl):
        move_request(row, REQUEST_STATE_AFTER_SESSION[state])
        row.reason = reason
        add_notification(
            session,
            row.site,
            kind,
            message,
            {"request_id": row.id, "session_id": fl.id, "reason": reason, **(payload or {})},
        )


def add_notification(session: Session, site: str, kind: str, message: str, payload: dict[str, Any]) -> None:
    session.add(
        Notification(
            site=site, kind=kind, message=message, payload=json_safe(payload), created_at=utcnow()
        )
    )


