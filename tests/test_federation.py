"""The whole flow with real parts: request socket, session processes, Flower, TensorFlow clients.

Sites run as real ``fl-client ... train`` processes; the server side (request socket and
session manager) runs in the test process against a real SQLite store.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from client.federation.socket_client import SiteConnection
from client.menu.actions import setup_site
from client.site_profile import load_profile
from client.training.privacy_contract import declaration, site_ledger
from scripts.make_sample_data import generate_sample_dataset
from scripts.split_dataset import split_dataset
from server.sessions.initial_model import ensure_initial_version
from server.sessions.manager import ApprovalOptions, SessionManager
from server.socket.request_socket import RequestServerThread
from server.store import Store
from server.store.lifecycle import RequestState, SessionState
from shared.privacy_accounting import DpSchedule
from shared.settings import Settings, load_settings
from shared.weights_io import sha256_file
from tests.flower_fakes import free_port

pytestmark = pytest.mark.slow

SITES = ("north", "south")
DP = {"noise_multiplier": 1.0, "delta": 1e-5, "l2_norm_clip": 1.0}
BUDGET = 100.0
FAST = ApprovalOptions(rounds=2, local_epochs=1, batch_size=8, learning_rate=0.1, join_timeout_s=180)


@dataclass
class Federation:
    settings: Settings
    store: Store
    manager: SessionManager
    port: int
    tokens: dict[str, str]
    root: Path

    def connection(self, site: str) -> SiteConnection:
        return SiteConnection("127.0.0.1", self.port, site, self.tokens[site])

    def request(self, site: str, rounds: int = 2) -> int:
        """Send a request with the site's declaration, as ``fl-client request`` does."""
        profile = load_profile(self.settings, site)
        with self.connection(site) as connection:
            return connection.submit_request(rounds=rounds, local_epochs=1, dp=DP, note="test",
                                             declaration=declaration(profile)).id

    def train(self, site: str, request_id: int) -> subprocess.Popen[bytes]:
        env = {**os.environ, **self.settings.as_environment(), "FL_LOG_LEVEL": "WARNING"}
        log = open(self.root / f"{site}-{request_id}.log", "wb")  # noqa: SIM115 (closed by the child)
        return subprocess.Popen([sys.executable, "-m", "client.menu.cli", "--site", site, "train", str(request_id)],
                                env=env, stdout=log, stderr=subprocess.STDOUT)


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    root = tmp_path_factory.mktemp("federation")
    start = free_port()
    settings = load_settings(home=root / "server", request_port=0, session_port_start=start,
                             session_port_count=10, image_size=32)
    generate_sample_dataset(root / "sample", per_class=10, image_size=32, seed=1)
    split_dataset(root / "sample", root / "sites", list(SITES), mode="iid", seed=1)
    store = Store.open(settings)
    ensure_initial_version(store, image_size=32)
    tokens = {site: store.enrol_site(site, budget_epsilon=BUDGET) for site in SITES}  # several sessions each
    manager = SessionManager(store, settings, poll_interval_s=0.2)
    manager.start()
    with RequestServerThread(store, settings) as server:
        for site in SITES:
            setup_site(settings, site=site, token=tokens[site], data_root=root / "sites" / site,
                       server_port=server.port, budget_epsilon=BUDGET)
        yield Federation(settings, store, manager, server.port, tokens, root)
    manager.shutdown(stop_running=True)
    store.close()


def _finish(processes: list[subprocess.Popen[bytes]], timeout: float = 240) -> None:
    for process in processes:
        assert process.wait(timeout=timeout) == 0, f"site process exited with {process.returncode}"


def test_two_sites_train_one_joint_session_and_download_v1(federation: Federation) -> None:
    requests = {site: federation.request(site) for site in SITES}
    trainers = [federation.train(site, rid) for site, rid in requests.items()]
    session = federation.manager.approve(list(requests.values()), FAST)
    final = federation.manager.wait(session.id, timeout_s=300)
    _finish(trainers)

    assert final.state == SessionState.COMPLETED, final.reason
    version = federation.store.get_version(final.version_number)
    assert version.parents == [session.base_version] and version.kind == "session"
    assert version.participants == sorted(SITES)
    charges = {c.site: c for c in federation.store.privacy_charges(session_id=session.id)}
    assert {site: report["epsilon"] for site, report in version.dp_summary.items()} == {
        site: charges[site].epsilon for site in SITES}
    for site in SITES:  # each site's own ledger holds exactly the server's schedule, round by round
        plan = session.config["sites"][site]
        ledger = site_ledger(load_profile(federation.settings, site))
        assert [e.event for e in ledger.entries(str(session.id))] == [
            DpSchedule.from_dict(plan["schedule"]).event()] * 2
    phases = {(r.round_number, r.phase) for r in federation.store.session_rounds(session.id)}
    assert phases == {(1, "fit"), (2, "fit")} and "evaluate" not in version.metrics
    for site, rid in requests.items():
        assert federation.store.get_request(rid).state == RequestState.COMPLETED
        with federation.connection(site) as connection:
            kinds = [n.kind for n in connection.notifications()]
            assert "new_version" in kinds
            path, digest = connection.download_version(version.number, federation.root / site / "v.npz")
        assert digest == version.sha256 == sha256_file(path)


def test_two_sessions_at_once_both_commit_and_the_later_one_is_merged(federation: Federation) -> None:
    head_before = federation.store.head().number
    first, second = (federation.request(site, rounds=1) for site in SITES)
    trainers = [federation.train(SITES[0], first), federation.train(SITES[1], second)]
    options = ApprovalOptions(rounds=1, local_epochs=1, batch_size=8, join_timeout_s=180)
    sessions = [federation.manager.approve([first], options), federation.manager.approve([second], options)]
    assert sessions[0].port != sessions[1].port
    finals = [federation.manager.wait(s.id, timeout_s=300) for s in sessions]
    _finish(trainers)

    assert [f.state for f in finals] == [SessionState.COMPLETED] * 2
    versions = [federation.store.get_version(f.version_number) for f in finals]
    numbers = sorted(v.number for v in versions)
    assert numbers == [head_before + 1, head_before + 2]
    later = federation.store.get_version(numbers[1])
    assert later.kind == "merge" and later.parents == [numbers[0], head_before]
    assert 0 < later.merge_weight < 1 and later.staleness == 1


def test_killed_session_process_fails_with_reason_and_frees_its_port(federation: Federation) -> None:
    request = federation.request(SITES[0], rounds=1)
    session = federation.manager.approve([request], ApprovalOptions(rounds=1, join_timeout_s=600))
    deadline = time.monotonic() + 30
    while federation.store.get_session(session.id).pid is None and time.monotonic() < deadline:
        time.sleep(0.1)
    os.kill(session.pid, signal.SIGKILL)
    final = federation.manager.wait(session.id, timeout_s=30)

    assert final.state == SessionState.FAILED
    assert "killed by signal 9" in final.reason
    assert federation.store.get_request(request).state == RequestState.FAILED
    with federation.connection(SITES[0]) as connection:
        assert any(n.kind == "session_failed" for n in connection.notifications())
    again = federation.manager.approve([federation.request(SITES[0], rounds=1)],
                                       ApprovalOptions(rounds=1, join_timeout_s=600))
    assert again.port == session.port, "the dead session's port went back to the pool"
    federation.manager.stop(again.id, reason="test over")
