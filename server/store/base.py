"""What every part of the store shares: the database, the versions folder, one transaction per call.

Write methods hold the database-wide write lock (see :mod:`server.store.engine`) for their whole
transaction, so read-check-write sequences (state transitions, version numbers, the audit chain)
cannot interleave between processes. A writable store also holds the server's keys
(:mod:`server.store.server_key`: audit HMAC, session secrets), read from a 0600 file outside the
database; a read-only (analyst) store never loads them.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from pathlib import Path
from typing import TypeVar

from sqlalchemy.orm import Session

from server.store import audit_chain
from server.store import engine as db
from server.store.file_modes import secure_state
from server.store.server_key import ServerKeys
from shared.errors import ReadOnlyStoreError
from shared.settings import Settings

_StoreT = TypeVar("_StoreT", bound="StoreBase")


class StoreBase:
    """The database handle and versions folder that each concern's methods use."""

    def __init__(self, database: db.Database, versions_dir: Path, keys: ServerKeys | None = None) -> None:
        self._db = database
        self._engine = database.engine
        self.versions_dir = versions_dir
        self.readonly = database.readonly
        self._server_keys = keys

    @classmethod
    def open(cls: type[_StoreT], settings: Settings, *, readonly: bool = False) -> _StoreT:
        """Open the store; a writable one creates missing folders and tables first."""
        if readonly:
            return cls(
                db.Database(db.open_readonly(settings.database_url), readonly=True),
                settings.versions_dir,
            )
        secure_state(settings)  # folders 0700 (0750), the SQLite file 0600 (0640) before SQLite opens it
        keys = ServerKeys.load_or_create(settings.key_file)
        database = db.Database(
            db.create_store_engine(settings.database_url),
            readonly=False,
            session_info={audit_chain.AUDIT_KEY: keys.audit},
        )
        store = cls(database, settings.versions_dir, keys)
        store._db.create_schema()
        return store

    @property
    def _keys(self) -> ServerKeys:
        if self._server_keys is None:
            raise ReadOnlyStoreError(
                "this store was opened without the server key (read-only)",
                hint="Audit verification and session secrets are for the admin's fl-server.",
            )
        return self._server_keys

    def close(self) -> None:
        self._db.dispose()

    def _read(self) -> AbstractContextManager[Session]:
        return self._db.read()

    def _write(self) -> AbstractContextManager[Session]:
        return self._db.write()
