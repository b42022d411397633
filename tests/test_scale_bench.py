"""``bench.scale`` end to end, small: the real server, session processes and light sites lose nothing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def test_concurrent_sessions_all_complete_with_a_version_each(tmp_path: Path) -> None:
    """Two sessions of five sites on one host (the per-address admission cap is four) at once."""
    env = {**os.environ, "FL_HOME": str(tmp_path / "logs-home")}
    result = subprocess.run(
        [sys.executable, "-m", "bench.scale", "--sessions", "2", "--sites-per-session", "5", "--big-session", "0",
         "--rounds", "2", "--timeout", "180", "--home", str(tmp_path / "home")],
        capture_output=True, text=True, timeout=400, env=env, cwd=Path(__file__).resolve().parent.parent,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[-1] == "scale_sessions_completed 2", result.stdout
    assert "ended: 2 COMPLETED, 0 FAILED" in result.stdout
    assert "versions committed 2, merges recorded 1" in result.stdout  # the second commit found the head moved
    assert "lost: 0" in result.stdout
