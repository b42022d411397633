"""The store: the one API through which the socket, the sessions, the menus and analysts share state.

Every method runs in its own short transaction and returns frozen records (never ORM objects).
Write methods hold the database-wide write lock (see :mod:`server.db`) for their whole
transaction, so read-check-write sequences (state transitions, version numbers, the audit chain)
cannot interleave between processes. Each admin and session action appends its audit row inside
the same transaction as the change, so the log never disagrees with the data.
"""

from __future__ import annotations

import hmac
import re
import secrets
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from server import audit_log, db, site_tokens
from server.audit_log import json_safe
from server.lifecycle import (
    LIVE_SESSION_STATES,
    REQUEST_STATE_AFTER_SESSION,
    RequestState,
    SessionState,
    check_transition,
)
from server.models import (
    AuditRow,
    Download,
    FlSession,
    Notification,
    Release,
    Request,
    SessionMember,
    SessionRound,
    Site,
    Version,
    utcnow,
)
from server.records import (
    AuditEntry,
    AuditVerdict,
    CleanupReport,
    NotificationInfo,
    RequestInfo,
    RoundInfo,
    SessionInfo,
    SiteInfo,
    VersionInfo,
    parse_request_id,
    request_label,
)
from server.version_merge import DEFAULT_ALPHA, merge_weights
from shared import weights_io
from shared.errors import (
    AuthError,
    DuplicateError,
    IllegalTransitionError,
    NotFoundError,
    StoreError,
)
from shared.settings import Settings

SITE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
ROUND_PHASES = frozenset({"fit", "evaluate"})
SESSION_ENDINGS = frozenset({SessionState.COMPLETED, SessionState.FAILED, SessionState.CANCELLED})
_VERSION_FILE = re.compile(r"^v\d+\.npz$")


