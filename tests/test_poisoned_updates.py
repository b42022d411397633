"""Poisoned or broken updates are dropped from the aggregate and logged; the session goes on if it can."""

from __future__ import annotations

import numpy as np
import pytest

from server.sessions.update_bound import honest_update_bound
from server.sessions.update_validation import update_problem
from server.store import Store
from server.store.lifecycle import SessionState
from tests.flower_fakes import ScriptedClient, free_port, run_in_thread, serve_session
from shared.privacy_accounting import DpSchedule
from tests.privacy_fixtures import charged_session

pytestmark = pytest.mark.slow

V0 = [np.zeros((6, 4), np.float32), np.zeros(4, np.float32)]
POISONS = {
    "wrong shape": lambda ws: [np.zeros((7, 4), np.float32), ws[1]],
    "missing array": lambda ws: ws[:1],
    "NaN": lambda ws: [w * np.nan for w in ws],
    "Inf": lambda ws: [w + np.inf for w in ws],
    "huge norm": lambda ws: [w + 1e6 for w in ws],
}


@pytest.mark.parametrize("poison", sorted(POISONS))
def test_poisoned_update_is_dropped_logged_and_the_rest_is_averaged(store: Store, sites: dict[str, str],
                                                                   poison: str) -> None:
    store.ensure_initial_version(V0, metadata={"model": {}})
    config = {"proximal_mu": 0.0, "min_clients": 2, "join_timeout_s": 30, "round_timeout_s": 60,
              "max_update_norm": 100.0, "learning_rate": 0.1}
    session = charged_session(store, {"alpha": 10, "beta": 10, "gamma": 1000}, rounds=1, config=config)
    port = free_port()
    store.mark_session_running(session.id, port=port, pid=1)
    outcome = serve_session(store, session.id, port)
    honest = [ScriptedClient(s, store.session_secret(session.id, s), 10, lambda ws, d=d: [w + d for w in ws])
              for s, d in (("alpha", 1.0), ("beta", 3.0))]
    attacker = ScriptedClient("gamma", store.session_secret(session.id, "gamma"), 1000, POISONS[poison])
    for client in (*honest, attacker):
        run_in_thread(port, client)
    outcome["thread"].join(timeout=120)

    assert outcome.get("version") == 1, outcome
    np.testing.assert_allclose(store.load_weights(1)[0], np.full((6, 4), 2.0))  # (1 + 3) / 2, gamma ignored
    assert store.get_version(1).participants == ["alpha", "beta"]
    drops = store.audit_trail(action="result_dropped")
    assert [d.detail["from"] for d in drops] == ["gamma"]
    assert "update rejected" in drops[0].detail["reason"]
    assert store.get_session(session.id).state == SessionState.COMPLETED


@pytest.mark.parametrize(
    ("candidate", "problem"),
    [
        ([np.zeros((6, 4), np.float32), np.zeros(4, np.float32)], None),
        ([np.zeros((6, 4), np.int32), np.zeros(4, np.float32)], "dtype"),
        ([np.zeros((6, 4), np.float32)], "expected 2 weight arrays"),
        ([np.full((6, 4), 30.0, np.float32), np.zeros(4, np.float32)], "exceeds the bound"),
        ([np.full((6, 4), 20.0, np.float32), np.zeros(4, np.float32)], None),  # norm 98: within 100
        ([np.zeros((6, 4), np.float32), np.array([0, 0, np.nan, 0], np.float32)], "array 1 contains NaN"),
        ([np.array([[np.inf] * 4] * 6, np.float32), np.zeros(4, np.float32)], "array 0 contains NaN or Inf"),
        # finite, but its float32 square overflows: still the norm, not "NaN or Inf"
        ([np.full((6, 4), 3e38, np.float32), np.zeros(4, np.float32)], "exceeds the bound"),
        ([np.full((6, 4), 1.0, np.float64), np.zeros(4, np.float16)], None),  # other float widths pass
    ],
)
def test_update_problem_names_what_is_wrong(candidate: list[np.ndarray], problem: str | None) -> None:
    found = update_problem(candidate, V0, max_update_norm=100.0)
    assert (found is None) if problem is None else (problem in found)


@pytest.mark.parametrize(("claimed", "approved"), [(10**9, 10), (-99, 100)])
def test_a_site_claiming_another_example_count_is_dropped(store: Store, sites: dict[str, str],
                                                          claimed: int, approved: int) -> None:
    """Issue 14's probes: 10^9 examples made the global model the claimant's update (cosine 1.000);
    -99 against a peer's 100 moved the model 138x the norm bound. The weight is the approved count."""
    store.ensure_initial_version(V0, metadata={"model": {}})
    config = {"proximal_mu": 0.0, "min_clients": 2, "join_timeout_s": 30, "round_timeout_s": 60,
              "max_update_norm": 100.0, "learning_rate": 0.1}
    session = charged_session(store, {"alpha": approved, "beta": approved, "gamma": approved}, rounds=1,
                              config=config)
    port = free_port()
    store.mark_session_running(session.id, port=port, pid=1)
    outcome = serve_session(store, session.id, port)
    for site, examples, shift in (("alpha", approved, 1.0), ("beta", approved, 3.0), ("gamma", claimed, 10.0)):
        run_in_thread(port, ScriptedClient(site, store.session_secret(session.id, site), examples,
                                           lambda ws, d=shift: [w + d for w in ws]))
    outcome["thread"].join(timeout=120)

    assert outcome.get("version") == 1, outcome
    np.testing.assert_allclose(store.load_weights(1)[0], np.full((6, 4), 2.0))  # the honest mean, gamma out
    drops = store.audit_trail(action="result_dropped")
    assert [(d.detail["from"], d.detail["reason"]) for d in drops] == [
        ("gamma", f"example count {claimed} is not the approved {approved}")]


def test_by_default_each_site_is_held_to_its_own_schedule_bound(store: Store, sites: dict[str, str]) -> None:
    """No fixed ``max_update_norm``: the bound is how far the site's approved DP-SGD schedule can move it."""
    store.ensure_initial_version(V0, metadata={"model": {}})
    config = {"proximal_mu": 0.0, "min_clients": 2, "join_timeout_s": 30, "round_timeout_s": 60,
              "max_update_norm": None, "learning_rate": 0.1}
    session = charged_session(store, {"alpha": 10, "beta": 10, "gamma": 1000}, rounds=1, config=config)
    bounds = {site: honest_update_bound(DpSchedule.from_dict(plan["schedule"]), examples=plan["examples"],
                                        learning_rate=0.1, trainable_values=28)
              for site, plan in session.config["sites"].items()}
    port = free_port()
    store.mark_session_running(session.id, port=port, pid=1)
    outcome = serve_session(store, session.id, port)
    # each coordinate shifted by d moves the 28 weights by d * sqrt(28)
    shifts = {"alpha": 0.9 * bounds["alpha"], "beta": 0.5 * bounds["beta"], "gamma": 1.1 * bounds["gamma"]}
    for site, norm in shifts.items():
        examples = session.config["sites"][site]["examples"]
        run_in_thread(port, ScriptedClient(site, store.session_secret(session.id, site), examples,
                                           lambda ws, d=norm / np.sqrt(28): [w + d for w in ws]))
    outcome["thread"].join(timeout=120)

    assert outcome.get("version") == 1, outcome
    assert store.get_version(1).participants == ["alpha", "beta"]
    drops = store.audit_trail(action="result_dropped")
    assert [d.detail["from"] for d in drops] == ["gamma"]
    assert f"exceeds the bound {bounds['gamma']:.3g}" in drops[0].detail["reason"]
