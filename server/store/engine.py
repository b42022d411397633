"""Engines and transactions: how many processes share one database without losing writes.

SQLite (the default) runs in WAL mode, so readers never block the one writer, with foreign keys
on and a long busy timeout. Every write transaction starts with ``BEGIN IMMEDIATE``: it takes
the write lock up front, so concurrent writers queue on the busy timeout instead of failing
with "database is locked" when a read transaction tries to upgrade. On other backends
(PostgreSQL) write transactions lock one row of ``write_lock`` first, which gives the same
one-writer-at-a-time order; that is what keeps the audit chain and version numbers gap-free.

Analysts get :func:`open_readonly`: SQLite opened with ``mode=ro`` (writes are impossible, not
just unused); other backends get read-only transactions.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, select
from sqlalchemy.engine import URL, make_url
from sqlalchemy.orm import Session, sessionmaker

from server.store.models import Base, WriteLock
from shared.errors import NotFoundError, ReadOnlyStoreError

BUSY_TIMEOUT_S = 60.0
_WRITE_OPTION = "fl_write"


def is_sqlite(url: str | URL) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def sqlite_file(url: str | URL) -> Path | None:
    """The database file of a SQLite URL; None for in-memory databases and other backends."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database)  # type: ignore[arg-type]


def create_store_engine(url: str | URL) -> Engine:
    """Engine for the server and session processes (read-write)."""
    if not is_sqlite(url):
        return create_engine(url, pool_pre_ping=True)
    engine = create_engine(url, connect_args={"timeout": BUSY_TIMEOUT_S})
    _take_over_sqlite_transactions(engine, pragmas=_WRITE_PRAGMAS)
    return engine


def open_readonly(url: str | URL) -> Engine:
    """Engine that cannot write: SQLite ``file:...?mode=ro`` URI, or read-only transactions."""
    if not is_sqlite(url):
        engine = create_engine(url, pool_pre_ping=True)
        event.listen(engine, "connect", _set_session_read_only)
        return engine
    path = sqlite_file(url)
    if path is None or not path.is_file():
        raise NotFoundError(
            f"no database at {path or url}", hint="Start the server once to create it."
        )
    ro_url = URL.create(
        "sqlite",
        database=path.resolve().as_uri(),
        query={"mode": "ro", "uri": "true"},
    )
    engine = create_engine(ro_url, connect_args={"timeout": BUSY_TIMEOUT_S})
    _take_over_sqlite_transactions(engine, pragmas=_READ_PRAGMAS)
    return engine


class Database:
    """An engine and the two ways into it: read transactions and one-at-a-time writes.

    ``session_info`` is put in every session's ``info`` (the store passes the audit key there,
    so the audit chain gets it without every caller handing it on).
    """

    def __init__(
        self, engine: Engine, *, readonly: bool, session_info: dict[str, Any] | None = None
    ) -> None:
        self.engine = engine
        self.readonly = readonly
        info = dict(session_info or {})
        self._reader = sessionmaker(engine, expire_on_commit=False, info=info)
        self._writer = sessionmaker(
            engine.execution_options(**{_WRITE_OPTION: True}), expire_on_commit=False, info=info
        )

    @contextmanager
    def read(self) -> Iterator[Session]:
        with self._reader.begin() as session:
            yield session

    @contextmanager
    def write(self) -> Iterator[Session]:
        """One write transaction holding the database-wide write lock until commit or rollback.

        Do not nest them: an inner write() would wait on the outer one until the busy timeout.
        """
        if self.readonly:
            raise ReadOnlyStoreError("this store was opened read-only")
        with self._writer.begin() as session:
            if session.get_bind().dialect.name != "sqlite":  # SQLite: BEGIN IMMEDIATE did it
                session.execute(select(WriteLock).where(WriteLock.id == 1).with_for_update())
            yield session

    def create_schema(self) -> None:
        """Create missing tables and the lock row; a no-op on an up-to-date database."""
        if self.engine.dialect.name == "sqlite":
            with self.write() as session:  # BEGIN IMMEDIATE: processes starting together take turns
                Base.metadata.create_all(session.connection())
                _ensure_lock_row(session)
            return
        with self.engine.begin() as connection:  # the lock row cannot be locked before it exists
            Base.metadata.create_all(connection)
        with self.write() as session:
            _ensure_lock_row(session)

    def dispose(self) -> None:
        self.engine.dispose()


_WRITE_PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    "PRAGMA foreign_keys=ON",
    "PRAGMA synchronous=NORMAL",  # safe with WAL: a power cut may lose the last commit, never corrupt
    f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_S * 1000)}",
)
_READ_PRAGMAS = (
    "PRAGMA foreign_keys=ON",
    f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_S * 1000)}",
)


def _take_over_sqlite_transactions(engine: Engine, *, pragmas: tuple[str, ...]) -> None:
    """Let SQLAlchemy, not the sqlite3 module, emit BEGIN (SQLAlchemy's documented recipe),
    so that write transactions can be IMMEDIATE and reads get a consistent snapshot."""

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        for pragma in pragmas:
            cursor.execute(pragma)
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        immediate = connection.get_execution_options().get(_WRITE_OPTION, False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def _ensure_lock_row(session: Session) -> None:
    if session.get(WriteLock, 1) is None:
        session.add(WriteLock(id=1))


def _set_session_read_only(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")
    cursor.close()
    dbapi_connection.commit()
