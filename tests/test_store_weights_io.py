"""Weight files: exact round trips, no pickle, checksums, and atomic writes that survive SIGKILL."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from server.store import Store
from shared import weights_io
from shared.errors import IntegrityError
from tests.conftest_store import make_weights

REPO = Path(__file__).resolve().parents[1]


def test_round_trip_keeps_order_dtype_and_shape(tmp_path: Path) -> None:
    weights = make_weights(1) + [np.float16(3).reshape(()), np.zeros((0, 5), np.float32)]
    written = weights_io.save_weights(tmp_path / "w.npz", weights)
    assert written.sha256 == weights_io.sha256_file(tmp_path / "w.npz")
    assert written.size_bytes == (tmp_path / "w.npz").stat().st_size
    loaded = weights_io.load_weights_verified(tmp_path / "w.npz", written.sha256)
    assert [a.dtype for a in loaded] == [a.dtype for a in weights]
    for a, b in zip(loaded, weights, strict=True):
        np.testing.assert_array_equal(a, b)
    with zipfile.ZipFile(tmp_path / "w.npz") as archive:
        assert sorted(archive.namelist()) == [f"arr_{i:03d}.npy" for i in range(5)]


def test_many_arrays_keep_their_order() -> None:
    weights = [np.full(2, i, np.int32) for i in range(1200)]
    loaded = weights_io.weights_from_bytes(weights_io.weights_to_bytes(weights))
    assert [int(a[0]) for a in loaded] == list(range(1200))


def test_object_arrays_are_refused_both_ways() -> None:
    with pytest.raises(ValueError, match="pickle"):
        weights_io.weights_to_bytes([np.array([{"a": 1}], dtype=object)])
    buffer = io.BytesIO()
    np.savez(
        buffer, arr_000=np.array([{"a": 1}], dtype=object)
    )  # numpy pickles it; we must not load it
    with pytest.raises(IntegrityError, match="not a readable weights file"):
        weights_io.weights_from_bytes(buffer.getvalue(), source="evil.npz")


def test_unexpected_array_names_are_refused() -> None:
    buffer = io.BytesIO()
    np.savez(buffer, kernel=np.zeros(2))
    with pytest.raises(IntegrityError, match="unexpected arrays"):
        weights_io.weights_from_bytes(buffer.getvalue())


def test_verified_load_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "v1.npz"
    written = weights_io.save_weights(path, make_weights(0))
    with pytest.raises(IntegrityError, match=rf"{path} does not match"):
        weights_io.load_weights_verified(path, "0" * 64)
    path.write_bytes(path.read_bytes()[:50])
    with pytest.raises(IntegrityError, match=str(path)):
        weights_io.load_weights_verified(path, weights_io.sha256_file(path))
    assert written.sha256 != weights_io.sha256_file(path)


WRITER = """
import sys
import numpy as np
from shared import weights_io
big = [np.full((4096, 4096), 7.0, np.float32), np.arange(10, dtype=np.int64)]  # 64 MiB
while True:
    weights_io.save_weights(sys.argv[1], big)
"""


def _temp_files(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if p.name.startswith(weights_io.TEMP_PREFIX)]


def _kill_writer_mid_write(target: Path) -> bool:
    """Start a process rewriting ``target`` forever; SIGKILL it while a temp file is being written."""
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(target)],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not _temp_files(target.parent):
            time.sleep(0.0005)
        caught = bool(_temp_files(target.parent))
        writer.send_signal(signal.SIGKILL)
    finally:
        writer.kill()
        writer.wait()
    return caught


@pytest.mark.slow
def test_killed_writer_leaves_old_or_new_file_never_half(store: Store) -> None:
    old = store.ensure_initial_version(make_weights(0), metadata={})
    target = store.versions_dir / "v00001.npz"  # what a commit of v1 would write
    weights_io.save_weights(target, make_weights(9))
    before = weights_io.sha256_file(target)
    caught = any(_kill_writer_mid_write(target) for _ in range(3))
    assert caught, "never caught the writer mid-write"
    # The target is whole: either the old bytes or a complete new file.
    after = weights_io.sha256_file(target)
    loaded = weights_io.load_weights_verified(target, after)
    assert after == before or loaded[0].shape == (4096, 4096)
    # What the killed writer left is a temp file, not a version; a half one does not even load.
    leftovers = _temp_files(store.versions_dir)
    partial = [p for p in leftovers if p.stat().st_size < 4096 * 4096 * 4]
    assert partial
    for leftover in partial:
        with pytest.raises(IntegrityError):
            weights_io.load_weights(leftover)
    # The store is unaffected, and clean-up removes the debris.
    assert store.head() == old
    np.testing.assert_array_equal(store.load_weights(0)[0], make_weights(0)[0])
    report = store.cleanup(keep_last=1, dry_run=False)
    assert set(report.orphans) == {target, *leftovers}
    assert sorted(p.name for p in store.versions_dir.iterdir()) == [old.path.name]
