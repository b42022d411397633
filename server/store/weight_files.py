"""The versions folder: file names of versions and the stray files clean-up may remove.
"""

from __future__ import annotations

import re
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from server.store.models import (
    Version,
)
from shared import weights_io

_VERSION_FILE = re.compile(r"^v\d+\.npz$")


def version_filename(number: int) -> str:
    """A version's file name in the versions folder (zero-padded so names sort by number)."""
    return f"v{number:05d}.npz"


def stray_files(session: Session, versions_dir: Path, *, also: list[Version]) -> list[Path]:
    """Files in the versions folder that no unpruned version (outside ``also``) refers to."""
    doomed = {row.number for row in also}
    wanted = set(
        session.scalars(
            select(Version.filename).where(
                Version.pruned_at.is_(None), Version.number.not_in(doomed)
            )
        )
    )
    if not versions_dir.is_dir():
        return []
    return sorted(
        path
        for path in versions_dir.iterdir()
        if path.is_file()
        and path.name not in wanted
        and (_VERSION_FILE.match(path.name) or path.name.startswith(weights_io.TEMP_PREFIX))
    )

