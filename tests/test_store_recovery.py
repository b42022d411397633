"""Crash recovery and the analysts' read-only view."""

from __future__ import annotations

import sqlite3

import pytest
from sqlalchemy import text

from server.store import Store
from server.store.engine import open_readonly
from server.store.lifecycle import RequestState, SessionState
from shared.errors import IllegalTransitionError, ReadOnlyStoreError
from shared.settings import Settings
from tests.conftest_store import make_weights, running_session


def test_restart_interrupts_live_sessions_and_nothing_else(
    store_settings: Settings, store: Store, sites: dict, v0: list
) -> None:
    done = running_session(store, "alpha")
    store.commit_session_result(
        done.id, make_weights(1), metrics={}, dp_summary={}, participants=["alpha"], rounds=1
    )
    running = running_session(store, "beta")
    starting = store.create_session(
        [store.submit_request("gamma", rounds=1, local_epochs=1, dp={}).id], config={}
    )
    pending = store.submit_request("alpha", rounds=1, local_epochs=1, dp={})
    before_versions = store.list_versions()
    store.close()  # "crash": a new process opens the same database

    restarted = Store.open(store_settings)
    recovered = restarted.recover_interrupted()
    assert [s.id for s in recovered] == [running.id, starting.id]
    assert {s.state for s in recovered} == {SessionState.INTERRUPTED}
    for session in recovered:
        assert restarted.get_session(session.id).ended_at is not None
        assert {restarted.get_request(r).state for r in session.request_ids} == {
            RequestState.INTERRUPTED
        }
    assert restarted.get_session(done.id).state is SessionState.COMPLETED
    assert restarted.get_request(done.request_ids[0]).state is RequestState.COMPLETED
    assert restarted.get_request(pending.id).state is RequestState.PENDING
    assert restarted.list_versions() == before_versions
    assert restarted.notifications("beta")[-1].kind == "session_interrupted"
    assert restarted.recover_interrupted() == []  # idempotent

    requeued = restarted.requeue_request(running.request_ids[0])
    assert (requeued.state, requeued.session_id, requeued.decided_by) == (
        RequestState.PENDING,
        None,
        None,
    )
    assert restarted.get_session(running.id).request_ids == running.request_ids  # history kept
    again = restarted.create_session([requeued.id], config={})
    assert again.id != running.id and restarted.get_request(requeued.id).session_id == again.id
    with pytest.raises(IllegalTransitionError, match="cannot requeue"):
        restarted.requeue_request(pending.id)
    assert restarted.verify_audit().ok
    restarted.close()


def test_failed_request_can_be_requeued(store: Store, sites: dict, v0: list) -> None:
    session = running_session(store, "alpha")
    store.finish_session(session.id, state=SessionState.FAILED, reason="port in use")
    assert store.requeue_request(session.request_ids[0]).state is RequestState.PENDING


def test_readonly_store_reads_but_cannot_write(
    store_settings: Settings, store: Store, sites: dict, v0: list
) -> None:
    analyst = Store.open(store_settings, readonly=True)
    try:
        assert analyst.head().number == 0 and len(analyst.list_sites()) == 3
        assert analyst.load_weights(0)[0].shape == (8, 4)
        with pytest.raises(ReadOnlyStoreError):
            analyst.notify("alpha", kind="x", message="y")
        with pytest.raises(ReadOnlyStoreError):
            analyst.enrol_site("delta")
        store.submit_request("alpha", rounds=1, local_epochs=1, dp={})  # the writer keeps going
        assert len(analyst.list_requests()) == 1
    finally:
        analyst.close()


def test_readonly_engine_refuses_raw_sql_writes(
    store_settings: Settings, store: Store, sites: dict
) -> None:
    """Not just unused: the connection itself cannot write."""
    engine = open_readonly(store_settings.database_url)
    try:
        with pytest.raises(Exception) as caught, engine.begin() as conn:
            conn.execute(text("UPDATE sites SET enabled = false"))
        if engine.dialect.name == "sqlite":
            assert isinstance(caught.value.orig, sqlite3.OperationalError)  # type: ignore[attr-defined]
            assert "readonly" in str(caught.value)
        else:
            assert "read-only" in str(caught.value)
    finally:
        engine.dispose()
    assert all(site.enabled for site in store.list_sites())


def test_sqlite_runs_in_wal_mode_with_foreign_keys(store: Store) -> None:
    if store._engine.dialect.name != "sqlite":
        pytest.skip("SQLite pragmas")
    with store._engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 30000
