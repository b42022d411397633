"""What every part of the store shares: the database, the versions folder, one transaction per call.

Write methods hold the database-wide write lock (see :mod:`server.store.engine`) for their whole
transaction, so read-check-write sequences (state transitions, version numbers, the audit chain)
cannot interleave between processes.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from pathlib import Path
from typing import TypeVar

from sqlalchemy.orm import Session

from server.store import engine as db
from shared.settings import Settings

_StoreT = TypeVar("_StoreT", bound="StoreBase")


class StoreBase:
    """The database handle and versions folder that each concern's methods use."""

    def __init__(self, database: db.Database, versions_dir: Path) -> None:
        self._db = database
        self._engine = database.engine
        self.versions_dir = versions_dir
        self.readonly = database.readonly

    @classmethod
    def open(cls: type[_StoreT], settings: Settings, *, readonly: bool = False) -> _StoreT:
        """Open the store; a writable one creates missing folders and tables first."""
        if readonly:
            return cls(
                db.Database(db.open_readonly(settings.database_url), readonly=True),
                settings.versions_dir,
            )
        db_file = db.sqlite_file(settings.database_url)
        if db_file is not None:
            db_file.parent.mkdir(parents=True, exist_ok=True)
        settings.versions_dir.mkdir(parents=True, exist_ok=True)
        store = cls(
            db.Database(db.create_store_engine(settings.database_url), readonly=False),
            settings.versions_dir,
        )
        store._db.create_schema()
        return store

    def close(self) -> None:
        self._db.dispose()

    def _read(self) -> AbstractContextManager[Session]:
        return self._db.read()

    def _write(self) -> AbstractContextManager[Session]:
        return self._db.write()
