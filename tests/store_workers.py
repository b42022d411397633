"""Functions the multi-process store tests run in 'spawn'-ed processes (importable by name)."""

from __future__ import annotations

from multiprocessing.synchronize import Event

from server.sessions.merge import commit_result as commit_session_result
from server.store import Store
from shared.settings import Settings
from tests.conftest_store import make_weights


def submit_and_notify(settings: Settings, site: str, count: int, start: Event) -> None:
    """One writer process: ``count`` requests, each followed by a notification."""
    store = Store.open(settings)
    start.wait()
    for i in range(count):
        request = store.submit_request(site, rounds=1, local_epochs=1, dp={}, note=f"{site}-{i}")
        store.notify(site, kind="queued", message=f"{request.label} queued", payload={"i": i})
    store.close()


def commit_result(settings: Settings, session_id: int, site: str, seed: int, start: Event) -> None:
    """One session process committing its result at the same moment as another."""
    store = Store.open(settings)
    start.wait()
    commit_session_result(
        store,
        session_id,
        make_weights(seed),
        evaluated=None,
        metrics={"seed": seed},
        dp_summary={},
        participants=[site],
        rounds=1,
    )
    store.close()
