"""Time from an admin's approval to the session's Flower server accepting connections.

Each trial approves one request through the real ``SessionManager`` (which spawns
``python -m server.sessions.process``) and waits until the session port accepts a TCP connection.
The session process blocks TensorFlow's import (Flower's TensorBoard helper would pull it in),
so for comparison the same process start is also timed with that import allowed.
Ends with ``session_start_s S`` (median seconds, target < 3).

    python -m bench.session_start --trials 5
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.modules.setdefault("tensorflow", None)  # type: ignore[arg-type]  # as in a session process: not needed

import numpy as np

from server.sessions.manager import ApprovalOptions, SessionManager
from server.store import Store
from shared.listening import wait_until_listening
from shared.logging_setup import quiet_script
from shared.settings import load_settings
from tests.flower_fakes import free_port
from tests.privacy_fixtures import declaration

HEAD_SHAPES = [(2048, 256), (256,), (256, 4), (4,)]
DP = {"noise_multiplier": 1.0, "delta": 1e-5, "l2_norm_clip": 1.0}


def approval_to_listening(trials: int) -> list[float]:
    with tempfile.TemporaryDirectory() as home:
        settings = load_settings(home=Path(home), session_port_start=free_port(), session_port_count=50)
        store = Store.open(settings)
        rng = np.random.default_rng(0)
        store.ensure_initial_version([rng.standard_normal(s).astype(np.float32) for s in HEAD_SHAPES],
                                     metadata={"model": {}})
        store.enrol_site("bench")
        manager = SessionManager(store, settings)
        timings = []
        for _ in range(trials):
            request = store.submit_request("bench", rounds=1, local_epochs=1, dp=DP, declaration=declaration(1000)).id
            started = time.perf_counter()
            session = manager.approve([request], ApprovalOptions(rounds=1, join_timeout_s=60))
            wait_until_listening(settings.session_host, session.port, timeout_s=60, interval_s=0.01)
            timings.append(time.perf_counter() - started)
            manager.stop(session.id, reason="benchmark")
        store.close()
    return timings


def import_time(block_tensorflow: bool) -> float:
    """Seconds a fresh interpreter needs to import what a session process imports."""
    block = "import sys; sys.modules['tensorflow'] = None; " if block_tensorflow else ""
    code = f"{block}import server.sessions.runtime"
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=5)
    args = parser.parse_args(argv)
    quiet_script(__file__)  # library and TensorFlow start-up lines go to the log file, not here
    timings = approval_to_listening(args.trials)
    blocked, unblocked = import_time(True), import_time(False)
    print(f"approval -> listening over {args.trials} sessions: median {statistics.median(timings):.2f} s, "
          f"max {max(timings):.2f} s (target < 3 s)")
    print(f"session imports: {blocked:.2f} s with TensorFlow blocked, {unblocked:.2f} s without "
          f"({unblocked / blocked:.1f}x)")
    print(f"session_start_s {statistics.median(timings):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
