"""Answer repeated read-only queries from memory for as long as the database is unchanged.

Sites poll: request status every couple of seconds while they wait for the admin, plus their
notification and version lists. Each of those reads costs about a millisecond of ORM work,
which would cap the socket near 1000 requests/s on two cores. On SQLite, ``PRAGMA
data_version`` on a private connection changes whenever any other connection commits, in this
process or another (the session processes), so while it stays the same a cached result is
exactly what the store would return now: never stale, only reused. The check takes a few
microseconds and runs on the event loop, so a hit needs no worker thread at all. Other database
backends have no such counter: there every query goes to the store.
"""

from __future__ import annotations

import logging
import sqlite3

from server.store import engine as db
from shared import protocol as p

log = logging.getLogger(__name__)

#: Messages whose result depends only on (type, site, arguments) and the database contents.
CACHEABLE = frozenset({"request_status", "list_requests", "list_notifications", "list_versions"})


class ReadCache:
    """Serialised results of cacheable messages, keyed without id and token, dropped on any commit."""

    def __init__(self, database_url: str, *, max_entries: int = 10_000) -> None:
        self._max_entries = max_entries
        self._entries: dict[tuple[object, ...], bytes] = {}
        self._generation: int | None = None
        self._probe = _open_probe(database_url)

    def generation(self) -> int | None:
        """The database's change counter now; None when it cannot be read (then nothing is cached)."""
        if self._probe is None:
            return None
        try:
            return int(self._probe.execute("PRAGMA data_version").fetchone()[0])
        except sqlite3.Error as exc:
            log.debug("cannot read data_version: %s", exc)
            return None

    def get(self, message: p.Message) -> tuple[bytes | None, int | None]:
        """(cached result or None, generation to pass to :meth:`put` after a store read)."""
        if message.type not in CACHEABLE:
            return None, None
        generation = self.generation()
        if generation is None or generation != self._generation:
            self._entries.clear()
            self._generation = generation
            return None, generation
        return self._entries.get(_key(message)), generation

    def put(self, message: p.Message, generation: int | None, result: bytes) -> None:
        """Keep a result read after ``generation`` was observed, unless a commit came since."""
        if generation is None or generation != self._generation or message.type not in CACHEABLE:
            return
        if len(self._entries) >= self._max_entries:
            self._entries.clear()
        self._entries[_key(message)] = result

    def close(self) -> None:
        if self._probe is not None:
            self._probe.close()
            self._probe = None


def _key(message: p.Message) -> tuple[object, ...]:
    """What makes two cacheable questions the same: type, site and arguments, not id or token."""
    return (
        message.type,
        message.site,
        getattr(message, "request_id", None),
        getattr(message, "unread_only", None),
    )


def _open_probe(database_url: str) -> sqlite3.Connection | None:
    """A read-only connection used only for ``PRAGMA data_version``; None off SQLite."""
    path = db.sqlite_file(database_url)
    if path is None:
        return None
    try:
        return sqlite3.connect(
            f"{path.resolve().as_uri()}?mode=ro", uri=True, isolation_level=None,
            check_same_thread=False, timeout=0.05,
        )
    except sqlite3.Error as exc:
        log.warning("read cache disabled: cannot open %s read-only (%s)", path, exc)
        return None
