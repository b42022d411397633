"""A site's privacy ledger: every DP run's DpEvent in a local, hash-chained SQLite file, plus its budget.

The total spent is the PLD accountant's composition of *all* recorded events (never a sum of
epsilons, which would overstate it); the RDP figure is kept beside it as a cross-check. A run is
charged *before* it trains, in the same transaction as the budget check, so two sessions of one
site cannot both squeeze under the budget, and a run that crashes half-way still counts (its
noise may already have left the site).

Tamper evidence. Each row stores ``row_hash = sha256(prev_hash + canonical JSON of the row)``, and
a small anchor file beside the database (``<ledger>.anchor``) holds the number of rows and the last
hash. Reading the ledger re-checks the chain: an edited or deleted row, a truncated tail, or a
deleted database whose anchor is still there raises :class:`LedgerTamperedError`, and no run is
charged until it is restored. This is evidence, not protection: whoever deletes both files
starts a fresh ledger, which is why the server keeps its own ledger per site from the schedules
it approved and refuses sessions past the budget whatever the site's file says.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import dp_accounting

from shared.errors import PrivacyBudgetExceeded
from shared.privacy_accounting import (
    PrivacySpend,
    compose,
    epsilon_for,
    event_from_json,
    event_to_json,
    spend,
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS privacy_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    session_id TEXT NOT NULL,
    created_at TEXT NOT NULL,
    event_json TEXT NOT NULL,
    delta REAL NOT NULL,
    epsilon REAL NOT NULL,
    prev_hash TEXT NOT NULL DEFAULT '',
    row_hash TEXT NOT NULL DEFAULT ''
)
"""
_GENESIS = "0" * 64
_COLUMNS = "id, session_id, created_at, event_json, delta, epsilon, prev_hash, row_hash"


class LedgerTamperedError(PrivacyBudgetExceeded):
    """The ledger's hash chain or its anchor does not match: rows were edited, removed or the file replaced."""

    default_hint = ("Restore the ledger file and its .anchor from a backup; until then this site trains "
                    "nothing (the server's ledger still counts every session it approved).")


@dataclass(frozen=True)
class LedgerEntry:
    """One recorded run; ``epsilon`` is that run alone (PLD) at ``delta``, for display only."""

    session_id: str
    created_at: str
    event: dp_accounting.DpEvent
    delta: float
    epsilon: float


