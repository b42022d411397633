"""The server's side of the privacy contract (issue 13): schedules decided at approval from public
inputs only, its own per-site ledger and the budgets it enforces, per-site configs, and what a
site is shown of the others. Real store, real request socket on loopback, real Flower sessions.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from server.sessions.privacy_plan import plan_sites, privacy_summary, session_rounds
from server.store import Store
from shared.errors import ConfigError, PrivacyBudgetExceeded, StoreError
from shared.privacy_accounting import DpSchedule, compose, epsilon_for, spend
from tests.conftest_socket import Env
from tests.conftest_store import make_weights
from tests.flower_fakes import ScriptedClient, free_port, run_in_thread, serve_session
from tests.privacy_fixtures import DELTA, charged_session, declaration

NOISE = {"noise_multiplier": 1.1, "delta": DELTA, "l2_norm_clip": 1.0}


def _request(store: Store, site: str, *, rounds: int = 2, epochs: int = 1, examples: int = 150,
             dp: dict | None = None, budget_epsilon: float = 10.0):
    return store.submit_request(site, rounds=rounds, local_epochs=epochs, dp=dp or NOISE,
                                declaration=declaration(examples, budget_epsilon=budget_epsilon))


def _approve(store: Store, requests: list, *, rounds: int | None = None, batch_size: int = 16):
    """What ``SessionManager.approve`` does before it spawns the process: plan, then create and charge."""
    rounds = session_rounds(requests, rounds)
    plans = plan_sites(store, requests, rounds=rounds, local_epochs=None, batch_size=batch_size)
    config = {"rounds": rounds, "sites": {p.site: p.config() for p in plans}}
    return store.create_session_charged([r.id for r in requests], [p.charge() for p in plans], config=config), plans


# ----------------------------------------------------------------- planning at approval


def test_each_sites_schedule_follows_from_its_declared_count_and_request(store: Store, sites: dict, v0) -> None:
    north = _request(store, "alpha", epochs=2, examples=150)
    south = _request(store, "beta", examples=80, dp={"target_epsilon": 2.0, "delta": DELTA, "l2_norm_clip": 0.5})
    session, plans = _approve(store, [north, south])
    by_site = {p.site: p for p in plans}

    assert by_site["alpha"].schedule == DpSchedule.for_epochs(noise_multiplier=1.1, l2_norm_clip=1.0, examples=150,
                                                              batch_size=16, epochs=2)
    beta = by_site["beta"].schedule
    assert (beta.sampling_rate, beta.steps, beta.l2_norm_clip) == (16 / 80, 5, 0.5)
    assert 0.99 * 2.0 <= epsilon_for(beta.session_event(2), DELTA) <= 2.0  # target met via PLD calibration
    assert session.config["sites"]["beta"]["schedule"] == beta.to_dict()
    charged = {c.site: c for c in store.privacy_charges(session_id=session.id)}
    assert charged["beta"].event == beta.session_event(2)
    assert charged["beta"].epsilon == pytest.approx(epsilon_for(beta.session_event(2), DELTA))
    assert charged["beta"].epsilon_rdp > charged["beta"].epsilon  # RDP beside it, the looser bound


def test_a_joint_session_never_trains_a_site_more_rounds_or_epochs_than_it_asked(store: Store, sites: dict,
                                                                                v0) -> None:
    long, short = _request(store, "alpha", rounds=3, epochs=3), _request(store, "beta", rounds=2, epochs=1)
    assert session_rounds([long, short], None) == 2  # it used to be the largest, 3
    with pytest.raises(ConfigError, match=r"cannot run 3 round\(s\): REQ-2 \(beta\) asked for 2") as refused:
        session_rounds([long, short], 3)
    assert "at most 2" in refused.value.hint
    plans = {p.site: p for p in plan_sites(store, [long, short], rounds=2, local_epochs=None, batch_size=16)}
    assert (plans["alpha"].local_epochs, plans["beta"].local_epochs) == (3, 1)  # each its own, not the max
    capped = {p.site: p for p in plan_sites(store, [long, short], rounds=2, local_epochs=2, batch_size=16)}
    assert (capped["alpha"].local_epochs, capped["beta"].local_epochs) == (2, 1)


def test_a_request_without_a_declared_count_cannot_be_planned(store: Store, sites: dict, v0) -> None:
    bare = store.submit_request("alpha", rounds=1, local_epochs=1, dp=NOISE)
    with pytest.raises(ConfigError, match="declares no training-image count"):
        plan_sites(store, [bare], rounds=1, local_epochs=None, batch_size=16)


# ----------------------------------------------------------------- the server's ledger and budgets


def test_approvals_compose_in_the_ledger_and_one_past_the_budget_is_refused_with_the_numbers(store: Store,
                                                                                          v0) -> None:
    store.enrol_site("tight", budget_epsilon=4.0)
    first, _ = _approve(store, [_request(store, "tight")])
    (charge,) = store.privacy_charges(site="tight")
    assert 2.0 < charge.total_epsilon < 4.0

    second = _request(store, "tight")
    with pytest.raises(PrivacyBudgetExceeded) as refused:
        _approve(store, [second])
    message = str(refused.value)
    event = charge.event
    total = spend(compose([event, event]), DELTA)
    assert f"would reach epsilon {total.epsilon:.3f}" in message and f"RDP {total.epsilon_rdp:.3f}" in message
    assert "effective budget epsilon 4" in message and "enrolment budget 4" in message
    assert f"This session alone: epsilon {charge.epsilon:.3f}" in message and "sigma 1.100" in message
    assert [s.id for s in store.list_sessions()] == [first.id]  # nothing of the refused approval remains
    assert len(store.privacy_charges(site="tight")) == 1
    assert store.get_request(second.id).state.value == "PENDING"


@pytest.mark.parametrize(("enrolment", "declared", "binding"), [(10.0, 2.0, "site's 2"), (2.0, 100.0, "enrolment budget 2")])
def test_the_effective_budget_is_the_lower_of_the_sites_and_the_enrolment_one(store: Store, v0, enrolment: float,
                                                                              declared: float, binding: str) -> None:
    """A site that re-runs setup with a larger budget (100) still stops at the admin's (2)."""
    store.enrol_site("site", budget_epsilon=enrolment)
    with pytest.raises(PrivacyBudgetExceeded, match=binding):
        _approve(store, [_request(store, "site", budget_epsilon=declared)])
    assert store.privacy_charges() == []


