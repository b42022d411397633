"""Turn approvals into session processes and keep the store in step with them.

One approval (of one or several requests) becomes one session: a port from the pool, one
``python -m server.sessions.process`` process, and a watcher that marks the session FAILED with
the reason when its process dies or ends without committing.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from server.sessions.aggregation_rule import choose_rule
from server.sessions.privacy_plan import SitePlan, plan_sites, session_rounds
from server.store import Store
from server.store.lifecycle import SessionState
from server.store.records import SessionInfo
from shared import secagg_protocol, training_defaults
from shared.errors import IllegalTransitionError, SessionFailedError, StoreError
from shared.settings import Settings

log = logging.getLogger(__name__)

ACTIVE_STATES = (SessionState.STARTING, SessionState.RUNNING)
FINAL_STATES = (SessionState.COMPLETED, SessionState.FAILED, SessionState.CANCELLED)
LOG_TAIL_LINES = 5


@dataclass(frozen=True)
class ApprovalOptions:
    """What the admin chooses at approval; ``None`` means "take it from the requests".

    ``rounds`` may not exceed any request's; ``local_epochs`` caps each site's own request.
    """

    rounds: int | None = None
    local_epochs: int | None = None
    proximal_mu: float = 0.01
    min_clients: int | None = None
    join_timeout_s: float = 300.0
    round_timeout_s: float = 3600.0
    batch_size: int = training_defaults.BATCH_SIZE
    learning_rate: float = training_defaults.LEARNING_RATE
    #: None: each site's bound is how far its approved schedule lets an honest round move the
    #: weights (``server.sessions.update_bound``; bench.update_norms measures the margin).
    max_update_norm: float | None = None
    #: None: on for sessions of 3+ sites (``shared.secagg_protocol.enabled_by_default``).
    secure_aggregation: bool | None = None
    #: None: ceil(2n/3) of the n sites; must exceed n/2.
    secagg_threshold: int | None = None
    #: How the server combines updates: "fedprox" (weighted mean), "trimmed-mean" or "median"
    #: (``aggregation_rule``; the robust ones need secure aggregation off and 3+ results a round).
    aggregator: str = "fedprox"
    #: Trimmed mean only: the share cut at each end of every coordinate (None: 0.2).
    trim_fraction: float | None = None


def _secure_aggregation_config(site_count: int, options: ApprovalOptions) -> dict[str, Any]:
    """Decide secure aggregation at approval, so a bad threshold is refused before any process starts."""
    enabled = options.secure_aggregation
    if enabled is None:
        enabled = secagg_protocol.enabled_by_default(site_count)
    if not enabled:
        return {"secure_aggregation": False}
    threshold = options.secagg_threshold or secagg_protocol.default_threshold(site_count)
    return {"secure_aggregation": True,
            "secagg_threshold": secagg_protocol.check_threshold(threshold, site_count)}


@dataclass(frozen=True)
class SessionEvent:
    """A session that ended, for the admin console's notices."""

    session_id: int
    state: str
    detail: str


