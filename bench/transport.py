"""Round overhead outside training (serialise, send, validate, aggregate) vs a raw memory copy.

A real session (``run_session``: Flower gRPC on loopback, ``AdmittedFedProx``, SQLite store)
runs with numpy clients that return their update at once, so each fit round's wall time is pure
transport and aggregation. It is compared with copying the same bytes in memory once (global
weights out to every site, updates back). Done for the head-only update and for a full ResNet50
update (every stage trainable). Ends with ``transport_overhead_ratio R`` (head-only).

    python -m bench.transport --sites 2 --rounds 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from server.sessions.runtime import run_session  # noqa: E402
from server.store import Store  # noqa: E402
from shared.logging_setup import quiet_script  # noqa: E402
from shared.settings import load_settings  # noqa: E402
from tests.flower_fakes import ScriptedClient, free_port, run_in_thread  # noqa: E402
from tests.privacy_fixtures import charged_session  # noqa: E402


def model_shapes(trainable_blocks: int) -> list[tuple[int, ...]]:
    """Shapes of the travelling weights of the real classifier (built once, 32 px)."""
    from shared.classifier import build_classifier

    classifier = build_classifier(32, trainable_blocks=trainable_blocks, weights=None, seed=0)
    return [tuple(v.shape) for v in classifier.full.trainable_variables]


def fit_round_seconds(shapes: list[tuple[int, ...]], sites: int, rounds: int) -> list[float]:
    """Wall time of each fit round (training takes no time) in a real session."""
    rng = np.random.default_rng(0)
    weights = [rng.standard_normal(s).astype(np.float32) * 0.01 for s in shapes]
    with tempfile.TemporaryDirectory() as home:
        store = Store.open(load_settings(home=Path(home)))
        store.ensure_initial_version(weights, metadata={"model": {}})
        names = [f"site{i}" for i in range(sites)]
        for name in names:
            store.enrol_site(name)
        config = {"proximal_mu": 0.0, "min_clients": sites, "join_timeout_s": 120, "round_timeout_s": 600,
                  "max_update_norm": 1e9, "learning_rate": 0.1}
        session = charged_session(store, dict.fromkeys(names, 100), rounds=rounds, config=config, batch_size=8)
        port = free_port()
        store.mark_session_running(session.id, port=port, pid=os.getpid())
        marks: list[tuple[str, float]] = []
        record = store.record_round

        def timed_record(session_id: int, **kwargs) -> None:
            marks.append((kwargs["phase"], time.perf_counter()))
            record(session_id, **kwargs)

        store.record_round = timed_record  # type: ignore[method-assign]
        server = threading.Thread(target=run_session, args=(store, session.id), kwargs={"port": port})
        server.start()
        clients = [ScriptedClient(n, store.session_secret(session.id, n), 100, lambda w: [a + 1e-3 for a in w])
                   for n in names]
        for client in clients:
            run_in_thread(port, client)
        joined = time.perf_counter()
        server.join()
        store.close()
    # A fit round runs from the previous round's record (or the joins) to its own fit record.
    previous, rounds_s = joined, []
    for phase, at in marks:
        if phase == "fit":
            rounds_s.append(at - previous)
        previous = at
    return rounds_s[1:] or rounds_s  # the first round also waits for the sites to join


def raw_copy_seconds(shapes: list[tuple[int, ...]], sites: int) -> float:
    """Copy the bytes a round moves (weights to each site and back) once, in memory."""
    arrays = [np.ones(s, np.float32) for s in shapes]
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(2 * sites):
            [a.copy() for a in arrays]
        best = min(best, time.perf_counter() - started)
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    quiet_script(__file__)  # library and TensorFlow start-up lines go to the log file, not here
    ratios = {}
    for name, blocks in (("head-only", 0), ("full ResNet50", 4)):
        shapes = model_shapes(blocks)
        megabytes = sum(int(np.prod(s)) for s in shapes) * 4 / 1e6
        round_s = statistics.median(fit_round_seconds(shapes, args.sites, args.rounds))
        copy_s = raw_copy_seconds(shapes, args.sites)
        ratios[name] = round_s / copy_s
        print(f"{name}: {megabytes:.1f} MB update, {args.sites} sites: fit round {round_s * 1e3:.1f} ms "
              f"vs raw copy {copy_s * 1e3:.2f} ms ({ratios[name]:.0f}x)")
    print(f"transport_overhead_ratio {ratios['head-only']:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
