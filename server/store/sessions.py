"""Sessions: approval of requests into one session, its members' secrets, per-round metrics,
its ending, and the settling of sessions a crashed server left behind.

A member's secret exists only while the session is live; ending a session (or disabling the
site) wipes the nonce it is derived from. The database never holds a usable secret
(:mod:`server.store.session_secrets`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from server.store import audit_chain, session_secrets
from server.store.audit_chain import json_safe
from server.store.base import StoreBase
from server.store.lifecycle import (
    LIVE_SESSION_STATES,
    RequestState,
    SessionState,
    check_transition,
)
from server.store.models import (
    FlSession,
    Request,
    SessionMember,
    SessionRound,
    utcnow,
)
from server.store.records import (
    RoundInfo,
    SessionInfo,
    parse_request_id,
    request_label,
)
from server.store.row_records import (
    round_info,
    session_info,
)
from server.store.rows import (
    add_notification,
    attached_requests,
    end_session,
    head_row,
    move_request,
    request_row,
    session_row,
)
from shared.errors import (
    AuthError,
    IllegalTransitionError,
    StoreError,
)

ROUND_PHASES = frozenset({"fit", "evaluate"})
SESSION_ENDINGS = frozenset({SessionState.COMPLETED, SessionState.FAILED, SessionState.CANCELLED})


class SessionStore(StoreBase):
    """Approved sessions: members and their secrets, rounds, endings, crash recovery."""

    def create_session(
        self,
        request_ids: Iterable[int | str],
        *,
        config: dict[str, Any],
        actor: str = "admin",
        before_commit: Callable[[Session, FlSession], None] | None = None,
    ) -> SessionInfo:
        """Approve one or more PENDING requests (one per site) into one new STARTING session.

        ``before_commit(db_session, fl_session)`` runs inside the same transaction once the
        session and its members exist (the privacy ledger charges there); raising aborts it all.
        """
        ids = sorted({parse_request_id(r) for r in request_ids})
        if not ids:
            raise StoreError("a session needs at least one request")
        with self._write() as session:
            requests = [request_row(session, rid) for rid in ids]
            _refuse_duplicate_sites(requests)
            for row in requests:
                check_transition(request_label(row.id), row.state, RequestState.APPROVED)
            head = head_row(session)
            fl = FlSession(
                state=SessionState.STARTING,
                config=json_safe(config),
                base_version=head.number,
                created_at=utcnow(),
                reason="",
            )
            session.add(fl)
            session.flush()
            now = utcnow()
            for row in requests:
                move_request(row, RequestState.APPROVED)
                row.decided_at, row.decided_by, row.session_id = now, actor, fl.id
                fl.members.append(
                    SessionMember(
                        request_id=row.id, site=row.site, secret=session_secrets.new_nonce()
                    )
                )
                add_notification(
                    session,
                    row.site,
                    "approved",
                    f"{request_label(row.id)} was approved: session {fl.id}",
                    {"request_id": row.id, "session_id": fl.id},
                )
            session.flush()
            if before_commit is not None:
                before_commit(session, fl)
            audit_chain.append(
                session,
                actor,
                "approve",
                {
                    "session": fl.id,
                    "requests": [request_label(i) for i in ids],
                    "base_version": head.number,
                    "config": fl.config,
                },
            )
            return session_info(fl)

    def session_secret(self, session_id: int, site: str) -> str:
        """The site's secret for this session; only while the session is live."""
        with self._read() as session:
            member = session.scalars(
                select(SessionMember).where(
                    SessionMember.session_id == session_id, SessionMember.site == site
                )
            ).first()
            if member is None:
                raise AuthError(f"site '{site}' is not approved for session {session_id}")
            if member.secret is None:
                raise AuthError(
                    f"session {session_id} has ended or site '{site}' was disabled; its secret is gone"
                )
            return session_secrets.derive(self._keys.session, session_id, site, member.secret)

    def verify_session_secret(self, session_id: int, site: str, secret: str) -> bool:
        """Constant-time check that ``secret`` is ``site``'s secret for a live session."""
        with self._read() as session:
            nonce = session.scalar(
                select(SessionMember.secret).where(
                    SessionMember.session_id == session_id, SessionMember.site == site
                )
            )
        return session_secrets.matches(self._keys.session, session_id, site, nonce, secret)

    def mark_session_running(self, session_id: int, *, port: int, pid: int) -> SessionInfo:
        with self._write() as session:
            fl = session_row(session, session_id)
            check_transition(f"session {fl.id}", fl.state, SessionState.RUNNING)
            fl.state, fl.port, fl.pid, fl.started_at = SessionState.RUNNING, port, pid, utcnow()
            for row in attached_requests(session, fl):
                move_request(row, RequestState.RUNNING)
                add_notification(
                    session,
                    row.site,
                    "session_running",
                    f"session {fl.id} for {request_label(row.id)} is running on port {port}",
                    {"request_id": row.id, "session_id": fl.id, "port": port},
                )
            audit_chain.append(
                session,
                f"session-{fl.id}",
                "session_running",
                {"session": fl.id, "port": port, "pid": pid},
            )
            return session_info(fl)

    def record_round(
        self,
        session_id: int,
        *,
        round_number: int,
        phase: str,
        metrics: dict[str, Any],
        per_site: dict[str, Any] | None = None,
    ) -> None:
        """Store (or replace) one round's aggregated and per-site metrics."""
        if phase not in ROUND_PHASES:
            raise StoreError(f"phase must be one of {sorted(ROUND_PHASES)}, got {phase!r}")
        with self._write() as session:
            fl = session_row(session, session_id)
            if fl.state not in LIVE_SESSION_STATES:
                raise IllegalTransitionError(
                    f"cannot record a round of session {fl.id}: it is {fl.state.value}"
                )
            row = session.get(SessionRound, (fl.id, round_number, phase))
            if row is None:
                row = SessionRound(session_id=fl.id, round_number=round_number, phase=phase)
                session.add(row)
            row.metrics, row.per_site, row.recorded_at = (
                json_safe(metrics),
                json_safe(per_site or {}),
                utcnow(),
            )
            audit_chain.append(
                session,
                f"session-{fl.id}",
                "record_round",
                {"session": fl.id, "round": round_number, "phase": phase},
            )

    def finish_session(
        self, session_id: int, *, state: SessionState, reason: str = "", actor: str = "session"
    ) -> SessionInfo:
        """End a session as COMPLETED, FAILED or CANCELLED; its requests follow and its sites hear why."""
        state = SessionState(state)
        if state not in SESSION_ENDINGS:
            raise StoreError(
                f"a session can be finished as {sorted(s.value for s in SESSION_ENDINGS)}, not {state.value}"
            )
        with self._write() as session:
            fl = session_row(session, session_id)
            word = state.value.lower()
            message = f"session {fl.id} {word}" + (f": {reason}" if reason else "")
            end_session(session, fl, state, reason, kind=f"session_{word}", message=message)
            audit_chain.append(
                session,
                actor,
                "finish_session",
                {"session": fl.id, "state": state.value, "reason": reason},
            )
            return session_info(fl)

    def get_session(self, session_id: int) -> SessionInfo:
        with self._read() as session:
            return session_info(session_row(session, session_id))

    def list_sessions(self, *, states: Iterable[SessionState] | None = None) -> list[SessionInfo]:
        query = select(FlSession).order_by(FlSession.id)
        if states is not None:
            query = query.where(FlSession.state.in_([SessionState(s) for s in states]))
        with self._read() as session:
            return [session_info(row) for row in session.scalars(query)]

    def session_rounds(self, session_id: int) -> list[RoundInfo]:
        with self._read() as session:
            session_row(session, session_id)
            rows = session.scalars(
                select(SessionRound)
                .where(SessionRound.session_id == session_id)
                .order_by(SessionRound.round_number, SessionRound.phase)
            )
            return [round_info(row) for row in rows]

    def recover_interrupted(
        self, *, actor: str = "server", still_running: Callable[[SessionInfo], bool] | None = None
    ) -> list[SessionInfo]:
        """At server start: sessions a crash left STARTING/RUNNING become INTERRUPTED, and nothing else.

        Session processes outlive a crashed server; ``still_running`` spares the sessions whose
        process is still alive, so they go on and commit as usual.
        """
        with self._write() as session:
            live = [
                fl
                for fl in session.scalars(
                    select(FlSession)
                    .where(FlSession.state.in_(LIVE_SESSION_STATES))
                    .order_by(FlSession.id)
                ).all()
                if still_running is None or not still_running(session_info(fl))
            ]
            reason = "the server stopped while the session was live"
            for fl in live:
                end_session(
                    session,
                    fl,
                    SessionState.INTERRUPTED,
                    reason,
                    kind="session_interrupted",
                    message=f"session {fl.id} was interrupted ({reason}); the admin can re-queue your request",
                )
                audit_chain.append(session, actor, "interrupt_session", {"session": fl.id})
            return [session_info(fl) for fl in live]



def _refuse_duplicate_sites(requests: list[Request]) -> None:
    seen: dict[str, int] = {}
    for row in requests:
        if row.site in seen:
            raise StoreError(
                f"{request_label(seen[row.site])} and {request_label(row.id)} are both from site '{row.site}'",
                hint="A session takes at most one request per site; approve the other one later.",
            )
        seen[row.site] = row.id


