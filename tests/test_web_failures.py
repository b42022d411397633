"""The dashboard when the store misbehaves: locked by another process, tampered with, corrupt.

Each test works on its own copy of a real store; locks are real SQLite locks held by another
connection, tampering is a real UPDATE on the file.
"""

from __future__ import annotations

import shutil
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event

from server.history.web.app import create_app
from server.store import Store
from shared.settings import Settings, load_settings
from tests.web_history import build_history


@pytest.fixture(scope="module")
def original(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return build_history(tmp_path_factory.mktemp("web-failures") / "home")


@pytest.fixture
def settings(original: Settings, tmp_path: Path) -> Settings:
    """A private copy of the store (database and weight files)."""
    shutil.copytree(original.home, tmp_path / "home")
    return load_settings(home=tmp_path / "home")


def db_file(settings: Settings) -> Path:
    return settings.home / "fl.db"


@contextmanager
def dashboard(settings: Settings, *, busy_timeout_ms: int | None = None) -> Iterator[TestClient]:
    store = Store.open(settings, readonly=True)
    if busy_timeout_ms is not None:  # after the store's own pragmas: SQLite gives up sooner than its 60 s
        event.listen(store._db.engine, "connect",
                     lambda connection, _: connection.execute(f"PRAGMA busy_timeout={busy_timeout_ms}"))
    try:
        with TestClient(create_app(store), base_url="http://127.0.0.1", raise_server_exceptions=False) as client:
            yield client
    finally:
        store.close()


@contextmanager
def locked(db: Path, *, release_after_s: float | None) -> Iterator[None]:
    """Another process's exclusive lock on the whole database, released after a while (or at exit)."""
    holder = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
    holder.execute("PRAGMA locking_mode=EXCLUSIVE")
    holder.execute("BEGIN EXCLUSIVE")
    holder.execute("UPDATE write_lock SET id = id")
    released = threading.Event()

    def release() -> None:
        if not released.is_set():
            released.set()
            holder.execute("COMMIT")
            holder.close()

    timer = threading.Timer(release_after_s, release) if release_after_s is not None else None
    if timer:
        timer.start()
    try:
        yield
    finally:
        if timer:
            timer.join()
        release()


def test_a_briefly_locked_store_is_waited_for_not_an_error(settings: Settings) -> None:
    with locked(db_file(settings), release_after_s=1.0), dashboard(settings) as client:
        started = time.monotonic()
        response = client.get("/api/versions")
        waited = time.monotonic() - started
    assert response.status_code == 200 and [v["number"] for v in response.json()] == [0, 1, 2, 3]
    assert waited >= 0.9


def test_a_lock_that_outlasts_sqlites_wait_is_retried(settings: Settings) -> None:
    with locked(db_file(settings), release_after_s=0.5), dashboard(settings, busy_timeout_ms=50) as client:
        response = client.get("/versions")
    assert response.status_code == 200 and "v3" in response.text


def test_a_lock_that_outlasts_the_retries_is_a_503_with_a_hint(settings: Settings) -> None:
    with dashboard(settings, busy_timeout_ms=50) as client:
        with locked(db_file(settings), release_after_s=None):
            page = client.get("/versions")
            api = client.get("/api/versions")
        assert page.status_code == 503 and page.headers["retry-after"] == "5"
        assert "the store is busy" in page.text and "Try again" in page.text and "Traceback" not in page.text
        assert api.status_code == 503 and api.json()["hint"] == "Try again in a few seconds."
        assert client.get("/versions").status_code == 200  # lock gone: served again


def test_a_tampered_audit_row_shows_the_chain_broken(settings: Settings) -> None:
    with sqlite3.connect(db_file(settings)) as db:
        db.execute("UPDATE audit_log SET actor = 'mallory' WHERE id = 5")
    with dashboard(settings) as client:
        api = client.get("/api/audit").json()
        page = client.get("/audit?per_page=500").text
    assert not api["chain_ok"] and api["first_bad_row_id"] == 5
    assert "Hash chain BROKEN" in page and "audit row 5 was edited" in page
    assert '<tr class="bad"><td>5</td>' in page


def test_a_corrupt_record_is_a_500_page_without_a_traceback(settings: Settings) -> None:
    with sqlite3.connect(db_file(settings)) as db:
        db.execute("UPDATE versions SET metrics = '[1, 2]' WHERE number = 2")
    with dashboard(settings) as client:
        page = client.get("/versions")
        api = client.get("/api/versions/2")
        fine = client.get("/sessions")
    assert page.status_code == 500 and "unexpected error" in page.text and "Traceback" not in page.text
    assert "ask the admin" in page.text
    assert api.status_code == 500 and set(api.json()) == {"detail", "hint"}
    assert fine.status_code == 200  # the rest of the dashboard still works


def test_the_cached_versions_table_follows_every_change_of_the_store(settings: Settings) -> None:
    """The dashboard keeps its versions table between requests; each kind of change must show at once."""
    admin = Store.open(settings)
    try:
        with dashboard(settings) as client:
            def table() -> dict[int, dict]:
                return {v["number"]: v for v in client.get("/api/versions").json()}

            assert table()[1]["released_to"] == [] and "v4" not in client.get("/versions").text
            admin.export_version(1, ["beta"])
            assert table()[1]["released_to"] == ["beta"]
            admin.rollback(1)
            assert table()[4]["kind"] == "rollback" and '<a href="/versions/4">v4</a>' in client.get("/versions").text
            admin.rollback(2)
            admin.rollback(1)
            assert admin.cleanup(keep_last=1, dry_run=False).removed == [4, 5]
            assert not table()[5]["has_weights"] and "pruned" in client.get("/versions").text
            assert client.get("/api/versions/1").json()["children"] == [2, 3, 4, 6]
    finally:
        admin.close()
