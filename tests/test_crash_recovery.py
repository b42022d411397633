"""kill -9 of the server, of a session and of a client: nothing committed is lost, every end has a reason."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from server.store import Store
from server.store.lifecycle import RequestState, SessionState
from shared.errors import SessionFailedError
from shared.listening import wait_until_listening
from shared.settings import Settings, load_settings
from tests.flower_fakes import ScriptedClient, free_port, run_in_thread, serve_session
from tests.privacy_fixtures import declaration, site_plan

pytestmark = pytest.mark.slow

DP = {"noise_multiplier": 1.0, "delta": 1e-5, "l2_norm_clip": 1.0}
V0 = [np.zeros((6, 4), np.float32), np.zeros(4, np.float32)]


@dataclass
class ServerHome:
    settings: Settings
    store: Store

    def env(self) -> dict[str, str]:
        return {**os.environ, **self.settings.as_environment()}

    def serve(self) -> subprocess.Popen[bytes]:
        process = subprocess.Popen([sys.executable, "-m", "server.console.cli", "serve"], env=self.env(),
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until_listening("127.0.0.1", self.settings.request_port, timeout_s=60)
        return process

    def admin(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "server.console.cli", *args], env=self.env(),
                              capture_output=True, text=True, timeout=120)


@pytest.fixture
def home(tmp_path: Path) -> Iterator[ServerHome]:
    settings = load_settings(home=tmp_path / "server", request_port=free_port(),
                             session_port_start=free_port(), session_port_count=5)
    store = Store.open(settings)
    store.ensure_initial_version(V0, metadata={"model": {}})
    store.enrol_site("north")
    store.submit_request("north", rounds=1, local_epochs=1, dp=DP, declaration=declaration(100))
    yield ServerHome(settings, store)
    for session in store.list_sessions():
        if session.pid and session.state in (SessionState.STARTING, SessionState.RUNNING):
            _kill(session.pid)
    store.close()


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _approve_and_wait_listening(home: ServerHome) -> int:
    assert home.admin("approve", "1", "--join-timeout", "600").returncode == 0
    session = home.store.list_sessions()[-1]
    wait_until_listening("127.0.0.1", session.port, timeout_s=60)
    return session.id


def test_server_and_session_killed_the_restart_marks_it_interrupted_and_requeueable(home: ServerHome) -> None:
    server = home.serve()
    session_id = _approve_and_wait_listening(home)
    server.kill()
    server.wait()
    _kill(home.store.get_session(session_id).pid)  # the machine went down with both
    time.sleep(0.5)

    restarted = home.serve()
    try:
        session = home.store.get_session(session_id)
        assert session.state == SessionState.INTERRUPTED
        assert home.store.get_request(1).state == RequestState.INTERRUPTED
        assert any(n.kind == "session_interrupted" for n in home.store.notifications("north"))
        assert home.admin("requeue", "REQ-1").returncode == 0
        assert home.store.get_request(1).state == RequestState.PENDING
        np.testing.assert_array_equal(home.store.load_weights(0)[0], V0[0])
        assert home.store.verify_audit().ok
    finally:
        restarted.send_signal(signal.SIGTERM)
        assert restarted.wait(timeout=60) == 0


def test_a_session_outlives_a_killed_server_and_is_not_interrupted(home: ServerHome) -> None:
    server = home.serve()
    session_id = _approve_and_wait_listening(home)
    server.kill()
    server.wait()

    restarted = home.serve()
    try:
        assert home.store.get_session(session_id).state == SessionState.RUNNING
        assert home.admin("stop", str(session_id), "--reason", "test over").returncode == 0
        session = home.store.get_session(session_id)
        assert session.state == SessionState.CANCELLED and session.reason == "test over"
    finally:
        restarted.send_signal(signal.SIGTERM)
        assert restarted.wait(timeout=60) == 0


def _session_with_a_killed_client(store: Store, min_clients: int, marker: Path) -> tuple[dict, int]:
    store.enrol_site("south")
    second = store.submit_request("south", rounds=2, local_epochs=1, dp=DP).id
    config = {"rounds": 2, "proximal_mu": 0.0, "min_clients": min_clients, "join_timeout_s": 30,
              "round_timeout_s": 60, "max_update_norm": 100.0, "local_epochs": 1, "batch_size": 4,
              "learning_rate": 0.1, "sites": {"north": site_plan(1, 10, rounds=2), "south": site_plan(second, 10, rounds=2)}}
    session = store.create_session([1, second], config=config)
    port = free_port()
    store.mark_session_running(session.id, port=port, pid=os.getpid())
    outcome = serve_session(store, session.id, port)
    run_in_thread(port, ScriptedClient("north", store.session_secret(session.id, "north"), 10,
                                       lambda ws: [w + 1.0 for w in ws]))
    doomed = subprocess.Popen([sys.executable, "-m", "tests.crash_workers", "client", str(port), "south",
                               store.session_secret(session.id, "south"), "30", str(marker)])
    deadline = time.monotonic() + 60
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert marker.exists(), "south never started its fit"
    doomed.kill()  # mid-round: south is inside its 30 s fit
    doomed.wait()
    outcome["thread"].join(timeout=120)
    return outcome, session.id


def test_a_client_killed_mid_round_fails_a_session_that_needs_every_site(home: ServerHome, tmp_path: Path) -> None:
    outcome, session_id = _session_with_a_killed_client(home.store, 2, tmp_path / "fit-started")
    assert isinstance(outcome.get("error"), SessionFailedError)
    session = home.store.get_session(session_id)
    assert session.state == SessionState.FAILED
    assert "missing: south" in session.reason and "1 client failure" in session.reason


def test_a_client_killed_mid_round_is_survived_when_min_clients_allows(home: ServerHome, tmp_path: Path) -> None:
    outcome, session_id = _session_with_a_killed_client(home.store, 1, tmp_path / "fit-started")
    assert outcome.get("version") == 1, outcome
    version = home.store.get_version(1)
    assert version.participants == ["north"]
    np.testing.assert_allclose(home.store.load_weights(1)[1], np.full(4, 2.0))
