"""Versions: v0, lineage, FedAsync merges (checked numerically), checksums, rollback, clean-up, export."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from server.sessions.merge import commit_result, merge_weight, merge_weights
from server.store import Store
from server.store.lifecycle import RequestState, SessionState
from shared.errors import (
    AuthError,
    HeadMovedError,
    IllegalTransitionError,
    IntegrityError,
    NotFoundError,
    StoreError,
)
from tests.conftest_store import make_weights, running_session


def commit(
    store: Store, session_id: int, weights: list[np.ndarray], sites: list[str], alpha: float | None = None
) -> object:
    return commit_result(
        store,
        session_id,
        weights,
        evaluated=None,
        metrics={"accuracy": 0.5},
        dp_summary={"epsilon": 1.0},
        participants=sites,
        rounds=2,
        **({} if alpha is None else {"alpha": alpha}),
    )


def assert_same(a: list[np.ndarray], b: list[np.ndarray]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.dtype == y.dtype and x.shape == y.shape
        np.testing.assert_array_equal(x, y)


def test_initial_version_is_created_once(store: Store) -> None:
    first = store.ensure_initial_version(make_weights(0), metadata={"model": "resnet50-head"})
    again = store.ensure_initial_version(make_weights(1), metadata={"model": "other"})
    assert again == first
    assert (first.number, first.kind, first.parents, first.metadata) == (
        0,
        "initial",
        [],
        {"model": "resnet50-head"},
    )
    assert (
        first.created_at.tzinfo is not None
        and first.path.is_file()
        and first.size_bytes == first.path.stat().st_size
    )
    assert_same(store.load_weights(0), make_weights(0))
    assert store.head() == first


def test_session_result_on_unchanged_head_is_the_new_version(
    store: Store, sites: dict, v0: list
) -> None:
    session = running_session(store, "alpha", "beta")
    result = make_weights(5)
    version = commit(store, session.id, result, ["alpha", "beta"])
    assert (version.number, version.kind, version.parents, version.session_id) == (
        1,
        "session",
        [0],
        session.id,
    )
    assert version.merge_weight is None and version.staleness == 0
    assert (version.participants, version.rounds, version.metrics, version.dp_summary) == (
        ["alpha", "beta"],
        2,
        {"accuracy": 0.5},
        {"epsilon": 1.0},
    )
    assert_same(store.load_weights(1), result)
    assert store.head().number == 1
    ended = store.get_session(session.id)
    assert (ended.state, ended.version_number) == (SessionState.COMPLETED, 1)
    assert {store.get_request(r).state for r in session.request_ids} == {RequestState.COMPLETED}
    assert store.notifications("beta")[-1].message.startswith("new version v1")
    with pytest.raises(IllegalTransitionError, match="it is COMPLETED"):
        commit(store, session.id, result, ["alpha"])


def test_late_session_is_merged_into_the_moved_head(store: Store, sites: dict, v0: list) -> None:
    early, late = running_session(store, "alpha"), running_session(store, "beta")
    extra = running_session(store, "gamma")
    v1 = commit(store, early.id, make_weights(1), ["alpha"])
    v2 = commit(store, extra.id, make_weights(2), ["gamma"])  # also based on v0: staleness 1
    candidate = make_weights(3)
    v3 = commit(store, late.id, candidate, ["beta"], alpha=0.6)  # base v0, head v2: staleness 2
    assert (v2.kind, v2.parents, v2.staleness) == ("merge", [1, 0], 1)
    assert v2.merge_weight == pytest.approx(0.5 / np.sqrt(2))
    assert (v3.kind, v3.parents, v3.staleness, v3.session_id) == ("merge", [2, 0], 2, late.id)
    a = 0.6 / np.sqrt(3)
    assert v3.merge_weight == pytest.approx(a)
    head = store.load_weights(2)
    merged = store.load_weights(3)
    for h, c, m in zip(head, candidate, merged, strict=True):
        assert m.dtype == h.dtype
        np.testing.assert_allclose(
            m,
            ((1 - a) * h.astype(np.float64) + a * c.astype(np.float64)).astype(h.dtype),
            rtol=1e-6,
        )
    assert v1.number == 1 and [v.number for v in store.list_versions()] == [0, 1, 2, 3]


def test_the_store_commits_only_on_the_head_the_result_was_built_on(store: Store, sites: dict, v0: list) -> None:
    """The store merges nothing: a result built on a head that moved is refused, nothing written, so a
    session can merge again (and drop metrics that scored other weights) before it commits."""
    early, late = running_session(store, "alpha"), running_session(store, "beta")
    commit(store, early.id, make_weights(1), ["alpha"])  # v1; late started from v0
    files = sorted(store.versions_dir.iterdir())
    with pytest.raises(HeadMovedError, match="built on v0, but the head is now v1") as refused:
        store.commit_session_result(late.id, make_weights(2), metrics={}, dp_summary={}, participants=["beta"],
                                    rounds=2)
    assert "Merge the result into the new head" in refused.value.hint
    with pytest.raises(StoreError, match="needs a merge weight"):
        store.commit_session_result(late.id, make_weights(2), metrics={}, dp_summary={}, participants=["beta"],
                                    rounds=2, head=1)
    assert sorted(store.versions_dir.iterdir()) == files and store.head().number == 1
    assert store.get_session(late.id).state is SessionState.RUNNING
    merged = store.commit_session_result(late.id, make_weights(2), metrics={"fit": {}}, dp_summary={},
                                         participants=["beta"], rounds=2, head=1, merge_weight=0.25)
    assert (merged.kind, merged.parents, merged.merge_weight, merged.staleness) == ("merge", [1, 0], 0.25, 1)
    assert_same(store.load_weights(2), make_weights(2))  # exactly what the session merged
    third = running_session(store, "gamma")  # from v2
    with pytest.raises(StoreError, match="needs no merge weight"):
        store.commit_session_result(third.id, make_weights(3), metrics={}, dp_summary={}, participants=["gamma"],
                                    rounds=2, merge_weight=0.5)


def test_commit_checks_participants_and_values(store: Store, sites: dict, v0: list) -> None:
    session = running_session(store, "alpha")
    with pytest.raises(StoreError, match="not approved"):
        commit(store, session.id, make_weights(1), ["alpha", "gamma"])
    bad = make_weights(1)
    bad[0][0, 0] = np.nan
    with pytest.raises(StoreError, match="NaN or Inf"):
        commit(store, session.id, bad, ["alpha"])
    assert store.get_session(session.id).state is SessionState.RUNNING
    assert [v.number for v in store.list_versions()] == [0]


def test_checksum_mismatch_names_the_file(store: Store, v0: list) -> None:
    path = store.version_path(0)
    data = bytearray(path.read_bytes())
    data[-30] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match=str(path)):
        store.load_weights(0)
    path.unlink()
    with pytest.raises(IntegrityError, match=f"{path} is missing"):
        store.load_weights(0)


def test_rollback_makes_a_new_version_with_old_weights(store: Store, sites: dict, v0: list) -> None:
    commit(store, running_session(store, "alpha").id, make_weights(1), ["alpha"])
    back = store.rollback(0, actor="root")
    assert (back.number, back.kind, back.parents, back.sha256) == (
        2,
        "rollback",
        [0],
        store.get_version(0).sha256,
    )
    assert "v0" in back.note and back.path != store.version_path(0)
    assert_same(store.load_weights(2), v0)
    assert store.head().number == 2 and store.get_version(1).kind == "session"
    with pytest.raises(StoreError, match="already the head"):
        store.rollback(2)
    with pytest.raises(NotFoundError):
        store.rollback(9)


def test_session_after_rollback_merges_into_the_rollback(
    store: Store, sites: dict, v0: list
) -> None:
    commit(store, running_session(store, "alpha").id, make_weights(1), ["alpha"])
    late = running_session(store, "beta")  # base v1
    store.rollback(0)
    merged = commit(store, late.id, make_weights(4), ["beta"])
    assert (merged.kind, merged.parents, merged.staleness) == ("merge", [2, 1], 1)


def build_history(store: Store, count: int) -> None:
    """v1..v<count> as a straight line of sessions."""
    for i in range(count):
        commit(store, running_session(store, "alpha").id, make_weights(10 + i), ["alpha"])


def test_cleanup_keeps_last_head_parents_exported_and_reports(
    store: Store, sites: dict, v0: list
) -> None:
    build_history(store, 6)  # v0..v6, each vN has parent vN-1
    store.export_version(2, ["beta"])
    sizes = {v.number: v.size_bytes for v in store.list_versions()}
    stray = store.versions_dir / ".tmp-crashed.part"
    stray.write_bytes(b"half a file")
    plan = store.cleanup(keep_last=2)
    # last 2: v5, v6; head v6; exported v2; parents of those: v4, v1 -> removed v0, v3
    assert plan.dry_run and plan.removed == [0, 3] and plan.kept == [1, 2, 4, 5, 6]
    assert plan.orphans == [stray] and plan.freed_bytes == sizes[0] + sizes[3] + len(b"half a file")
    assert (
        store.version_path(0).is_file()
        and stray.exists()
        and store.get_version(0).pruned_at is None
    )
    done = store.cleanup(keep_last=2, dry_run=False)
    assert (done.removed, done.kept, done.freed_bytes) == (
        plan.removed,
        plan.kept,
        plan.freed_bytes,
    )
    assert set(done.files) == {store.version_path(0), store.version_path(3), stray}
    assert not store.version_path(3).exists() and not stray.exists()
    assert store.get_version(3).pruned_at is not None  # the record stays
    with pytest.raises(NotFoundError, match="removed by clean-up"):
        store.load_weights(3)
    with pytest.raises(NotFoundError, match="removed by clean-up"):
        store.rollback(0)
    assert_same(store.load_weights(2), make_weights(11))
    assert store.cleanup(keep_last=2, dry_run=False).removed == []


def test_cleanup_keeps_the_base_of_a_live_session(store: Store, sites: dict, v0: list) -> None:
    build_history(store, 3)
    live = running_session(store, "beta")  # base v3
    build_history(store, 3)  # v4..v6
    assert store.get_session(live.id).base_version == 3
    assert store.cleanup(keep_last=1).removed == [
        0,
        1,
        4,
    ]  # keeps v6 + parent v5, live base v3 + parent v2


def test_cleanup_rejects_negative_keep(store: Store, v0: list) -> None:
    with pytest.raises(StoreError):
        store.cleanup(keep_last=-1)


def test_export_release_and_download(store: Store, sites: dict, v0: list) -> None:
    commit(store, running_session(store, "alpha").id, make_weights(1), ["alpha"])
    assert not store.may_download("beta", 1) and store.may_download("alpha", 1)
    with pytest.raises(AuthError, match="may not download v1"):
        store.record_download("beta", 1)
    store.export_version(1, ["beta", "gamma"])
    store.export_version(1, ["beta"])  # idempotent
    assert store.get_version(1).released_to == ["beta", "gamma"]
    assert [v.number for v in store.released_versions("beta")] == [1]
    assert store.released_versions("alpha") == []
    assert [n.kind for n in store.notifications("beta")] == ["release"]
    store.record_download("beta", 1)
    with pytest.raises(NotFoundError):
        store.export_version(1, ["nobody"])


@settings(max_examples=60, deadline=None)
@given(
    staleness=st.integers(0, 50),
    alpha=st.floats(0.01, 1.0),
    head=st.floats(-1e3, 1e3),
    candidate=st.floats(-1e3, 1e3),
)
def test_merge_is_a_staleness_weighted_convex_mix(
    staleness: int, alpha: float, head: float, candidate: float
) -> None:
    merged, a = merge_weights(
        [np.array([head])], [np.array([candidate])], staleness=staleness, alpha=alpha
    )
    assert a == pytest.approx(alpha / np.sqrt(1 + staleness))
    assert 0 < a <= alpha
    assert min(head, candidate) - 1e-9 <= merged[0][0] <= max(head, candidate) + 1e-9
    assert merged[0][0] == pytest.approx((1 - a) * head + a * candidate)


def test_merge_weight_shrinks_with_staleness_and_checks_inputs() -> None:
    assert merge_weight(0) == 0.5 and merge_weight(3) == pytest.approx(0.25)
    assert merge_weight(1) > merge_weight(2) > merge_weight(10)
    with pytest.raises(StoreError):
        merge_weight(1, alpha=0.0)
    with pytest.raises(StoreError, match="shape"):
        merge_weights([np.zeros(3)], [np.zeros(4)], staleness=1)
    with pytest.raises(StoreError, match="arrays"):
        merge_weights([np.zeros(3)], [], staleness=1)
