"""Training requests: a site queues one as PENDING; the admin approves (see sessions), rejects or
re-queues it; the site may cancel it while it is still PENDING. Every move is checked against
:mod:`server.store.lifecycle` and audited in the same transaction.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from server.store import audit_chain
from server.store.audit_chain import json_safe
from server.store.base import StoreBase
from server.store.lifecycle import (
    RequestState,
)
from server.store.models import (
    Request,
    utcnow,
)
from server.store.records import (
    RequestInfo,
    request_label,
)
from server.store.row_records import (
    request_info,
)
from server.store.rows import (
    add_notification,
    move_request,
    request_row,
    site_row,
)
from shared.errors import (
    AuthError,
    IllegalTransitionError,
    StoreError,
)


class RequestStore(StoreBase):
    """Training requests from sites, from PENDING to a decision."""

    def submit_request(
        self, site: str, *, rounds: int, local_epochs: int, dp: dict[str, Any], note: str = "",
        max_pending: int | None = None,
        declaration: dict[str, Any] | None = None,
    ) -> RequestInfo:
        """Queue a site's training request as PENDING; nothing trains until the admin approves.

        With ``max_pending``, a site that already has that many PENDING requests is refused
        (checked inside the write transaction, so concurrent submits cannot overshoot).
        ``declaration``: the site's example count and budget (``protocol.DataDeclaration``).
        """
        if rounds < 1 or local_epochs < 1:
            raise StoreError(
                f"rounds and local_epochs must be at least 1 (got {rounds}, {local_epochs})"
            )
        if not isinstance(dp, dict):
            raise StoreError("dp must be a mapping of DP settings")
        with self._write() as session:
            if not site_row(session, site).enabled:
                raise AuthError(
                    f"site '{site}' is disabled", hint="Ask the admin to re-enable the site."
                )
            if max_pending is not None:
                _refuse_past_pending_cap(session, site, max_pending)
            row = Request(
                site=site,
                state=RequestState.PENDING,
                rounds=rounds,
                local_epochs=local_epochs,
                dp=json_safe(dp),
                declaration=json_safe(declaration or {}),
                note=note,
                created_at=utcnow(),
                reason="",
            )
            session.add(row)
            session.flush()
            audit_chain.append(
                session,
                site,
                "submit_request",
                {"request": request_label(row.id), "rounds": rounds, "local_epochs": local_epochs},
            )
            return request_info(row)

    def get_request(self, request_id: int | str) -> RequestInfo:
        with self._read() as session:
            return request_info(request_row(session, request_id))

    def list_requests(
        self, *, site: str | None = None, states: Iterable[RequestState] | None = None
    ) -> list[RequestInfo]:
        query = select(Request).order_by(Request.id)
        if site is not None:
            query = query.where(Request.site == site)
        if states is not None:
            query = query.where(Request.state.in_([RequestState(s) for s in states]))
        with self._read() as session:
            return [request_info(row) for row in session.scalars(query)]

    def cancel_request(self, request_id: int | str, *, site: str) -> RequestInfo:
        """A site withdraws its own request while it is still PENDING."""
        with self._write() as session:
            row = request_row(session, request_id)
            label = request_label(row.id)
            if row.site != site:
                raise AuthError(f"{label} is not a request of site '{site}'")
            if row.state is not RequestState.PENDING:
                raise IllegalTransitionError(
                    f"cannot cancel {label}: it is {row.state.value}",
                    hint="Only a pending request can be cancelled; ask the admin to stop its session.",
                )
            move_request(row, RequestState.CANCELLED)
            row.decided_at, row.decided_by = utcnow(), site
            audit_chain.append(session, site, "cancel_request", {"request": label})
            return request_info(row)

    def reject_request(
        self, request_id: int | str, *, reason: str, actor: str = "admin"
    ) -> RequestInfo:
        if not reason.strip():
            raise StoreError(
                "a rejection needs a reason", hint="The site sees the reason; say what to change."
            )
        with self._write() as session:
            row = request_row(session, request_id)
            label = request_label(row.id)
            move_request(row, RequestState.REJECTED)
            row.decided_at, row.decided_by, row.reason = utcnow(), actor, reason
            add_notification(
                session,
                row.site,
                "rejected",
                f"{label} was rejected: {reason}",
                {"request_id": row.id, "reason": reason},
            )
            audit_chain.append(session, actor, "reject_request", {"request": label, "reason": reason})
            return request_info(row)

    def requeue_request(self, request_id: int | str, *, actor: str = "admin") -> RequestInfo:
        """Put an INTERRUPTED or FAILED request back in the queue; its old session stays in history."""
        with self._write() as session:
            row = request_row(session, request_id)
            label = request_label(row.id)
            move_request(row, RequestState.PENDING)
            row.session_id = None
            row.decided_at, row.decided_by, row.reason = None, None, ""
            add_notification(
                session,
                row.site,
                "requeued",
                f"{label} is back in the queue",
                {"request_id": row.id},
            )
            audit_chain.append(session, actor, "requeue_request", {"request": label})
            return request_info(row)


def _refuse_past_pending_cap(session: Session, site: str, max_pending: int) -> None:
    pending = session.scalar(
        select(func.count()).select_from(Request).where(
            Request.site == site, Request.state == RequestState.PENDING
        )
    )
    if pending is not None and pending >= max_pending:
        raise IllegalTransitionError(
            f"site '{site}' already has {pending} pending requests (the limit is {max_pending})",
            hint="Wait for the admin to decide, or cancel a pending request first.",
        )
