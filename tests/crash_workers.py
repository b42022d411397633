"""Code that crash and disk-full tests run in separate processes (spawned, so it must import cleanly)."""

from __future__ import annotations

import resource
import signal
import sys
from pathlib import Path

import numpy as np

from server.store import Store
from shared.errors import StorageWriteError
from shared.settings import load_settings


def commit_with_file_size_limit(home: str, session_id: int, limit_bytes: int) -> int:
    """Commit a large result while the OS refuses files over ``limit_bytes`` (a full disk's stand-in).

    Returns 0 when the store raised ``StorageWriteError``, 1 if the commit went through.
    """
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # write() then fails with EFBIG instead of killing us
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))
    store = Store.open(load_settings(home=Path(home)))
    session = store.get_session(session_id)
    weights = [np.ones((512, 512), np.float32) for _ in range(4)]
    try:
        store.commit_session_result(session_id, weights, metrics={}, dp_summary={},
                                    participants=session.participants, rounds=1)
    except StorageWriteError as exc:
        print(f"refused: {exc}")
        return 0
    return 1




def slow_flower_client(port: int, site: str, secret: str, fit_seconds: float, marker: str) -> None:
    """A numpy Flower client whose fit takes ``fit_seconds``; it creates ``marker`` when fit starts."""
    import time

    from tests.flower_fakes import ScriptedClient, run_in_thread

    def slow_update(weights: list[np.ndarray]) -> list[np.ndarray]:
        Path(marker).touch()
        time.sleep(fit_seconds)
        return [w + 1.0 for w in weights]

    run_in_thread(port, ScriptedClient(site, secret, 10, slow_update)).join()


if __name__ == "__main__":
    if sys.argv[1] == "commit":
        sys.exit(commit_with_file_size_limit(sys.argv[2], int(sys.argv[3]), int(sys.argv[4])))
    if sys.argv[1] == "client":
        slow_flower_client(int(sys.argv[2]), sys.argv[3], sys.argv[4], float(sys.argv[5]), sys.argv[6])
