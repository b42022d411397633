"""A demo-sized history for the dashboard tests, written through the Store API as session processes write it.

v0 initial; v1 from a joint session of alpha+beta; sessions 2 (gamma) and 3 (all three) both
start from v1, 2 commits v2 and 3 is merged into it as v3 (a merge with weight and staleness);
v3 is released to alpha; session 4 (beta) fails. A site-sent reason with markup lands in the
audit log, and secret-looking keys in an audit row and a session's config, so the tests can
prove escaping and redaction. No TensorFlow: weights are small numpy arrays.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from server.store import Store
from server.store.lifecycle import SessionState
from shared.settings import Settings, load_settings
from tests.conftest_store import commit_scored
from tests.privacy_fixtures import charged_session

SITE_EXAMPLES = {"alpha": 40, "beta": 24, "gamma": 32}
#: per-site values that sessions record but no dashboard response may show
PER_SITE_VALUES = ("9.1357", "8.2468", "0.4242", "42.4%")
HOSTILE_TEXT = '<script>alert("site")</script><img src=x onerror=alert(1)>'
SECRET_VALUE = "s3cr3t-value-that-must-never-show"


def weights(seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((8, 4)).astype(np.float32), rng.standard_normal(4).astype(np.float32)]


def run_session(store: Store, sites: list[str], *, rounds: int, eps: float, totals: dict[str, float],
                config: dict | None = None) -> int:
    """Approve one request per site (the server ledger charges it) and record every round like a session process."""
    session = charged_session(store, {s: SITE_EXAMPLES[s] for s in sites}, rounds=rounds,
                              config={"proximal_mu": 0.01, **(config or {})})
    store.mark_session_running(session.id, port=9000 + session.id, pid=100 + session.id)
    for r in range(1, rounds + 1):
        per_fit = {s: {"loss": 9.1357, "epsilon": eps * r / rounds, "epsilon_total": totals[s] + eps * r / rounds,
                       "delta": 1e-5, "noise_multiplier": 1.1, "examples": SITE_EXAMPLES[s]} for s in sites}
        store.record_round(session.id, round_number=r, phase="fit", per_site=per_fit,
                           metrics={"loss": 1.3 - 0.1 * r, "accuracy": 0.3 + 0.1 * r, "examples": 64})
        store.record_round(session.id, round_number=r, phase="evaluate",
                           metrics={"loss": 1.35 - 0.1 * r, "accuracy": 0.25 + 0.1 * r, "examples": 16},
                           per_site={s: {"loss": 8.2468, "accuracy": 0.4242, "examples": 8} for s in sites})
    for s in sites:
        totals[s] += eps
    return session.id


def commit(store: Store, session_id: int, sites: list[str], *, seed: int, rounds: int, accuracy: float) -> int:
    version = commit_scored(
        store, session_id, weights(seed),
        metrics={"fit": {"loss": 1.0, "accuracy": accuracy - 0.05, "examples": 64},
                 "evaluate": {"loss": 1.1, "accuracy": accuracy, "examples": 16, "sites": len(sites)}},
        dp_summary={s: {"epsilon": 1.5, "delta": 1e-5, "noise_multiplier": 1.1, "examples": SITE_EXAMPLES[s]}
                    for s in sites},
        participants=sites, rounds=rounds)
    return version.number


def build_history(home: Path) -> Settings:
    """Write the history described above into a new store under ``home``; returns its settings."""
    settings = load_settings(home=home)
    store = Store.open(settings)
    try:
        store.ensure_initial_version(weights(0), metadata={"model": {"image_size": 32}})
        for site in SITE_EXAMPLES:
            store.enrol_site(site)
        totals = dict.fromkeys(SITE_EXAMPLES, 0.0)
        first = run_session(store, ["alpha", "beta"], rounds=3, eps=2.0, totals=totals)
        commit(store, first, ["alpha", "beta"], seed=1, rounds=3, accuracy=0.55)
        alone = run_session(store, ["gamma"], rounds=2, eps=1.0, totals=totals)
        joint = run_session(store, ["alpha", "beta", "gamma"], rounds=2, eps=1.0, totals=totals,
                            config={"secagg_private_key": SECRET_VALUE})
        commit(store, alone, ["gamma"], seed=2, rounds=2, accuracy=0.6)
        commit(store, joint, ["alpha", "beta", "gamma"], seed=3, rounds=2, accuracy=0.7)
        store.export_version(3, ["alpha"])
        failing = run_session(store, ["beta"], rounds=2, eps=1.0, totals=totals)
        store.audit("beta", "result_dropped", {"round": 1, "reason": HOSTILE_TEXT, "session_secret": SECRET_VALUE})
        store.finish_session(failing, state=SessionState.FAILED, reason=f"site said: {HOSTILE_TEXT}")
    finally:
        store.close()
    return settings