# ----------------------------------------------------------------- what a site is sent and shown


def test_requests_with_a_delta_above_one_tenth_over_n_are_refused_at_the_socket(env: Env) -> None:
    with env.connect() as alpha:
        with pytest.raises(StoreError, match=r"request's delta 0.001 is above 1/\(10 n\) = 0.000667 for n = 150"):
            alpha.submit_request(rounds=1, local_epochs=1, dp={**NOISE, "delta": 1e-3}, declaration=declaration(150))
        assert alpha.list_requests() == []
        accepted = alpha.submit_request(rounds=1, local_epochs=1, dp=NOISE, declaration=declaration(150, exact=False))
        assert accepted.declaration["examples"] == 150


def test_a_ticket_carries_only_the_sites_own_plan(env: Env) -> None:
    env.store.ensure_initial_version(make_weights(0), metadata={})
    session = charged_session(env.store, {"alpha": 150, "beta": 80}, rounds=2, config={"proximal_mu": 0.1})
    with env.connect() as alpha:
        ticket = alpha.session_ticket(session.request_ids[0])
    plan = ticket.config["site"]
    assert plan == session.config["sites"]["alpha"] and plan["examples"] == 150
    assert "sites" not in ticket.config and "beta" not in json.dumps(ticket.config)


def test_a_sites_version_view_holds_aggregates_and_its_own_privacy_only(env: Env) -> None:
    env.store.ensure_initial_version(make_weights(0), metadata={})
    session = charged_session(env.store, {"alpha": 150, "beta": 80}, rounds=1)
    env.store.mark_session_running(session.id, port=8123, pid=1)
    env.store.commit_session_result(session.id, make_weights(1), metrics={"fit": {"examples": 230, "sites": 2}},
                                    dp_summary=privacy_summary(env.store, session.id, ["alpha", "beta"]),
                                    participants=["alpha", "beta"], rounds=1)
    with env.connect() as alpha:
        (version,) = alpha.list_versions()
    assert version.participants == ["alpha"] and version.sites == 2
    assert set(version.dp_summary) == {"alpha"} and version.metrics == {"fit": {"sites": 2}}
    shown = version.model_dump(mode="json")
    shown.pop("created_at")  # a timestamp's digits may spell anything
    text = json.dumps(shown)
    assert "beta" not in text and not re.search(r"\b(80|230)\b", text)


# ----------------------------------------------------------------- a real session


@pytest.mark.slow
def test_each_site_gets_its_own_schedule_and_the_server_keeps_only_aggregates(store: Store, sites: dict) -> None:
    store.ensure_initial_version([np.zeros((6, 4), np.float32), np.zeros(4, np.float32)], metadata={"model": {}})
    config = {"proximal_mu": 0.1, "min_clients": 1, "join_timeout_s": 20, "round_timeout_s": 60,
              "max_update_norm": 100.0, "learning_rate": 0.1}
    session = charged_session(store, {"alpha": 30, "beta": 10}, rounds=2, config=config)
    port = free_port()
    store.mark_session_running(session.id, port=port, pid=1)
    outcome = serve_session(store, session.id, port)
    alpha = ScriptedClient("alpha", store.session_secret(session.id, "alpha"), 30, lambda ws: [w + 1 for w in ws])
    liar = ScriptedClient("beta", store.session_secret(session.id, "beta"), 1000, lambda ws: [w - 1 for w in ws])
    threads = [run_in_thread(port, c) for c in (alpha, liar)]
    outcome["thread"].join(timeout=120)
    for thread in threads:
        thread.join(timeout=30)

    assert outcome.get("version") == 1, outcome
    for client, plan in ((alpha, session.config["sites"]["alpha"]), (liar, session.config["sites"]["beta"])):
        assert {k: client.configs[0][f"dp_{k}"] for k in plan["schedule"]} == plan["schedule"]
        assert client.configs[0]["examples"] == plan["examples"]
    rounds = store.session_rounds(session.id)
    assert {r.phase for r in rounds} == {"fit"}, "no evaluate round: validation metrics never leave in the clear"
    assert all(r.per_site == {"alpha": {"examples": 30}} for r in rounds)  # the scripted loss/epsilon are dropped
    assert all("loss" not in r.metrics and "accuracy" not in r.metrics for r in rounds)
    dropped = [e.detail for e in store.audit_trail() if e.action == "result_dropped"]
    assert any("example count 1000 is not the approved 10" in d["reason"] for d in dropped)
    version = store.get_version(1)
    assert version.participants == ["alpha"] and "evaluate" not in version.metrics
    (charge,) = store.privacy_charges(session_id=session.id, site="alpha")
    assert version.dp_summary["alpha"]["epsilon"] == charge.epsilon  # the server's figure, not the site's 0.5
    np.testing.assert_allclose(store.load_weights(1)[1], np.full(4, 2.0), atol=1e-6)
