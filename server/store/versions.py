"""Versions: v0, commits of session results (the session's own, or merged by the session into a
moved head), rollback, releases to sites and downloads.

The weight file is always written (atomically, sha256 recorded) before the row that points at
it, under the write lock, so a crash leaves at most an orphan file, never a row without a file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from server.store import audit_chain
from server.store.audit_chain import json_safe
from server.store.base import StoreBase
from server.store.lifecycle import (
    SessionState,
    check_transition,
)
from server.store.models import (
    Download,
    Release,
    Version,
    utcnow,
)
from server.store.records import (
    VersionInfo,
)
from server.store.row_records import (
    version_info,
)
from server.store.rows import (
    add_notification,
    end_session,
    head_row,
    require_weights,
    session_row,
    site_row,
    version_row,
)
from server.store.weight_files import version_filename
from shared import weights_io
from shared.errors import (
    AuthError,
    HeadMovedError,
    StoreError,
)


class VersionStore(StoreBase):
    """Versions: v0, commits and merges, rollback, releases and downloads."""

    def ensure_initial_version(
        self, weights: list[np.ndarray], *, metadata: dict[str, Any]
    ) -> VersionInfo:
        """Create v0 from ``weights`` unless it exists; an existing v0 is returned unchanged."""
        with self._write() as session:
            existing = session.get(Version, 0)
            if existing is not None:
                return version_info(existing, self.versions_dir)
            row = self._add_version(
                session, 0, weights, kind="initial", parents=[], metadata=metadata
            )
            audit_chain.append(
                session, "server", "initial_version", {"version": 0, "sha256": row.sha256}
            )
            return version_info(row, self.versions_dir)

    def head(self) -> VersionInfo:
        with self._read() as session:
            return version_info(head_row(session), self.versions_dir)

    def get_version(self, number: int) -> VersionInfo:
        with self._read() as session:
            return version_info(version_row(session, number), self.versions_dir)

    def list_versions(self) -> list[VersionInfo]:
        with self._read() as session:
            return [
                version_info(row, self.versions_dir)
                for row in session.scalars(select(Version).order_by(Version.number))
            ]

    def versions_marker(self) -> tuple[int, ...]:
        """A value that changes whenever ``list_versions()`` would return something else.

        Version rows are written once; afterwards only releases are added and ``pruned_at`` is
        set, so counting rows, releases and pruned versions is enough (the dashboard caches its
        versions table on this). A new way of changing a version row must change this too.
        """
        with self._read() as session:
            versions = session.execute(
                select(func.count(), func.max(Version.number), func.count(Version.pruned_at)).select_from(Version)
            ).one()
            releases = session.scalar(select(func.count()).select_from(Release)) or 0
            return (int(versions[0]), int(versions[1] if versions[1] is not None else -1), int(versions[2]), releases)

    def version_path(self, number: int) -> Path:
        return self.get_version(number).path

    def load_weights(self, number: int) -> list[np.ndarray]:
        """The version's weights, verified against the recorded sha256 on every load."""
        info = self.get_version(number)
        require_weights(info.number, info.pruned_at is None)
        return weights_io.load_weights_verified(info.path, info.sha256)

    def commit_session_result(
        self,
        session_id: int,
        weights: list[np.ndarray],
        *,
        metrics: dict[str, Any],
        dp_summary: dict[str, Any],
        participants: list[str],
        rounds: int,
        head: int | None = None,
        merge_weight: float | None = None,
    ) -> VersionInfo:
        """Turn a RUNNING session's result into the next version and complete the session.

        ``head`` is the version ``weights`` were built on: the session's base (the default) for
        its own result, or a later head the session merged its result into (with
        ``merge_weight``, the candidate's share; parents [head, base]). The store merges nothing
        itself: the merge rule and whether metrics describe the weights are the sessions'
        (:mod:`server.sessions.merge`). If the head is no longer ``head``, ``HeadMovedError``
        is raised and nothing is written, so a version's weights always extend its first parent
        and its metrics are never another model's. The weight file is written atomically before
        the row is inserted, all under the write lock, so a crash leaves at most an orphan file
        (removed by clean-up), never a row without its file.
        """
        _refuse_non_finite(weights)
        with self._write() as session:
            fl = session_row(session, session_id)
            check_transition(f"session {fl.id}", fl.state, SessionState.COMPLETED)
            members = {m.site for m in fl.members}
            if not set(participants) <= members:
                raise StoreError(
                    f"participants {sorted(set(participants) - members)} were not approved for session {fl.id}"
                )
            built_on = fl.base_version if head is None else head
            current = head_row(session)
            if current.number != built_on:
                raise HeadMovedError(f"session {fl.id}'s result was built on v{built_on}, "
                                     f"but the head is now v{current.number}")
            staleness = built_on - fl.base_version
            if staleness < 0 or (staleness > 0) != (merge_weight is not None):
                raise StoreError(f"session {fl.id} started from v{fl.base_version}: a result built on "
                                 f"v{built_on} needs {'a' if staleness > 0 else 'no'} merge weight")
            parents, kind = ([built_on, fl.base_version], "merge") if staleness else ([fl.base_version], "session")
            row = self._add_version(
                session,
                current.number + 1,
                weights,
                kind=kind,
                parents=parents,
                metadata=current.meta,
                session_id=fl.id,
                participants=sorted(participants),
                rounds=rounds,
                metrics=metrics,
                dp_summary=dp_summary,
                merge_weight=merge_weight,
                staleness=staleness,
            )
            fl.version_number = row.number
            label = f"v{row.number}"
            end_session(
                session,
                fl,
                SessionState.COMPLETED,
                "",
                kind="new_version",
                message=f"new version {label} from session {fl.id}" + (" (merged)" if staleness else ""),
                payload={"version": row.number},
            )
            audit_chain.append(
                session,
                f"session-{fl.id}",
                "commit_version",
                {
                    "session": fl.id,
                    "version": row.number,
                    "parents": parents,
                    "merge_weight": merge_weight,
                    "staleness": staleness,
                    "sha256": row.sha256,
                },
            )
            return version_info(row, self.versions_dir)

    def rollback(self, to_number: int, *, actor: str = "admin") -> VersionInfo:
        """Make an older version's weights the head again, as a new version (history is never rewritten)."""
        with self._write() as session:
            target = version_row(session, to_number)
            require_weights(target.number, target.pruned_at is None)
            head = head_row(session)
            if head.number == target.number:
                raise StoreError(f"v{target.number} is already the head")
            data = weights_io.read_bytes_verified(
                self.versions_dir / target.filename, target.sha256
            )
            number = head.number + 1
            filename = version_filename(number)
            weights_io.write_bytes_atomic(self.versions_dir / filename, data)
            row = Version(
                number=number,
                kind="rollback",
                parents=[target.number],
                session_id=None,
                participants=[],
                rounds=0,
                metrics=target.metrics,
                dp_summary={},
                meta=target.meta,
                merge_weight=None,
                staleness=0,
                filename=filename,
                size_bytes=len(data),
                sha256=target.sha256,
                note=f"rollback to v{target.number} by {actor}",
                created_at=utcnow(),
            )
            session.add(row)
            session.flush()
            audit_chain.append(session, actor, "rollback", {"version": number, "to": target.number})
            return version_info(row, self.versions_dir)

    def export_version(self, number: int, sites: list[str], *, actor: str = "admin") -> None:
        """Release a version to sites: they may download it, and clean-up keeps it."""
        with self._write() as session:
            row = version_row(session, number)
            require_weights(row.number, row.pruned_at is None)
            for site in sites:
                site_row(session, site)
                if session.get(Release, (row.number, site)) is None:
                    session.add(
                        Release(
                            version_number=row.number,
                            site=site,
                            released_at=utcnow(),
                            released_by=actor,
                        )
                    )
                    add_notification(
                        session,
                        site,
                        "release",
                        f"version v{row.number} is available to download",
                        {"version": row.number},
                    )
            audit_chain.append(
                session, actor, "export_version", {"version": row.number, "sites": sorted(sites)}
            )

    def released_versions(self, site: str) -> list[VersionInfo]:
        with self._read() as session:
            rows = session.scalars(
                select(Version).join(Release).where(Release.site == site).order_by(Version.number)
            )
            return [version_info(row, self.versions_dir) for row in rows]

    def available_versions(self, site: str) -> list[VersionInfo]:
        """What a site may download: versions released to it or trained with it, files present."""
        return [v for v in self.list_versions()
                if v.has_weights and (site in v.released_to or site in v.participants)]

    def may_download(self, site: str, number: int) -> bool:
        """A site may fetch a version released to it or one it helped train (and whose file still exists)."""
        info = self.get_version(number)
        return info.pruned_at is None and (site in info.released_to or site in info.participants)

    def record_download(self, site: str, version_number: int) -> None:
        """A site accepted an update and fetched it."""
        if not self.may_download(site, version_number):
            raise AuthError(f"site '{site}' may not download v{version_number}")
        with self._write() as session:
            session.add(Download(site=site, version_number=version_number, downloaded_at=utcnow()))
            audit_chain.append(session, site, "download", {"version": version_number})

    def _add_version(
        self,
        session: Session,
        number: int,
        weights: list[np.ndarray],
        *,
        kind: str,
        parents: list[int],
        metadata: dict[str, Any],
        session_id: int | None = None,
        participants: list[str] | None = None,
        rounds: int = 0,
        metrics: dict[str, Any] | None = None,
        dp_summary: dict[str, Any] | None = None,
        merge_weight: float | None = None,
        staleness: int = 0,
    ) -> Version:
        """Write the weight file (atomically) first, then add the row that points at it."""
        filename = version_filename(number)
        written = weights_io.save_weights(self.versions_dir / filename, weights)
        row = Version(
            number=number,
            kind=kind,
            parents=parents,
            session_id=session_id,
            participants=participants or [],
            rounds=rounds,
            metrics=json_safe(metrics or {}),
            dp_summary=json_safe(dp_summary or {}),
            meta=json_safe(metadata),
            merge_weight=merge_weight,
            staleness=staleness,
            filename=filename,
            size_bytes=written.size_bytes,
            sha256=written.sha256,
            note="",
            created_at=utcnow(),
        )
        session.add(row)
        session.flush()
        return row


def _refuse_non_finite(weights: list[np.ndarray]) -> None:
    for index, array in enumerate(weights):
        if not np.all(np.isfinite(array)):
            raise StoreError(f"weight {index} of the session result contains NaN or Inf")


