"""Benchmarks print only their own output: TensorFlow's start-up lines go to their log file (issue 17)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
#: The benches a person runs (the *_sites helpers are children that speak JSON on stdout).
BENCHES = sorted(p.stem for p in (ROOT / "bench").glob("*.py")
                 if "def main(" in p.read_text(encoding="utf-8") and not p.stem.endswith("_sites"))
LIBRARY_NOISE = ("cuda", "oneDNN", "TensorRT", "cpu_feature_guard", "absl")


@pytest.mark.parametrize("bench", BENCHES)
def test_a_bench_prints_no_library_start_up_lines(bench: str, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    done = subprocess.run([sys.executable, "-m", f"bench.{bench}", "--help"], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, env={**env, "FL_HOME": str(tmp_path)}, check=False)
    assert done.returncode == 0, done.stderr
    assert "usage:" in done.stdout
    noise = [line for line in (done.stdout + done.stderr).splitlines() if any(n in line for n in LIBRARY_NOISE)]
    assert not noise, noise
