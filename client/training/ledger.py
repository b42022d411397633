"""A site's privacy ledger: every DP training run's DpEvent in a local SQLite file, plus its budget.

The total spent is the accountant's composition of *all* recorded events (never a sum of
epsilons, which would overstate it). A run is charged *before* it trains, in the same
transaction as the budget check, so two sessions of one site cannot both squeeze under the
budget, and a run that crashes half-way still counts (its noise may already have left the site).
"""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import dp_accounting

from shared.errors import PrivacyBudgetExceeded
from shared.privacy_accounting import (
    compose,
    epsilon_for,
    event_from_json,
    event_to_json,
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS privacy_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    session_id TEXT NOT NULL,
    created_at TEXT NOT NULL,
    event_json TEXT NOT NULL,
    delta REAL NOT NULL,
    epsilon REAL NOT NULL
)
"""


@dataclass(frozen=True)
class LedgerEntry:
    """One recorded run; ``epsilon`` is that run alone at ``delta``, for display only."""

    session_id: str
    created_at: str
    event: dp_accounting.DpEvent
    delta: float
    epsilon: float


class PrivacyLedger:
    """The privacy spent by one site, with a budget of ``max_epsilon`` at ``delta``."""

    def __init__(self, path: Path, *, max_epsilon: float, delta: float, allow_no_dp: bool = False) -> None:
        """``allow_no_dp``: a run without noise (infinite epsilon) is recorded instead of refused;
        only for sites that explicitly opted out of a budget (benchmarks), never a default."""
        if max_epsilon <= 0 or not 0 < delta < 1:
            raise ValueError(f"need max_epsilon > 0 and 0 < delta < 1 (got {max_epsilon}, {delta})")
        self.path = Path(path)
        self.max_epsilon = max_epsilon
        self.delta = delta
        self.allow_no_dp = allow_no_dp
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.execute(_SCHEMA)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)  # explicit transactions
        try:
            db.execute("PRAGMA journal_mode=WAL")
            yield db
        finally:
            db.close()

    def entries(self, session_id: str | None = None) -> list[LedgerEntry]:
        """Recorded runs, oldest first, optionally of one session only."""
        query = "SELECT session_id, created_at, event_json, delta, epsilon FROM privacy_events"
        args: tuple[str, ...] = ()
        if session_id is not None:
            query, args = query + " WHERE session_id = ?", (session_id,)
        with self._connect() as db:
            rows = db.execute(query + " ORDER BY id", args).fetchall()
        return [LedgerEntry(s, t, event_from_json(e), d, eps) for s, t, e, d, eps in rows]

    def spent(self, delta: float | None = None, *, session_id: str | None = None) -> float:
        """Epsilon at ``delta`` (default: the budget's) of all runs composed, or one session's."""
        events = [entry.event for entry in self.entries(session_id)]
        return epsilon_for(compose(events), self.delta if delta is None else delta)

    def remaining(self) -> float:
        """Budget left at the budget's delta (never negative)."""
        return max(0.0, self.max_epsilon - self.spent())

    def check_run(self, planned: dp_accounting.DpEvent) -> float:
        """Raise ``PrivacyBudgetExceeded`` unless ``planned`` fits; return the total after it."""
        return self._check(planned, [entry.event for entry in self.entries()])

    def charge(self, session_id: str, event: dp_accounting.DpEvent) -> float:
        """Check ``event`` against the budget and record it atomically; return the new total."""
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")  # holds the write lock from the check to the insert
            try:
                rows = db.execute("SELECT event_json FROM privacy_events ORDER BY id").fetchall()
                total = self._check(event, [event_from_json(row[0]) for row in rows])
                db.execute(
                    "INSERT INTO privacy_events (session_id, created_at, event_json, delta, epsilon)"
                    " VALUES (?, ?, ?, ?, ?)",
                    (
                        session_id,
                        datetime.now(timezone.utc).isoformat(timespec="seconds"),
                        event_to_json(event),
                        self.delta,
                        epsilon_for(event, self.delta),
                    ),
                )
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
        return total

    def _check(self, planned: dp_accounting.DpEvent, recorded: list[dp_accounting.DpEvent]) -> float:
        spent = epsilon_for(compose(recorded), self.delta)
        total = epsilon_for(compose([*recorded, planned]), self.delta)
        if self.allow_no_dp and math.isinf(epsilon_for(planned, self.delta)):
            return total  # an explicit no-DP run: recorded, with no finite guarantee, never checked
        if total > self.max_epsilon:
            requested = epsilon_for(planned, self.delta)
            raise PrivacyBudgetExceeded(
                f"privacy budget exceeded at delta={self.delta:g}: spent epsilon={spent:.4g}, "
                f"this run requests epsilon={requested:.4g} (total {total:.4g} after composition), "
                f"remaining {max(0.0, self.max_epsilon - spent):.4g} of budget {self.max_epsilon:g}"
            )
        return total