class SessionManager:
    """Spawns, watches and stops the session processes of one server."""

    def __init__(
        self,
        store: Store,
        settings: Settings,
        *,
        on_event: Callable[[SessionEvent], None] | None = None,
        poll_interval_s: float = 0.5,
    ) -> None:
        self.store = store
        self.settings = settings
        self.on_event = on_event or (lambda event: None)
        self.poll_interval_s = poll_interval_s
        self._processes: dict[int, subprocess.Popen[bytes]] = {}
        self._lock = threading.Lock()
        self._reaping = threading.Lock()
        self._stopping = threading.Event()
        self._watcher: threading.Thread | None = None
        self.log_dir = settings.home / "sessions"

    # -- life cycle ---------------------------------------------------------------------
    def start(self) -> None:
        """Start the watcher thread (idempotent)."""
        if self._watcher is None:
            self._watcher = threading.Thread(target=self._watch, name="session-watcher", daemon=True)
            self._watcher.start()

    def shutdown(self, *, stop_running: bool, timeout_s: float | None = None) -> None:
        """Either stop running sessions cleanly or wait for them, then stop watching."""
        for session_id in self.running_ids():
            if stop_running:
                self.stop(session_id, reason="server shut down by the admin")
            else:
                self.wait(session_id, timeout_s=timeout_s)
        self._stopping.set()
        if self._watcher is not None:
            self._watcher.join(timeout=5)
            self._watcher = None

    # -- approval -----------------------------------------------------------------------
    def approve(
        self, request_ids: Iterable[int | str], options: ApprovalOptions, *, actor: str = "admin"
    ) -> SessionInfo:
        """Plan every site's DP schedule, charge the server's privacy ledger, spawn the session.

        Refused (nothing created) when a site's schedule would exceed its effective budget, when
        the rounds exceed a request's, when a request declares no example count, or when the
        aggregator cannot run in this session (a robust one under secure aggregation).
        """
        requests = [self.store.get_request(r) for r in request_ids]
        if not requests:
            raise StoreError("approve needs at least one request")
        rounds = session_rounds(requests, options.rounds)
        plans = plan_sites(self.store, requests, rounds=rounds, local_epochs=options.local_epochs,
                           batch_size=options.batch_size)
        config = self._session_config(requests, options, rounds, plans)
        with self._lock:
            port = self._free_port()
            session = self.store.create_session_charged([r.id for r in requests], [p.charge() for p in plans],
                                                        config=config, actor=actor)
            process = self._spawn(session.id, port)
            self._processes[session.id] = process
            return self.store.mark_session_running(session.id, port=port, pid=process.pid)

    def _session_config(self, requests: list[Any], options: ApprovalOptions, rounds: int,
                        plans: list[SitePlan]) -> dict[str, Any]:
        head = self.store.head()
        min_clients = options.min_clients or len(requests)
        secure = _secure_aggregation_config(len(requests), options)
        rule = choose_rule(options.aggregator, options.trim_fraction,
                           secure_aggregation=secure["secure_aggregation"], min_results=min_clients)
        return {
            "rounds": rounds,
            "local_epochs": max(p.local_epochs for p in plans),  # the most any site trains; each has its own
            "proximal_mu": options.proximal_mu,
            "min_clients": min_clients,
            "join_timeout_s": options.join_timeout_s,
            "round_timeout_s": options.round_timeout_s,
            "batch_size": options.batch_size,
            "learning_rate": options.learning_rate,
            "max_update_norm": options.max_update_norm,
            "model": dict(head.metadata.get("model", {})),
            "sites": {p.site: p.config() for p in plans},
            **secure,
            "aggregation": rule.config(),
        }

    def _free_port(self) -> int:
        """First pool port no active session holds and nothing else is bound to."""
        taken = {s.port for s in self.store.list_sessions(states=ACTIVE_STATES)}
        for port in self.settings.session_ports:
            if port not in taken and _bindable(self.settings.session_host, port):
                return port
        pool = self.settings.session_ports
        raise StoreError(
            f"no free session port in {pool.start}-{pool.stop - 1}",
            hint="Wait for a session to end, or widen FL_SESSION_PORT_COUNT.",
        )

    def _spawn(self, session_id: int, port: int) -> subprocess.Popen[bytes]:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_file = open(self.session_log(session_id), "ab")  # noqa: SIM115 (child owns it)
        env = {**os.environ, **self.settings.as_environment()}
        command = [sys.executable, "-m", "server.sessions.process", str(session_id), "--port", str(port)]
        try:
            return subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, env=env,
                                    cwd=Path.cwd(), start_new_session=True)
        finally:
            log_file.close()

    def session_log(self, session_id: int) -> Path:
        return self.log_dir / f"session-{session_id}.log"

    # -- watching and stopping ----------------------------------------------------------
    def running_ids(self) -> list[int]:
        with self._lock:
            return [sid for sid, proc in self._processes.items() if proc.poll() is None]

    def stop(self, session_id: int, *, reason: str, grace_s: float = 10.0) -> None:
        """Mark a session CANCELLED with ``reason``, then terminate its process (ours or another's).

        In that order: a watcher (this server's, or another process's) that sees the process die
        must find the session already ended, or it records the death as a failure first."""
        ended = self._end_if_active(session_id, SessionState.CANCELLED, reason)
        with self._lock:
            process = self._processes.pop(session_id, None)
        if process is not None:
            _terminate(process, grace_s)
        else:
            _terminate_pid(self.store.get_session(session_id).pid, grace_s)
        if ended:
            self.on_event(SessionEvent(session_id, SessionState.CANCELLED.value, reason))

    def _end_if_active(self, session_id: int, state: SessionState, reason: str) -> bool:
        """End a still-active session; False when its process finished it first (a race we lose)."""
        if self.store.get_session(session_id).state not in ACTIVE_STATES:
            return False
        try:
            self.store.finish_session(session_id, state=state, reason=reason, actor="session-manager")
        except IllegalTransitionError:
            return False
        return True

    def wait(self, session_id: int, *, timeout_s: float | None = None) -> SessionInfo:
        """Block until the session is final (for the demo, tests and 'exit: wait')."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            self.reap()
            session = self.store.get_session(session_id)
            if session.state in FINAL_STATES or session.state == SessionState.INTERRUPTED:
                return session
            if deadline is not None and time.monotonic() > deadline:
                raise SessionFailedError(f"session {session_id} still {session.state} after {timeout_s} s")
            time.sleep(self.poll_interval_s)

    def recover(self) -> list[SessionInfo]:
        """At server start: sessions whose process died with the old server become INTERRUPTED.

        Sessions whose process is still alive (they run in their own process group and outlive
        a crashed server) are left running; the watcher supervises them from now on.
        """
        return self.store.recover_interrupted(still_running=lambda s: session_process_alive(s.pid))

    def reap(self) -> list[SessionEvent]:
        """Settle sessions whose process is gone; one it left unfinished becomes FAILED.

        Covers both the processes this manager spawned and those another process spawned
        (``fl-server approve`` from a shell), which are found through their pid in the store.
        """
        with self._reaping:  # the watcher and wait() both reap: one settles, with the exit code
            with self._lock:
                exited = {sid: p for sid, p in self._processes.items() if p.poll() is not None}
                for sid in exited:
                    del self._processes[sid]
                own = set(self._processes)
            events = [self._settle(sid, proc.returncode) for sid, proc in exited.items()]
            events += [
                self._settle(s.id, None)
                for s in self.store.list_sessions(states=[SessionState.RUNNING])
                if s.id not in own and s.id not in exited and not session_process_alive(s.pid)
            ]
        for event in events:
            self.on_event(event)
        return events

    def _settle(self, session_id: int, returncode: int | None) -> SessionEvent:
        """End a session whose process is gone. The stored reason reaches the sites, so it never
        quotes the session log (which holds client-chosen text and server internals); the log's
        last lines go only to the admin's notice."""
        reason = f"session process {_describe_exit(returncode)} (the admin has the session log)"
        ended_here = self._end_if_active(session_id, SessionState.FAILED, reason)
        session = self.store.get_session(session_id)
        detail = session.reason or (f"v{session.version_number}" if session.version_number is not None else "")
        tail = self._log_tail(session_id) if ended_here else ""
        return SessionEvent(session_id, str(session.state.value), f"{detail}: {tail}" if tail else detail)

    def _log_tail(self, session_id: int) -> str:
        path = self.session_log(session_id)
        if not path.exists():
            return ""
        lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
        return " | ".join(lines[-LOG_TAIL_LINES:])[-500:]

    def _watch(self) -> None:
        while not self._stopping.wait(self.poll_interval_s):
            try:
                self.reap()
            except Exception:  # the watcher must outlive one bad poll
                log.exception("session watcher: poll failed")


def _bindable(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def _terminate(process: subprocess.Popen[bytes], grace_s: float) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _terminate_pid(pid: int | None, grace_s: float) -> None:
    """SIGTERM, then SIGKILL after ``grace_s``, a session process another process spawned."""
    if not session_process_alive(pid):
        return
    assert pid is not None
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while session_process_alive(pid):
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            return
        time.sleep(0.1)


def session_process_alive(pid: int | None) -> bool:
    """Whether ``pid`` is a live (non-zombie) session process on this machine."""
    if not pid:
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        status = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    zombie = status.rsplit(")", 1)[-1].split()[0] == "Z"
    return b"server.sessions.process" in cmdline and not zombie


def _describe_exit(returncode: int | None) -> str:
    if returncode is None:
        return "disappeared (its exit code is unknown)"
    if returncode < 0:
        return f"was killed by signal {-returncode}"
    return f"exited with code {returncode}"
