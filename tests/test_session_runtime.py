"""A real Flower session (gRPC on loopback) over a real store, with numpy clients."""

from __future__ import annotations

import numpy as np
import pytest

from server.store import Store
from server.store.lifecycle import SessionState
from shared.errors import SessionFailedError
from tests.flower_fakes import ScriptedClient, free_port, run_in_thread, serve_session
from tests.privacy_fixtures import charged_session

pytestmark = pytest.mark.slow

V0 = [np.zeros((6, 4), np.float32), np.zeros(4, np.float32)]


def _session(store: Store, sites: list[str], examples: dict[str, int] | None = None, **config) -> tuple[int, int]:
    store.ensure_initial_version(V0, metadata={"model": {"kind": "test"}})
    examples = examples or dict.fromkeys(sites, 10)
    rounds = int(config.get("rounds", 2))
    full = {"rounds": rounds, "proximal_mu": 0.1, "min_clients": len(sites), "join_timeout_s": 20,
            "round_timeout_s": 60, "max_update_norm": 100.0, "learning_rate": 0.1, **config}
    created = charged_session(store, {s: examples[s] for s in sites}, rounds=rounds, config=full)
    port = free_port()
    store.mark_session_running(created.id, port=port, pid=1)
    return created.id, port


def _shift(by: float):
    return lambda weights: [w + by for w in weights]


def test_joint_session_commits_weighted_fedprox_average(store: Store, sites: dict[str, str]) -> None:
    session_id, port = _session(store, ["alpha", "beta"], {"alpha": 30, "beta": 10})
    outcome = serve_session(store, session_id, port)
    alpha = ScriptedClient("alpha", store.session_secret(session_id, "alpha"), 30, _shift(1.0))
    beta = ScriptedClient("beta", store.session_secret(session_id, "beta"), 10, _shift(-1.0))
    clients = [run_in_thread(port, c) for c in (alpha, beta)]
    outcome["thread"].join(timeout=120)
    for thread in clients:
        thread.join(timeout=30)

    assert outcome.get("version") == 1
    version = store.get_version(1)
    assert version.parents == [0] and version.participants == ["alpha", "beta"]
    # Each round moves the weights by the example-weighted mean shift (30*1 - 10*1) / 40 = 0.5.
    np.testing.assert_allclose(store.load_weights(1)[0], np.full((6, 4), 1.0), atol=1e-6)
    assert alpha.configs[0]["proximal_mu"] == pytest.approx(0.1)
    assert alpha.configs[1]["round"] == 2 and alpha.configs[0]["session_id"] == session_id
    assert store.get_session(session_id).state == SessionState.COMPLETED


def test_result_without_the_session_secret_is_dropped(store: Store, sites: dict[str, str]) -> None:
    session_id, port = _session(store, ["alpha"], rounds=1)
    outcome = serve_session(store, session_id, port)
    honest = ScriptedClient("alpha", store.session_secret(session_id, "alpha"), 10, _shift(1.0))
    intruder = ScriptedClient("alpha", "guessed-secret", 1000, _shift(50.0))
    threads = [run_in_thread(port, c) for c in (honest, intruder)]
    outcome["thread"].join(timeout=120)
    for thread in threads:
        thread.join(timeout=30)

    assert outcome.get("version") == 1
    np.testing.assert_allclose(store.load_weights(1)[1], np.ones(4), atol=1e-6)
    assert intruder.configs == [], "the intruder must never receive the global weights"
    assert store.verify_audit().ok


def test_nan_update_fails_a_round_that_needs_every_site(store: Store, sites: dict[str, str]) -> None:
    session_id, port = _session(store, ["alpha", "beta"], rounds=1)
    outcome = serve_session(store, session_id, port)
    good = ScriptedClient("alpha", store.session_secret(session_id, "alpha"), 10, _shift(1.0))
    broken = ScriptedClient("beta", store.session_secret(session_id, "beta"), 10,
                            lambda ws: [w * np.nan for w in ws])
    threads = [run_in_thread(port, c) for c in (good, broken)]
    outcome["thread"].join(timeout=120)
    for thread in threads:
        thread.join(timeout=30)

    assert isinstance(outcome.get("error"), SessionFailedError)
    session = store.get_session(session_id)
    assert session.state == SessionState.FAILED
    assert "missing: beta" in session.reason
    assert [v.number for v in store.list_versions()] == [0]


def test_sites_that_never_connect_fail_the_session_with_a_reason(store: Store, sites: dict[str, str]) -> None:
    session_id, port = _session(store, ["alpha", "beta"], join_timeout_s=2)
    outcome = serve_session(store, session_id, port)
    run_in_thread(port, ScriptedClient("alpha", store.session_secret(session_id, "alpha"), 10, _shift(1.0)))
    outcome["thread"].join(timeout=60)

    session = store.get_session(session_id)
    assert session.state == SessionState.FAILED
    assert "1 of 2 site(s) connected within 2 s (missing: beta)" in session.reason


def test_a_plain_sessions_merge_is_not_evaluated(store: Store, sites: dict[str, str]) -> None:
    """A plain session scores nothing (validation metrics may not leave a site in clear): its merge
    into a moved head carries no accuracy, and every view says "not evaluated"."""
    from server.history.version_views import validation_text

    session_id, port = _session(store, ["alpha", "beta"], rounds=1)
    other = charged_session(store, {"gamma": 10}, rounds=1)
    store.mark_session_running(other.id, port=free_port(), pid=2)
    store.commit_session_result(other.id, [w + 4.0 for w in V0], metrics={}, dp_summary={},
                                participants=["gamma"], rounds=1)
    outcome = serve_session(store, session_id, port)
    for site in ("alpha", "beta"):
        run_in_thread(port, ScriptedClient(site, store.session_secret(session_id, site), 10, _shift(1.0)))
    outcome["thread"].join(timeout=120)

    assert outcome.get("version") == 2, outcome
    merged = store.get_version(2)
    assert (merged.kind, merged.parents, merged.staleness) == ("merge", [1, 0], 1)
    a = merged.merge_weight
    np.testing.assert_allclose(store.load_weights(2)[0], (1 - a) * 4.0 + a * 1.0, rtol=1e-6)
    assert set(merged.metrics) == {"fit"} and validation_text(merged) == "not evaluated"
    assert validation_text(store.get_version(0)) == "not evaluated"  # v0 was never scored either
