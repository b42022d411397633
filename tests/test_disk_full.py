"""A version that cannot be written (disk full) is a clear error: no corrupt version, head unchanged."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

from server.store import Store
from server.store.lifecycle import SessionState
from shared.settings import load_settings
from shared.weights_io import TEMP_PREFIX

DP = {"noise_multiplier": 1.0, "delta": 1e-5, "l2_norm_clip": 1.0}


def test_commit_on_a_full_disk_fails_cleanly_and_leaves_the_head(tmp_path: Path) -> None:
    home = tmp_path / "home"
    store = Store.open(load_settings(home=home))
    store.ensure_initial_version([np.zeros((4, 4), np.float32)], metadata={})
    store.enrol_site("north")
    request = store.submit_request("north", rounds=1, local_epochs=1, dp=DP)
    session = store.create_session([request.id], config={"rounds": 1})
    store.mark_session_running(session.id, port=1, pid=1)

    result = subprocess.run(
        [sys.executable, "-m", "tests.crash_workers", "commit", str(home), str(session.id), str(256 * 1024)],
        capture_output=True, text=True, timeout=120,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert "cannot write" in result.stdout and "File too large" in result.stdout
    assert store.head().number == 0
    assert [v.number for v in store.list_versions()] == [0]
    assert store.get_session(session.id).state == SessionState.RUNNING  # can still fail or retry
    leftovers = [p.name for p in store.versions_dir.iterdir() if p.name.startswith(TEMP_PREFIX)]
    assert leftovers == []
    np.testing.assert_array_equal(store.load_weights(0)[0], np.zeros((4, 4), np.float32))
    store.close()
