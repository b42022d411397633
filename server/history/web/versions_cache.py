"""The versions table, kept between requests until the store's versions change.

Reading 1000 versions through the store costs ~100 ms (ORM rows, five JSON columns each), and
the versions page is the one analysts open most. ``Store.versions_marker()`` is one cheap
aggregate query that changes whenever ``list_versions()`` would; it is read *before* the rows,
so a cached table is never older than the marker it is filed under. What is derived from the
rows (the JSON body, a rendered page per sort order) is kept under the same marker.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from typing import Any

from server.history.web.schemas import VersionSummary
from server.store import Store

_MAX_DERIVED = 32


class VersionsCache:
    """Version rows and things made from them, valid for one ``versions_marker()`` value."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._marker: tuple[int, ...] | None = None
        self._rows: list[VersionSummary] = []
        self._derived: dict[Hashable, Any] = {}

    def rows(self, store: Store) -> tuple[tuple[int, ...], list[VersionSummary]]:
        """The current marker and every version as a table row (number order)."""
        marker = store.versions_marker()
        with self._lock:
            if marker == self._marker:
                return marker, self._rows
        rows = [VersionSummary.of(v) for v in store.list_versions()]
        with self._lock:
            if self._marker != marker:
                self._marker, self._rows, self._derived = marker, rows, {}
        return marker, rows

    def derived(self, marker: tuple[int, ...], key: Hashable, make: Callable[[], Any]) -> Any:
        """``make()`` once per marker and key (a JSON body, a rendered page)."""
        with self._lock:
            if marker == self._marker and key in self._derived:
                return self._derived[key]
        value = make()
        with self._lock:
            if marker == self._marker and len(self._derived) < _MAX_DERIVED:
                self._derived[key] = value
        return value
