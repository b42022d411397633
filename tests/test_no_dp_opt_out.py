"""Training without DP (noise 0) exists only for sites the admin enrolled with ``allow_no_dp``.

It used to be a site-profile flag a site could edit in; now the grant lives in the server's
``sites`` table, the server refuses such requests and approvals otherwise, and the site's ledger
accepts a no-noise run only when its session ticket carries the grant.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from pydantic import ValidationError

from client.menu.actions import planned_epsilon, setup_site
from client.site_profile import SiteProfile, load_profile, profile_path
from client.training.ledger import PrivacyLedger
from client.training.privacy_contract import site_ledger
from server.sessions.manager import ApprovalOptions, SessionManager
from server.store.records import PlannedCharge
from shared.errors import PrivacyBudgetExceeded, StoreError
from shared.protocol import DpSpec
from shared.settings import load_settings
from tests.conftest_socket import Env
from tests.conftest_store import make_weights
from tests.privacy_fixtures import declaration, schedule

NO_NOISE = schedule(100, sigma=0.0, batch_size=16).event()
NO_DP = {"noise_multiplier": 0.0, "delta": 1e-5, "l2_norm_clip": 1.0}


def test_the_wire_accepts_noise_zero_but_not_negative_noise() -> None:
    assert DpSpec(noise_multiplier=0, delta=1e-5, l2_norm_clip=1.0).noise_multiplier == 0
    with pytest.raises(ValidationError):
        DpSpec(noise_multiplier=-0.1, delta=1e-5, l2_norm_clip=1.0)


def test_a_default_ledger_refuses_a_run_without_noise(tmp_path: Path) -> None:
    ledger = PrivacyLedger(tmp_path / "l.sqlite", max_epsilon=1e6, delta=1e-5)
    with pytest.raises(PrivacyBudgetExceeded):
        ledger.charge("s1", NO_NOISE)
    assert ledger.entries() == []


def test_a_granted_ledger_records_it_and_has_no_finite_guarantee_afterwards(tmp_path: Path) -> None:
    ledger = PrivacyLedger(tmp_path / "l.sqlite", max_epsilon=10, delta=1e-5, allow_no_dp=True)
    assert math.isinf(ledger.charge("s1", NO_NOISE))
    assert math.isinf(ledger.spent()) and ledger.remaining() == 0
    with pytest.raises(PrivacyBudgetExceeded):  # no DP run fits a budget after a non-private one
        ledger.charge("s2", schedule(100, sigma=5.0, batch_size=16).event())


def test_a_profile_cannot_grant_itself_training_without_dp(tiny_dataset: Path, tmp_path: Path) -> None:
    settings = load_settings(home=tmp_path / "home")
    with pytest.raises(Exception, match="allow_no_dp"):
        setup_site(settings, site="lab", token="t", data_root=tiny_dataset, allow_no_dp=True)
    setup_site(settings, site="lab", token="t", data_root=tiny_dataset)
    path = profile_path(settings, "lab")
    path.write_text(json.dumps({**json.loads(path.read_text()), "allow_no_dp": True}))  # an old or edited profile

    loaded = load_profile(settings, "lab")
    assert isinstance(loaded, SiteProfile) and "allow_no_dp" not in loaded.model_dump()
    with pytest.raises(PrivacyBudgetExceeded):
        site_ledger(loaded).charge("s1", NO_NOISE)
    assert math.isinf(site_ledger(loaded, {"allow_no_dp": True}).charge("s1", NO_NOISE))  # the server's grant
    assert math.isinf(planned_epsilon(loaded, rounds=1, local_epochs=1, dp=NO_DP))  # the server decides


@pytest.mark.parametrize("granted", [False, True])
def test_the_server_refuses_a_no_dp_request_unless_the_admin_granted_it(tmp_path: Path, granted: bool) -> None:
    env = Env(tmp_path)
    try:
        token = env.store.enrol_site("bench", allow_no_dp=granted)
        env.tokens["bench"] = token
        with env.connect("bench") as bench:
            if granted:
                assert bench.submit_request(rounds=1, local_epochs=1, dp=NO_DP,
                                            declaration=declaration(100)).state == "PENDING"
            else:
                with pytest.raises(StoreError, match="may not train without noise"):
                    bench.submit_request(rounds=1, local_epochs=1, dp=NO_DP, declaration=declaration(100))
                assert bench.list_requests() == []
    finally:
        env.close()


def test_an_approval_without_noise_needs_the_grant_and_is_charged_as_no_dp(tmp_path: Path) -> None:
    settings = load_settings(home=tmp_path / "home", request_port=0)
    env = Env(tmp_path / "server")
    store = env.store
    try:
        store.ensure_initial_version(make_weights(0), metadata={"model": {}})
        store.enrol_site("granted", allow_no_dp=True)
        queued = store.submit_request("alpha", rounds=1, local_epochs=1, dp=NO_DP, declaration=declaration(100))
        manager = SessionManager(store, settings)
        with pytest.raises(PrivacyBudgetExceeded, match="without noise"):
            manager.approve([queued.id], ApprovalOptions(rounds=1))
        assert store.list_sessions() == [] and store.privacy_charges() == []

        allowed = store.submit_request("granted", rounds=1, local_epochs=1, dp=NO_DP, declaration=declaration(100))
        plan = PlannedCharge("granted", allowed.id, schedule(100, sigma=0.0), 1, 100)
        session = store.create_session_charged([allowed.id], [plan], config={"rounds": 1})
        (charge,) = store.privacy_charges(session_id=session.id)
        assert charge.epsilon is None and charge.total_epsilon is None  # shown as "inf (no DP)"
    finally:
        env.close()

