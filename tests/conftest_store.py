"""Fixtures for the store tests: a real database file per test, SQLite always, PostgreSQL on request.

Set ``FL_TEST_DATABASE_URL`` (e.g. ``postgresql+psycopg://fl:fl@localhost/fl_test``) to run every
store test a second time against that server; its tables are dropped before each test.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import create_engine

from server.store import Store
from server.store.models import Base
from server.store.records import SessionInfo, VersionInfo
from shared.settings import Settings, load_settings

POSTGRES_URL = os.environ.get("FL_TEST_DATABASE_URL", "")
BACKENDS = ["sqlite"] + (
    [pytest.param("postgres", marks=pytest.mark.postgres)] if POSTGRES_URL else []
)


def make_weights(seed: int = 0, *, scale: float = 1.0) -> list[np.ndarray]:
    """A small stand-in for a classifier head: kernel, bias, and an int array to check dtypes survive."""
    rng = np.random.default_rng(seed)
    return [
        (rng.standard_normal((8, 4)) * scale).astype(np.float32),
        (rng.standard_normal(4) * scale).astype(np.float32),
        np.arange(3, dtype=np.int64),
    ]


def cli_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, columns: int) -> Path:
    """An ``FL_HOME`` for running ``fl-server`` commands in-process: own session ports, quiet logs,
    tables ``columns`` wide."""
    # imported here: flower_fakes loads Flower, which only the tests that run commands need
    from tests.flower_fakes import free_port

    monkeypatch.setenv("FL_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("FL_SESSION_PORT_START", str(free_port()))
    monkeypatch.setenv("FL_LOG_LEVEL", "WARNING")
    monkeypatch.setenv("COLUMNS", str(columns))
    return tmp_path / "home"


def _reset_postgres(url: str) -> None:
    engine = create_engine(url)
    Base.metadata.drop_all(engine)
    engine.dispose()


@pytest.fixture(params=BACKENDS)
def store_settings(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    home = tmp_path / "home"
    if request.param == "postgres":
        _reset_postgres(POSTGRES_URL)
        return load_settings(home=home, database_url=POSTGRES_URL)
    return load_settings(home=home, database_url=f"sqlite:///{home / 'fl.db'}")


@pytest.fixture
def store(store_settings: Settings) -> Iterator[Store]:
    opened = Store.open(store_settings)
    yield opened
    opened.close()


@pytest.fixture
def sites(store: Store) -> dict[str, str]:
    """Three enrolled sites and their tokens."""
    return {name: store.enrol_site(name) for name in ("alpha", "beta", "gamma")}


@pytest.fixture
def v0(store: Store) -> list[np.ndarray]:
    weights = make_weights(0)
    store.ensure_initial_version(weights, metadata={"model": "test-head"})
    return weights


def running_session(store: Store, *site_names: str, config: dict | None = None) -> SessionInfo:
    """Submit one request per site, approve them together and mark the session running."""
    ids = [
        store.submit_request(s, rounds=2, local_epochs=1, dp={"noise_multiplier": 1.1}).id
        for s in site_names
    ]
    created = store.create_session(ids, config=config or {"rounds": 2})
    return store.mark_session_running(created.id, port=8080 + created.id, pid=1000 + created.id)


def commit_scored(store: Store, session_id: int, candidate: list[np.ndarray], **result) -> VersionInfo:
    """Commit as a secure session does: ``result["metrics"]`` scored the weights committed (the
    candidate, or its merge into a head that moved), so they stay with the version."""
    from server.sessions.merge import commit_result, rebase

    base = store.get_session(session_id).base_version
    scored = rebase(candidate, base=base, head=store.head().number, load=store.load_weights)
    return commit_result(store, session_id, candidate, evaluated=scored, **result)
