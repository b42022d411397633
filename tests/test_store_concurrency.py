"""Several processes writing one database at once: nothing lost, no 'database is locked', no deadlock."""

from __future__ import annotations

import multiprocessing

import numpy as np
import pytest

from server.store import Store
from shared.settings import Settings
from tests import store_workers
from tests.conftest_store import make_weights, running_session

SPAWN = multiprocessing.get_context("spawn")


def run_together(target, arg_sets: list[tuple]) -> None:
    """Start one process per argument tuple, release them at once, and require clean exits."""
    start = SPAWN.Event()
    processes = [SPAWN.Process(target=target, args=(*args, start)) for args in arg_sets]
    for process in processes:
        process.start()
    start.set()
    for process in processes:
        process.join(timeout=120)
    codes = [process.exitcode for process in processes]
    for process in processes:
        if process.is_alive():
            process.kill()
    assert codes == [0] * len(processes), f"worker exit codes {codes} (None = hung)"


@pytest.mark.slow
def test_four_processes_submit_and_notify_without_loss(
    store_settings: Settings, store: Store
) -> None:
    names = ["p0", "p1", "p2", "p3"]
    for name in names:
        store.enrol_site(name)
    run_together(store_workers.submit_and_notify, [(store_settings, name, 50) for name in names])
    requests = store.list_requests()
    assert len(requests) == 200 and len({r.id for r in requests}) == 200
    for name in names:
        assert sorted(r.note for r in store.list_requests(site=name)) == sorted(
            f"{name}-{i}" for i in range(50)
        )
        assert sorted(n.payload["i"] for n in store.notifications(name)) == list(range(50))
    verdict = store.verify_audit()
    assert verdict.ok and verdict.rows_checked == 4 + 200  # enrolments + submissions, one chain


@pytest.mark.slow
def test_two_concurrent_commits_make_one_plain_and_one_merged_version(
    store_settings: Settings, store: Store, sites: dict, v0: list
) -> None:
    first, second = running_session(store, "alpha"), running_session(store, "beta")
    run_together(
        store_workers.commit_result,
        [(store_settings, first.id, "alpha", 101), (store_settings, second.id, "beta", 202)],
    )
    v1, v2 = store.get_version(1), store.get_version(2)
    assert [v.number for v in store.list_versions()] == [0, 1, 2]
    assert (v1.kind, v1.parents, v1.merge_weight) == ("session", [0], None)
    assert (v2.kind, v2.parents, v2.staleness) == ("merge", [1, 0], 1)
    assert {v1.session_id, v2.session_id} == {first.id, second.id}
    a = 0.5 / np.sqrt(2)
    assert v2.merge_weight == pytest.approx(a)
    candidate = make_weights(v2.metrics["seed"])
    expected = [
        ((1 - a) * h.astype(np.float64) + a * c.astype(np.float64)).astype(h.dtype)
        for h, c in zip(store.load_weights(1), candidate, strict=True)
    ]
    for got, want in zip(store.load_weights(2), expected, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-6)
    assert store.verify_audit().ok