class PrivacyLedger:
    """The privacy spent by one site, with a budget of ``max_epsilon`` at ``delta``.

    ``allow_no_dp``: a run without noise (infinite epsilon) is recorded instead of refused; only
    when the admin granted it at enrolment (the server says so in the session ticket), never a
    default.
    """

    def __init__(self, path: Path, *, max_epsilon: float, delta: float, allow_no_dp: bool = False) -> None:
        if max_epsilon <= 0 or not 0 < delta < 1:
            raise ValueError(f"need max_epsilon > 0 and 0 < delta < 1 (got {max_epsilon}, {delta})")
        self.path = Path(path)
        self.anchor_path = self.path.with_name(self.path.name + ".anchor")
        self.max_epsilon = max_epsilon
        self.delta = delta
        self.allow_no_dp = allow_no_dp
        if not self.path.exists() and self.anchor_path.exists():
            raise LedgerTamperedError(f"the privacy ledger {self.path} is gone but its anchor "
                                      f"{self.anchor_path.name} records {self._anchor()[0]} run(s)")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.execute(_SCHEMA)
            _chain_legacy_rows(db)
        self._write_anchor(*self._verified_head())  # checks the chain; anchors runs a crash left unanchored

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)  # explicit transactions
        try:
            db.execute("PRAGMA journal_mode=WAL")
            yield db
        finally:
            db.close()

    def entries(self, session_id: str | None = None) -> list[LedgerEntry]:
        """Recorded runs, oldest first, optionally of one session only; the chain is checked first."""
        with self._connect() as db:
            rows = self._verified_rows(db)
        return [LedgerEntry(s, t, event_from_json(e), d, eps) for _, s, t, e, d, eps, _, _ in rows
                if session_id is None or s == session_id]

    def verify(self) -> int:
        """Check the hash chain and the anchor; return the number of rows (raises if tampered)."""
        return self._verified_head()[0]

    def spent(self, delta: float | None = None, *, session_id: str | None = None) -> float:
        """PLD epsilon at ``delta`` (default: the budget's) of all runs composed, or one session's."""
        events = [entry.event for entry in self.entries(session_id)]
        return epsilon_for(compose(events), self.delta if delta is None else delta)

    def spent_both(self) -> PrivacySpend:
        """All runs composed, by the PLD accountant and the RDP cross-check, at the budget's delta."""
        return spend(compose([entry.event for entry in self.entries()]), self.delta)

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
                rows = self._verified_rows(db)
                total = self._check(event, [event_from_json(row[3]) for row in rows])
                head = self._insert(db, session_id, event, rows[-1][7] if rows else _GENESIS)
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
        self._write_anchor(len(rows) + 1, head)  # after the commit: an anchor never runs ahead
        return total

    def _insert(self, db: sqlite3.Connection, session_id: str, event: dp_accounting.DpEvent,
                prev_hash: str) -> str:
        created = datetime.now(timezone.utc).isoformat(timespec="seconds")
        event_json, epsilon = event_to_json(event), epsilon_for(event, self.delta)
        row_id = db.execute(
            "INSERT INTO privacy_events (session_id, created_at, event_json, delta, epsilon, prev_hash)"
            " VALUES (?, ?, ?, ?, ?, ?)", (session_id, created, event_json, self.delta, epsilon, prev_hash),
        ).lastrowid
        row_hash = _row_hash(prev_hash, (row_id, session_id, created, event_json, self.delta, epsilon))
        db.execute("UPDATE privacy_events SET row_hash = ? WHERE id = ?", (row_hash, row_id))
        return row_hash

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

    # -- the chain ----------------------------------------------------------------------
    def _verified_rows(self, db: sqlite3.Connection) -> list[tuple]:
        rows = db.execute(f"SELECT {_COLUMNS} FROM privacy_events ORDER BY id").fetchall()
        prev = _GENESIS
        for row in rows:
            if row[6] != prev or row[7] != _row_hash(prev, row[:6]):
                raise LedgerTamperedError(f"the privacy ledger {self.path} was altered at run {row[0]} "
                                          f"(session {row[1]!r}): its hash chain is broken")
            prev = row[7]
        anchored = self._anchor()
        if anchored is not None and not _extends(rows, *anchored):
            raise LedgerTamperedError(f"the privacy ledger {self.path} holds {len(rows)} run(s) that do not "
                                      f"continue the {anchored[0]} its anchor records: runs were removed "
                                      "or the file replaced")
        return rows

    def _verified_head(self) -> tuple[int, str]:
        with self._connect() as db:
            rows = self._verified_rows(db)
        return len(rows), rows[-1][7] if rows else _GENESIS

    def _anchor(self) -> tuple[int, str] | None:
        if not self.anchor_path.exists():
            return None
        data = json.loads(self.anchor_path.read_text(encoding="utf-8"))
        return int(data["runs"]), str(data["head"])

    def _write_anchor(self, runs: int, head: str) -> None:
        tmp = self.anchor_path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"runs": runs, "head": head}), encoding="utf-8")
        os.replace(tmp, self.anchor_path)


def _extends(rows: list[tuple], runs: int, head: str) -> bool:
    """Whether the chain starts with the anchored ``runs`` rows (more rows only record more spending,
    e.g. a run committed just before a crash could re-anchor it)."""
    if runs == 0:
        return head == _GENESIS
    return runs <= len(rows) and rows[runs - 1][7] == head


def _row_hash(prev_hash: str, row: tuple) -> str:
    """sha256 over the previous hash and the row's fields as canonical JSON."""
    row_id, session_id, created, event_json, delta, epsilon = row
    body = json.dumps([row_id, session_id, created, event_json, delta, _finite(epsilon)], sort_keys=True)
    return hashlib.sha256((prev_hash + body).encode()).hexdigest()


def _finite(value: float) -> float | str:
    return value if math.isfinite(value) else repr(value)


def _chain_legacy_rows(db: sqlite3.Connection) -> None:
    """Ledgers written before the chain existed: add the columns and chain their rows once."""
    columns = {row[1] for row in db.execute("PRAGMA table_info(privacy_events)")}
    if "row_hash" in columns:
        return
    db.execute("BEGIN IMMEDIATE")
    db.execute("ALTER TABLE privacy_events ADD COLUMN prev_hash TEXT NOT NULL DEFAULT ''")
    db.execute("ALTER TABLE privacy_events ADD COLUMN row_hash TEXT NOT NULL DEFAULT ''")
    prev = _GENESIS
    for row in db.execute(f"SELECT {_COLUMNS} FROM privacy_events ORDER BY id").fetchall():
        row_hash = _row_hash(prev, row[:6])
        db.execute("UPDATE privacy_events SET prev_hash = ?, row_hash = ? WHERE id = ?", (prev, row_hash, row[0]))
        prev = row_hash
    db.execute("COMMIT")
