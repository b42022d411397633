"""Clean-up: delete the weight files of versions nobody needs; their rows stay, marked pruned.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from server.store import audit_chain
from server.store.base import StoreBase
from server.store.lifecycle import (
    LIVE_SESSION_STATES,
)
from server.store.models import (
    FlSession,
    Release,
    Version,
    utcnow,
)
from server.store.records import (
    CleanupReport,
)
from server.store.weight_files import stray_files
from shared.errors import (
    StoreError,
)


class CleanupStore(StoreBase):
    """Pruning weight files nobody needs."""

    def cleanup(
        self, *, keep_last: int, dry_run: bool = True, actor: str = "admin"
    ) -> CleanupReport:
        """Delete weight files of versions nobody needs; rows stay, marked pruned.

        Kept: the last ``keep_last`` versions, the head, versions exported to a site, the bases
        of live sessions, and the direct parents of all of those. Stray files in the versions
        folder (from a crashed commit or write) are removed too. Rows are marked first and files
        deleted after, under the write lock, so a crash in between only leaves stray files.
        """
        if keep_last < 0:
            raise StoreError(f"keep_last must be >= 0, got {keep_last}")
        if dry_run:
            with self._read() as session:
                doomed = _versions_to_prune(session, keep_last)
                files = stray_files(session, self.versions_dir, also=doomed)
                kept = _kept_numbers(session, doomed)
            return _cleanup_report(True, kept, doomed, files, self.versions_dir)
        with self._write() as session:
            doomed = _versions_to_prune(session, keep_last)
            now = utcnow()
            for row in doomed:
                row.pruned_at = now
            kept = _kept_numbers(session, doomed)
            audit_chain.append(
                session,
                actor,
                "cleanup",
                {"keep_last": keep_last, "pruned": [row.number for row in doomed]},
            )
        with self._write() as session:  # hold the lock so no commit writes a file while we delete
            files = stray_files(session, self.versions_dir, also=[])
            report = _cleanup_report(False, kept, doomed, files, self.versions_dir)
            for path in files:
                path.unlink(missing_ok=True)
        return report


def _versions_to_prune(session: Session, keep_last: int) -> list[Version]:
    rows = session.scalars(select(Version).order_by(Version.number)).all()
    if not rows:
        return []
    anchors = {row.number for row in rows[-keep_last:]} if keep_last else set()
    anchors.add(rows[-1].number)
    anchors |= set(session.scalars(select(Release.version_number)))
    anchors |= set(
        session.scalars(
            select(FlSession.base_version).where(FlSession.state.in_(LIVE_SESSION_STATES))
        )
    )
    by_number = {row.number: row for row in rows}
    keep = set(anchors)
    for number in anchors:
        keep |= set(by_number[number].parents)
    return [row for row in rows if row.number not in keep and row.pruned_at is None]


def _kept_numbers(session: Session, doomed: list[Version]) -> list[int]:
    gone = {row.number for row in doomed}
    return sorted(
        set(session.scalars(select(Version.number).where(Version.pruned_at.is_(None)))) - gone
    )


def _cleanup_report(
    dry_run: bool, kept: list[int], doomed: list[Version], files: list[Path], versions_dir: Path
) -> CleanupReport:
    own = {versions_dir / row.filename for row in doomed}
    present = [path for path in files if path.exists()]
    return CleanupReport(
        dry_run=dry_run,
        kept=kept,
        removed=[row.number for row in doomed],
        files=present,
        orphans=[path for path in present if path not in own],
        freed_bytes=sum(path.stat().st_size for path in present),
    )