class Store:
    """Repository facade over the database and the versions folder."""

    def __init__(self, database: db.Database, versions_dir: Path) -> None:
        self._db = database
        self._engine = database.engine
        self.versions_dir = versions_dir
        self.readonly = database.readonly

    @classmethod
    def open(cls, settings: Settings, *, readonly: bool = False) -> Store:
        """Open the store; a writable one creates missing folders and tables first."""
        if readonly:
            return cls(
                db.Database(db.open_readonly(settings.database_url), readonly=True),
                settings.versions_dir,
            )
        db_file = db.sqlite_file(settings.database_url)
        if db_file is not None:
            db_file.parent.mkdir(parents=True, exist_ok=True)
        settings.versions_dir.mkdir(parents=True, exist_ok=True)
        store = cls(
            db.Database(db.create_store_engine(settings.database_url), readonly=False),
            settings.versions_dir,
        )
        store._db.create_schema()
        return store

    def close(self) -> None:
        self._db.dispose()

    def _read(self) -> AbstractContextManager[Session]:
        return self._db.read()

    def _write(self) -> AbstractContextManager[Session]:
        return self._db.write()

    # ------------------------------------------------------------------ sites

    def enrol_site(
        self,
        name: str,
        *,
        budget_epsilon: float = 10.0,
        budget_delta: float = 1e-5,
        actor: str = "admin",
    ) -> str:
        """Register a site and return its token; only a salted hash is kept, so show it now or never."""
        if not SITE_NAME.match(name):
            raise StoreError(
                f"invalid site name {name!r}",
                hint="Use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit.",
            )
        if not (budget_epsilon > 0 and 0 < budget_delta < 1):
            raise StoreError(
                f"invalid privacy budget epsilon={budget_epsilon} delta={budget_delta}"
            )
        token = site_tokens.new_token()
        token_hash = site_tokens.hash_token(token)
        with self._write() as session:
            if session.get(Site, name) is not None:
                raise DuplicateError(f"site '{name}' is already enrolled")
            session.add(
                Site(
                    name=name,
                    token_hash=token_hash,
                    budget_epsilon=budget_epsilon,
                    budget_delta=budget_delta,
                    enabled=True,
                    created_at=utcnow(),
                )
            )
            audit_log.append(
                session,
                actor,
                "enrol_site",
                {"site": name, "budget_epsilon": budget_epsilon, "budget_delta": budget_delta},
            )
        return token

    def authenticate(self, site: str, token: str) -> SiteInfo:
        with self._read() as session:
            row = session.get(Site, site)
            if row is None:
                raise AuthError(f"unknown site '{site}'")
            if not site_tokens.verify_token(token, row.token_hash):
                raise AuthError(f"wrong token for site '{site}'")
            if not row.enabled:
                raise AuthError(
                    f"site '{site}' is disabled", hint="Ask the admin to re-enable the site."
                )
            return _site_info(row)

    def disable_site(self, name: str, *, actor: str = "admin") -> None:
        with self._write() as session:
            _get_site(session, name).enabled = False
            audit_log.append(session, actor, "disable_site", {"site": name})

    def get_site(self, name: str) -> SiteInfo:
        with self._read() as session:
            return _site_info(_get_site(session, name))

    def list_sites(self) -> list[SiteInfo]:
        with self._read() as session:
            return [_site_info(row) for row in session.scalars(select(Site).order_by(Site.name))]

    # --------------------------------------------------------------- requests

    def submit_request(
        self, site: str, *, rounds: int, local_epochs: int, dp: dict[str, Any], note: str = ""
    ) -> RequestInfo:
        """Queue a site's training request as PENDING; nothing trains until the admin approves."""
        if rounds < 1 or local_epochs < 1:
            raise StoreError(
                f"rounds and local_epochs must be at least 1 (got {rounds}, {local_epochs})"
            )
        if not isinstance(dp, dict):
            raise StoreError("dp must be a mapping of DP settings")
        with self._write() as session:
            if not _get_site(session, site).enabled:
                raise AuthError(
                    f"site '{site}' is disabled", hint="Ask the admin to re-enable the site."
                )
            row = Request(
                site=site,
                state=RequestState.PENDING,
                rounds=rounds,
                local_epochs=local_epochs,
                dp=json_safe(dp),
                note=note,
                created_at=utcnow(),
                reason="",
            )
            session.add(row)
            session.flush()
            audit_log.append(
                session,
                site,
                "submit_request",
                {"request": request_label(row.id), "rounds": rounds, "local_epochs": local_epochs},
            )
            return _request_info(row)

    def get_request(self, request_id: int | str) -> RequestInfo:
        with self._read() as session:
            return _request_info(_get_request(session, request_id))

    def list_requests(
        self, *, site: str | None = None, states: Iterable[RequestState] | None = None
    ) -> list[RequestInfo]:
        query = select(Request).order_by(Request.id)
        if site is not None:
            query = query.where(Request.site == site)
        if states is not None:
            query = query.where(Request.state.in_([RequestState(s) for s in states]))
        with self._read() as session:
            return [_request_info(row) for row in session.scalars(query)]

    def cancel_request(self, request_id: int | str, *, site: str) -> RequestInfo:
        """A site withdraws its own request while it is still PENDING."""
        with self._write() as session:
            row = _get_request(session, request_id)
            label = request_label(row.id)
            if row.site != site:
                raise AuthError(f"{label} is not a request of site '{site}'")
            if row.state is not RequestState.PENDING:
                raise IllegalTransitionError(
                    f"cannot cancel {label}: it is {row.state.value}",
                    hint="Only a pending request can be cancelled; ask the admin to stop its session.",
                )
            _move_request(row, RequestState.CANCELLED)
            row.decided_at, row.decided_by = utcnow(), site
            audit_log.append(session, site, "cancel_request", {"request": label})
            return _request_info(row)

    def reject_request(
        self, request_id: int | str, *, reason: str, actor: str = "admin"
    ) -> RequestInfo:
        if not reason.strip():
            raise StoreError(
                "a rejection needs a reason", hint="The site sees the reason; say what to change."
            )
        with self._write() as session:
            row = _get_request(session, request_id)
            label = request_label(row.id)
            _move_request(row, RequestState.REJECTED)
            row.decided_at, row.decided_by, row.reason = utcnow(), actor, reason
            _notify(
                session,
                row.site,
                "rejected",
                f"{label} was rejected: {reason}",
                {"request_id": row.id, "reason": reason},
            )
            audit_log.append(session, actor, "reject_request", {"request": label, "reason": reason})
            return _request_info(row)

    def requeue_request(self, request_id: int | str, *, actor: str = "admin") -> RequestInfo:
        """Put an INTERRUPTED or FAILED request back in the queue; its old session stays in history."""
        with self._write() as session:
            row = _get_request(session, request_id)
            label = request_label(row.id)
            _move_request(row, RequestState.PENDING)
            row.session_id = None
            row.decided_at, row.decided_by, row.reason = None, None, ""
            _notify(
                session,
                row.site,
                "requeued",
                f"{label} is back in the queue",
                {"request_id": row.id},
            )
            audit_log.append(session, actor, "requeue_request", {"request": label})
            return _request_info(row)

    # --------------------------------------------------------------- sessions

    def create_session(
        self, request_ids: Iterable[int | str], *, config: dict[str, Any], actor: str = "admin"
    ) -> SessionInfo:
        """Approve one or more PENDING requests (one per site) into one new STARTING session."""
        ids = sorted({parse_request_id(r) for r in request_ids})
        if not ids:
            raise StoreError("a session needs at least one request")
        with self._write() as session:
            requests = [_get_request(session, rid) for rid in ids]
            _refuse_duplicate_sites(requests)
            for row in requests:
                check_transition(request_label(row.id), row.state, RequestState.APPROVED)
            head = _head(session)
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
                _move_request(row, RequestState.APPROVED)
                row.decided_at, row.decided_by, row.session_id = now, actor, fl.id
                fl.members.append(
                    SessionMember(
                        request_id=row.id, site=row.site, secret=secrets.token_urlsafe(32)
                    )
                )
                _notify(
                    session,
                    row.site,
                    "approved",
                    f"{request_label(row.id)} was approved: session {fl.id}",
                    {"request_id": row.id, "session_id": fl.id},
                )
            session.flush()
            audit_log.append(
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
            return _session_info(fl)

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
                raise AuthError(f"session {session_id} has ended; its secrets are gone")
            return member.secret

    def verify_session_secret(self, session_id: int, site: str, secret: str) -> bool:
        """Constant-time check that ``secret`` is ``site``'s secret for a live session."""
        with self._read() as session:
            stored = session.scalar(
                select(SessionMember.secret).where(
                    SessionMember.session_id == session_id, SessionMember.site == site
                )
            )
        if stored is None:
            hmac.compare_digest(
                secret.encode(), secret.encode()
            )  # same work whether or not it exists
            return False
        return hmac.compare_digest(stored.encode(), secret.encode())

    def mark_session_running(self, session_id: int, *, port: int, pid: int) -> SessionInfo:
        with self._write() as session:
            fl = _get_session(session, session_id)
            check_transition(f"session {fl.id}", fl.state, SessionState.RUNNING)
            fl.state, fl.port, fl.pid, fl.started_at = SessionState.RUNNING, port, pid, utcnow()
            for row in _attached_requests(session, fl):
                _move_request(row, RequestState.RUNNING)
                _notify(
                    session,
                    row.site,
                    "session_running",
                    f"session {fl.id} for {request_label(row.id)} is running on port {port}",
                    {"request_id": row.id, "session_id": fl.id, "port": port},
                )
            audit_log.append(
                session,
                f"session-{fl.id}",
                "session_running",
                {"session": fl.id, "port": port, "pid": pid},
            )
            return _session_info(fl)

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
            fl = _get_session(session, session_id)
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
            audit_log.append(
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
            fl = _get_session(session, session_id)
            word = state.value.lower()
            message = f"session {fl.id} {word}" + (f": {reason}" if reason else "")
            _end_session(session, fl, state, reason, kind=f"session_{word}", message=message)
            audit_log.append(
                session,
                actor,
                "finish_session",
                {"session": fl.id, "state": state.value, "reason": reason},
            )
            return _session_info(fl)

    def get_session(self, session_id: int) -> SessionInfo:
        with self._read() as session:
            return _session_info(_get_session(session, session_id))

    def list_sessions(self, *, states: Iterable[SessionState] | None = None) -> list[SessionInfo]:
        query = select(FlSession).order_by(FlSession.id)
        if states is not None:
            query = query.where(FlSession.state.in_([SessionState(s) for s in states]))
        with self._read() as session:
            return [_session_info(row) for row in session.scalars(query)]

    def session_rounds(self, session_id: int) -> list[RoundInfo]:
        with self._read() as session:
            _get_session(session, session_id)
            rows = session.scalars(
                select(SessionRound)
                .where(SessionRound.session_id == session_id)
                .order_by(SessionRound.round_number, SessionRound.phase)
            )
            return [_round_info(row) for row in rows]

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
                if still_running is None or not still_running(_session_info(fl))
            ]
            reason = "the server stopped while the session was live"
            for fl in live:
                _end_session(
                    session,
                    fl,
                    SessionState.INTERRUPTED,
                    reason,
                    kind="session_interrupted",
                    message=f"session {fl.id} was interrupted ({reason}); the admin can re-queue your request",
                )
                audit_log.append(session, actor, "interrupt_session", {"session": fl.id})
            return [_session_info(fl) for fl in live]

    # --------------------------------------------------------------- versions

    def ensure_initial_version(
        self, weights: list[np.ndarray], *, metadata: dict[str, Any]
    ) -> VersionInfo:
        """Create v0 from ``weights`` unless it exists; an existing v0 is returned unchanged."""
        with self._write() as session:
            existing = session.get(Version, 0)
            if existing is not None:
                return _version_info(existing, self.versions_dir)
            row = self._add_version(
                session, 0, weights, kind="initial", parents=[], metadata=metadata
            )
            audit_log.append(
                session, "server", "initial_version", {"version": 0, "sha256": row.sha256}
            )
            return _version_info(row, self.versions_dir)

    def head(self) -> VersionInfo:
        with self._read() as session:
            return _version_info(_head(session), self.versions_dir)

    def get_version(self, number: int) -> VersionInfo:
        with self._read() as session:
            return _version_info(_get_version(session, number), self.versions_dir)

    def list_versions(self) -> list[VersionInfo]:
        with self._read() as session:
            return [
                _version_info(row, self.versions_dir)
                for row in session.scalars(select(Version).order_by(Version.number))
            ]

    def version_path(self, number: int) -> Path:
        return self.get_version(number).path

    def load_weights(self, number: int) -> list[np.ndarray]:
        """The version's weights, verified against the recorded sha256 on every load."""
        info = self.get_version(number)
        _require_weights(info.number, info.pruned_at is None)
        return weights_io.load_weights_verified(info.path, info.sha256)

    def commit_session_result(
        self,
        session_id: int,
        weights: list[np.ndarray],
        *,
        metrics: dict[str, Any],
        dp_summary: dict[str, Any],
        participants: list[str],
        rounds: int,
        alpha: float = DEFAULT_ALPHA,
    ) -> VersionInfo:
        """Turn a RUNNING session's result into the next version and complete the session.

        If the head is still the session's base, the result is the new version (parents [base]);
        otherwise it is merged into the head FedAsync-style (parents [head, base]). The weight
        file is written atomically before the row is inserted, all under the write lock, so a
        crash leaves at most an orphan file (removed by clean-up), never a row without its file.
        """
        _refuse_non_finite(weights)
        with self._write() as session:
            fl = _get_session(session, session_id)
            check_transition(f"session {fl.id}", fl.state, SessionState.COMPLETED)
            members = {m.site for m in fl.members}
            if not set(participants) <= members:
                raise StoreError(
                    f"participants {sorted(set(participants) - members)} were not approved for session {fl.id}"
                )
            head = _head(session)
            staleness = head.number - fl.base_version
            parents, kind, mixed, used = [fl.base_version], "session", weights, None
            if staleness > 0:
                head_weights = weights_io.load_weights_verified(
                    self.versions_dir / head.filename, head.sha256
                )
                mixed, used = merge_weights(head_weights, weights, staleness=staleness, alpha=alpha)
                parents, kind = [head.number, fl.base_version], "merge"
            row = self._add_version(
                session,
                head.number + 1,
                mixed,
                kind=kind,
                parents=parents,
                metadata=head.meta,
                session_id=fl.id,
                participants=sorted(participants),
                rounds=rounds,
                metrics=metrics,
                dp_summary=dp_summary,
                merge_weight=used,
                staleness=staleness,
            )
            fl.version_number = row.number
            label = f"v{row.number}"
            _end_session(
                session,
                fl,
                SessionState.COMPLETED,
                "",
                kind="new_version",
                message=f"new version {label} from session {fl.id}" + (" (merged)" if used else ""),
                payload={"version": row.number},
            )
            audit_log.append(
                session,
                f"session-{fl.id}",
                "commit_version",
                {
                    "session": fl.id,
                    "version": row.number,
                    "parents": parents,
                    "merge_weight": used,
                    "staleness": staleness,
                    "sha256": row.sha256,
                },
            )
            return _version_info(row, self.versions_dir)

    def rollback(self, to_number: int, *, actor: str = "admin") -> VersionInfo:
        """Make an older version's weights the head again, as a new version (history is never rewritten)."""
        with self._write() as session:
            target = _get_version(session, to_number)
            _require_weights(target.number, target.pruned_at is None)
            head = _head(session)
            if head.number == target.number:
                raise StoreError(f"v{target.number} is already the head")
            data = weights_io.read_bytes_verified(
                self.versions_dir / target.filename, target.sha256
            )
            number = head.number + 1
            filename = _version_filename(number)
            weights_io.write_bytes_atomic(self.versions_dir / filename, data)
            row = Version(
                number=number,
                kind="rollback",
                parents=[target.number],
                session_id=None,
                participants=[],
                rounds=0,
                metrics=target.metrics,
                dp_summary={},
                meta=target.meta,
                merge_weight=None,
                staleness=0,
                filename=filename,
                size_bytes=len(data),
                sha256=target.sha256,
                note=f"rollback to v{target.number} by {actor}",
                created_at=utcnow(),
            )
            session.add(row)
            session.flush()
            audit_log.append(session, actor, "rollback", {"version": number, "to": target.number})
            return _version_info(row, self.versions_dir)

    def cleanup(
        self, *, keep_last: int, dry_run: bool = True, actor: str = "admin"
    ) -> CleanupReport:
        """Delete weight files of versions nobody needs; rows stay, marked pruned.

        Kept: the last ``keep_last`` versions, the head, versions exported to a site, the bases
        of live sessions, and the direct parents of all of those. Stray files in the versions
        folder (from a crashed commit or write) are removed too. Rows are marked first and files
        deleted after, under the write lock, so a crash in between only leaves stray files.
        """
        if keep_last < 0:
            raise StoreError(f"keep_last must be >= 0, got {keep_last}")
        if dry_run:
            with self._read() as session:
                doomed = _versions_to_prune(session, keep_last)
                files = self._stray_files(session, also=doomed)
                kept = _kept_numbers(session, doomed)
            return _cleanup_report(True, kept, doomed, files, self.versions_dir)
        with self._write() as session:
            doomed = _versions_to_prune(session, keep_last)
            now = utcnow()
            for row in doomed:
                row.pruned_at = now
            kept = _kept_numbers(session, doomed)
            audit_log.append(
                session,
                actor,
                "cleanup",
                {"keep_last": keep_last, "pruned": [row.number for row in doomed]},
            )
        with self._write() as session:  # hold the lock so no commit writes a file while we delete
            files = self._stray_files(session, also=[])
            report = _cleanup_report(False, kept, doomed, files, self.versions_dir)
            for path in files:
                path.unlink(missing_ok=True)
        return report

    def export_version(self, number: int, sites: list[str], *, actor: str = "admin") -> None:
        """Release a version to sites: they may download it, and clean-up keeps it."""
        with self._write() as session:
            row = _get_version(session, number)
            _require_weights(row.number, row.pruned_at is None)
            for site in sites:
                _get_site(session, site)
                if session.get(Release, (row.number, site)) is None:
                    session.add(
                        Release(
                            version_number=row.number,
                            site=site,
                            released_at=utcnow(),
                            released_by=actor,
                        )
                    )
                    _notify(
                        session,
                        site,
                        "release",
                        f"version v{row.number} is available to download",
                        {"version": row.number},
                    )
            audit_log.append(
                session, actor, "export_version", {"version": row.number, "sites": sorted(sites)}
            )

    def released_versions(self, site: str) -> list[VersionInfo]:
        with self._read() as session:
            rows = session.scalars(
                select(Version).join(Release).where(Release.site == site).order_by(Version.number)
            )
            return [_version_info(row, self.versions_dir) for row in rows]

    def available_versions(self, site: str) -> list[VersionInfo]:
        """What a site may download: versions released to it or trained with it, files present."""
        return [v for v in self.list_versions()
                if v.has_weights and (site in v.released_to or site in v.participants)]

    def may_download(self, site: str, number: int) -> bool:
        """A site may fetch a version released to it or one it helped train (and whose file still exists)."""
        info = self.get_version(number)
        return info.pruned_at is None and (site in info.released_to or site in info.participants)

    def record_download(self, site: str, version_number: int) -> None:
        """A site accepted an update and fetched it."""
        if not self.may_download(site, version_number):
            raise AuthError(f"site '{site}' may not download v{version_number}")
        with self._write() as session:
            session.add(Download(site=site, version_number=version_number, downloaded_at=utcnow()))
            audit_log.append(session, site, "download", {"version": version_number})

    def _add_version(
        self,
        session: Session,
        number: int,
        weights: list[np.ndarray],
        *,
        kind: str,
        parents: list[int],
        metadata: dict[str, Any],
        session_id: int | None = None,
        participants: list[str] | None = None,
        rounds: int = 0,
        metrics: dict[str, Any] | None = None,
        dp_summary: dict[str, Any] | None = None,
        merge_weight: float | None = None,
        staleness: int = 0,
    ) -> Version:
        """Write the weight file (atomically) first, then add the row that points at it."""
        filename = _version_filename(number)
        written = weights_io.save_weights(self.versions_dir / filename, weights)
        row = Version(
            number=number,
            kind=kind,
            parents=parents,
            session_id=session_id,
            participants=participants or [],
            rounds=rounds,
            metrics=json_safe(metrics or {}),
            dp_summary=json_safe(dp_summary or {}),
            meta=json_safe(metadata),
            merge_weight=merge_weight,
            staleness=staleness,
            filename=filename,
            size_bytes=written.size_bytes,
            sha256=written.sha256,
            note="",
            created_at=utcnow(),
        )
        session.add(row)
        session.flush()
        return row

    def _stray_files(self, session: Session, *, also: list[Version]) -> list[Path]:
        """Files in the versions folder that no unpruned version (outside ``also``) refers to."""
        doomed = {row.number for row in also}
        wanted = set(
            session.scalars(
                select(Version.filename).where(
                    Version.pruned_at.is_(None), Version.number.not_in(doomed)
                )
            )
        )
        if not self.versions_dir.is_dir():
            return []
        return sorted(
            path
            for path in self.versions_dir.iterdir()
            if path.is_file()
            and path.name not in wanted
            and (_VERSION_FILE.match(path.name) or path.name.startswith(weights_io.TEMP_PREFIX))
        )

    # ---------------------------------------------------------- notifications

    def notify(
        self, site: str, *, kind: str, message: str, payload: dict[str, Any] | None = None
    ) -> None:
        with self._write() as session:
            _get_site(session, site)
            _notify(session, site, kind, message, payload or {})

    def notifications(self, site: str, *, unread_only: bool = False) -> list[NotificationInfo]:
        query = select(Notification).where(Notification.site == site).order_by(Notification.id)
        if unread_only:
            query = query.where(Notification.read_at.is_(None))
        with self._read() as session:
            return [_notification_info(row) for row in session.scalars(query)]

    def acknowledge(self, site: str, notification_ids: list[int]) -> int:
        """Mark the site's own unread notifications read; returns how many changed."""
        if not notification_ids:
            return 0
        with self._write() as session:
            result = session.execute(
                update(Notification)
                .where(
                    Notification.site == site,
                    Notification.id.in_(notification_ids),
                    Notification.read_at.is_(None),
                )
                .values(read_at=utcnow())
            )
            return int(result.rowcount or 0)

    # ------------------------------------------------------------------ audit

    def audit(self, actor: str, action: str, detail: dict[str, Any]) -> None:
        with self._write() as session:
            audit_log.append(session, actor, action, detail)

    def verify_audit(self) -> AuditVerdict:
        with self._read() as session:
            return audit_log.verify_chain(session)

    def audit_trail(self, *, action: str | None = None, actor: str | None = None) -> list[AuditEntry]:
        """Audit rows oldest first, optionally of one action or actor (for the admin and tests)."""
        query = select(AuditRow).order_by(AuditRow.id)
        if action is not None:
            query = query.where(AuditRow.action == action)
        if actor is not None:
            query = query.where(AuditRow.actor == actor)
        with self._read() as session:
            return [AuditEntry(r.id, r.at, r.actor, r.action, dict(r.detail)) for r in session.scalars(query)]


# ---------------------------------------------------------------- helpers


def _get_site(session: Session, name: str) -> Site:
    row = session.get(Site, name)
    if row is None:
        raise NotFoundError(f"no site '{name}'", hint="Enrol the site first.")
    return row


def _get_request(session: Session, request_id: int | str) -> Request:
    number = parse_request_id(request_id)
    row = session.get(Request, number)
    if row is None:
        raise NotFoundError(f"no request {request_label(number)}")
    return row


def _get_session(session: Session, session_id: int) -> FlSession:
    row = session.get(FlSession, session_id)
    if row is None:
        raise NotFoundError(f"no session {session_id}")
    return row


def _get_version(session: Session, number: int) -> Version:
    row = session.get(Version, number)
    if row is None:
        raise NotFoundError(f"no version v{number}")
    return row


def _head(session: Session) -> Version:
    row = session.scalars(select(Version).order_by(Version.number.desc()).limit(1)).first()
    if row is None:
        raise NotFoundError(
            "there is no model version yet", hint="The server creates v0 when it first starts."
        )
    return row


def _require_weights(number: int, present: bool) -> None:
    if not present:
        raise NotFoundError(f"the weights of v{number} were removed by clean-up")


def _version_filename(number: int) -> str:
    return f"v{number:05d}.npz"


def _move_request(row: Request, target: RequestState) -> None:
    check_transition(request_label(row.id), row.state, target)
    row.state = target


def _refuse_duplicate_sites(requests: list[Request]) -> None:
    seen: dict[str, int] = {}
    for row in requests:
        if row.site in seen:
            raise StoreError(
                f"{request_label(seen[row.site])} and {request_label(row.id)} are both from site '{row.site}'",
                hint="A session takes at most one request per site; approve the other one later.",
            )
        seen[row.site] = row.id


def _refuse_non_finite(weights: list[np.ndarray]) -> None:
    for index, array in enumerate(weights):
        if not np.all(np.isfinite(array)):
            raise StoreError(f"weight {index} of the session result contains NaN or Inf")


def _attached_requests(session: Session, fl: FlSession) -> list[Request]:
    """The session's requests that still belong to it (a re-queued request has moved on)."""
    ids = [m.request_id for m in fl.members]
    return list(
        session.scalars(
            select(Request)
            .where(Request.id.in_(ids), Request.session_id == fl.id)
            .order_by(Request.id)
        )
    )


def _end_session(
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
    for row in _attached_requests(session, fl):
        _move_request(row, REQUEST_STATE_AFTER_SESSION[state])
        row.reason = reason
        _notify(
            session,
            row.site,
            kind,
            message,
            {"request_id": row.id, "session_id": fl.id, "reason": reason, **(payload or {})},
        )


def _notify(session: Session, site: str, kind: str, message: str, payload: dict[str, Any]) -> None:
    session.add(
        Notification(
            site=site, kind=kind, message=message, payload=json_safe(payload), created_at=utcnow()
        )
    )


def _versions_to_prune(session: Session, keep_last: int) -> list[Version]:
    rows = session.scalars(select(Version).order_by(Version.number)).all()
    if not rows:
        return []
    anchors = {row.number for row in rows[-keep_last:]} if keep_last else set()
    anchors.add(rows[-1].number)
    anchors |= set(session.scalars(select(Release.version_number)))
    anchors |= set(
        session.scalars(
            select(FlSession.base_version).where(FlSession.state.in_(LIVE_SESSION_STATES))
        )
    )
    by_number = {row.number: row for row in rows}
    keep = set(anchors)
    for number in anchors:
        keep |= set(by_number[number].parents)
    return [row for row in rows if row.number not in keep and row.pruned_at is None]


def _kept_numbers(session: Session, doomed: list[Version]) -> list[int]:
    gone = {row.number for row in doomed}
    return sorted(
        set(session.scalars(select(Version.number).where(Version.pruned_at.is_(None)))) - gone
    )


def _cleanup_report(
    dry_run: bool, kept: list[int], doomed: list[Version], files: list[Path], versions_dir: Path
) -> CleanupReport:
    own = {versions_dir / row.filename for row in doomed}
    present = [path for path in files if path.exists()]
    return CleanupReport(
        dry_run=dry_run,
        kept=kept,
        removed=[row.number for row in doomed],
        files=present,
        orphans=[path for path in present if path not in own],
        freed_bytes=sum(path.stat().st_size for path in present),
    )


# ------------------------------------------------------- rows -> records


def _site_info(row: Site) -> SiteInfo:
    return SiteInfo(
        name=row.name,
        enabled=row.enabled,
        budget_epsilon=row.budget_epsilon,
        budget_delta=row.budget_delta,
        created_at=row.created_at,
    )


def _request_info(row: Request) -> RequestInfo:
    return RequestInfo(
        id=row.id,
        label=request_label(row.id),
        site=row.site,
        state=row.state,
        rounds=row.rounds,
        local_epochs=row.local_epochs,
        dp=dict(row.dp),
        note=row.note,
        created_at=row.created_at,
        decided_at=row.decided_at,
        decided_by=row.decided_by,
        reason=row.reason,
        session_id=row.session_id,
    )


def _session_info(row: FlSession) -> SessionInfo:
    members = sorted(row.members, key=lambda m: m.request_id)
    return SessionInfo(
        id=row.id,
        state=row.state,
        request_ids=[m.request_id for m in members],
        participants=sorted(m.site for m in members),
        config=dict(row.config),
        port=row.port,
        pid=row.pid,
        base_version=row.base_version,
        version_number=row.version_number,
        created_at=row.created_at,
        started_at=row.started_at,
        ended_at=row.ended_at,
        reason=row.reason,
    )


def _round_info(row: SessionRound) -> RoundInfo:
    return RoundInfo(
        session_id=row.session_id,
        round_number=row.round_number,
        phase=row.phase,
        metrics=dict(row.metrics),
        per_site=dict(row.per_site),
        recorded_at=row.recorded_at,
    )


def _version_info(row: Version, versions_dir: Path) -> VersionInfo:
    return VersionInfo(
        number=row.number,
        label=f"v{row.number}",
        kind=row.kind,
        parents=list(row.parents),
        session_id=row.session_id,
        participants=list(row.participants),
        rounds=row.rounds,
        metrics=dict(row.metrics),
        dp_summary=dict(row.dp_summary),
        metadata=dict(row.meta),
        merge_weight=row.merge_weight,
        staleness=row.staleness,
        path=versions_dir / row.filename,
        size_bytes=row.size_bytes,
        sha256=row.sha256,
        created_at=row.created_at,
        note=row.note,
        released_to=[r.site for r in row.releases],
        pruned_at=row.pruned_at,
    )


def _notification_info(row: Notification) -> NotificationInfo:
    return NotificationInfo(
        id=row.id,
        site=row.site,
        kind=row.kind,
        message=row.message,
        payload=dict(row.payload),
        created_at=row.created_at,
        read_at=row.read_at,
    )
