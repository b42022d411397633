"""Who may read the server's state: the owner only, or also its group (the analysts).

State files are 0600 and folders 0700 by default. With ``group_readable`` the database (and
its WAL/SHM companions, which SQLite creates with the database file's mode), the versions and
the session logs become 0640/0750, so analysts in the server's group can run ``fl-history``;
the server key and its folder stay 0600/0700 whatever the option says, and the database holds
no secret in usable form (token hashes only; session secrets need the key). ``restrict_umask``
makes every later file of the server process (and of the session processes it spawns) follow
the same rule.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from server.store.engine import sqlite_file
from shared.settings import Settings

SQLITE_COMPANIONS = ("-wal", "-shm", "-journal")


@dataclass(frozen=True)
class StateModes:
    file: int
    folder: int
    umask: int

    @classmethod
    def of(cls, settings: Settings) -> StateModes:
        if settings.group_readable:
            return cls(file=0o640, folder=0o750, umask=0o027)
        return cls(file=0o600, folder=0o700, umask=0o077)


def restrict_umask(settings: Settings) -> None:
    """New files of this process (and its children) get the state modes: call at program start."""
    os.umask(StateModes.of(settings).umask)


def secure_state(settings: Settings) -> None:
    """Create the state folders and the SQLite file with the right modes, and narrow existing ones."""
    modes = StateModes.of(settings)
    db_file = sqlite_file(settings.database_url)
    folders = [settings.home, settings.versions_dir, settings.home / "sessions", settings.home / "logs"]
    if db_file is not None:
        folders.append(db_file.parent)
    for folder in dict.fromkeys(folders):
        _folder(folder, modes.folder)
    if db_file is not None:
        _file(db_file, modes.file)
        for suffix in SQLITE_COMPANIONS:
            companion = db_file.with_name(db_file.name + suffix)
            if companion.exists():
                os.chmod(companion, modes.file)
    for folder in (settings.home / "sessions", settings.home / "logs", settings.versions_dir):
        for path in folder.iterdir():
            if path.is_file() and not path.is_symlink():
                os.chmod(path, modes.file)


def _folder(path: Path, mode: int) -> None:
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, mode)


def _file(path: Path, mode: int) -> None:
    """Create ``path`` empty with ``mode`` if missing (SQLite then keeps that mode), else chmod it."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode))
    except FileExistsError:
        pass
    os.chmod(path, mode)
