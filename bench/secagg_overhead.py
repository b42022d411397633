"""Round time of a real Flower session with and without secure aggregation, for 3, 5 and 10 sites.

Each session runs in this process over gRPC on loopback with the head-only model's trainable
weights ([(2048, 256), (256,), (256, 4), (4,)], 525,572 values) and numpy sites in threads that
"train" in zero time, so the difference is the protocol's own cost: the key and share
exchange, quantising and masking (one self mask + n-1 pairwise masks per site), uint64
vectors twice the size of float32 weights, and unmasking. A round is fit + evaluate, timed
between the fit records of consecutive rounds (the first round, with the joins, is left out).

With ``--measure-training`` it also times one head-only DP round as ``bench/feature_cache.py``
does (500 images, warm feature cache, 1 local epoch) and reports the ratio a site would see with
that training in the round: (train + secure round) / (train + plain round), since sites train
in parallel. Ends with ``secagg_overhead_ratio R``: secure / plain round time, 5 sites, zero
training time (the protocol-only, pessimistic ratio).

    python -m bench.secagg_overhead --rounds 4 --measure-training
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from flwr.client import start_client

from client.federation.secure_aggregation import SecureAggregationClient
from server.sessions.runtime import run_session
from server.store import Store
from shared.listening import wait_until_listening
from shared.logging_setup import quiet_script
from shared.settings import load_settings
from tests.flower_fakes import ScriptedClient, free_port
from tests.privacy_fixtures import charged_session

HEAD_SHAPES = [(2048, 256), (256,), (256, 4), (4,)]
SITE_COUNTS = (3, 5, 10)


def round_time(site_count: int, *, secure: bool, rounds: int) -> float:
    """Median seconds per round of one session, joins excluded."""
    with tempfile.TemporaryDirectory() as home:
        store = Store.open(load_settings(home=Path(home)))
        rng = np.random.default_rng(0)
        store.ensure_initial_version([rng.standard_normal(s).astype(np.float32) * 0.05 for s in HEAD_SHAPES],
                                     metadata={"model": {}})
        sites = [f"site{i}" for i in range(site_count)]
        for site in sites:
            store.enrol_site(site)
        session = charged_session(store, {s: 100 + i for i, s in enumerate(sites)}, rounds=rounds, batch_size=16,
                                  config={"proximal_mu": 0.01, "min_clients": site_count, "join_timeout_s": 60,
                                          "round_timeout_s": 120, "max_update_norm": 1e3, "learning_rate": 0.05,
                                          "secure_aggregation": secure})
        port = free_port()
        store.mark_session_running(session.id, port=port, pid=1)
        fit_done = _time_fit_records(store)
        clients = [ScriptedClient(s, store.session_secret(session.id, s), 100 + i,
                                  lambda ws, i=i: [w + 0.001 * (i + 1) for w in ws])
                   for i, s in enumerate(sites)]
        server = threading.Thread(target=run_session, args=(store, session.id), kwargs={"port": port})
        server.start()
        wait_until_listening("127.0.0.1", port, timeout_s=60)
        threads = [threading.Thread(target=_join, args=(port, c), daemon=True) for c in clients]
        for thread in threads:
            thread.start()
        server.join()
        for thread in threads:
            thread.join(timeout=30)
        store.close()
    if len(fit_done) != rounds:
        raise RuntimeError(f"session ran {len(fit_done)} of {rounds} rounds")
    return statistics.median(np.diff(fit_done))


def _time_fit_records(store: Store) -> list[float]:
    """Wrap the store's round recorder to note when each round's fit was aggregated."""
    times: list[float] = []
    record = store.record_round

    def timed(session_id: int, **kwargs) -> None:  # type: ignore[no-untyped-def]
        if kwargs["phase"] == "fit":
            times.append(time.perf_counter())
        record(session_id, **kwargs)

    store.record_round = timed  # type: ignore[method-assign]
    return times


def _join(port: int, client: ScriptedClient) -> None:
    secure = SecureAggregationClient(client, site=client.site)
    start_client(server_address=f"127.0.0.1:{port}", client=secure.to_client(), insecure=True)


def head_training_time() -> float:
    """One head-only DP round on 500 cached-feature images, as bench/feature_cache.py times it."""
    from client.training.data import load_site_data
    from client.training.dp_training import LocalSettings, train_dp
    from client.training.examples import TrainingExamples
    from client.training.feature_cache import cached_features
    from scripts.make_sample_data import generate_sample_dataset
    from shared.classifier import build_classifier
    from shared.privacy_accounting import DpSchedule

    with tempfile.TemporaryDirectory() as tmp:
        root, cache = Path(tmp) / "site", Path(tmp) / "cache"
        generate_sample_dataset(root, per_class=125, image_size=64, seed=0)
        data = load_site_data(root, image_size=64, val_fraction=0.0)
        classifier = build_classifier(64)
        cached_features(cache, data, 64, classifier.features)  # fill the cache, untimed
        started = time.perf_counter()
        features = cached_features(cache, data, 64, classifier.features)
        schedule = DpSchedule.for_epochs(noise_multiplier=1.0, l2_norm_clip=1.0, examples=data.n_train,
                                         batch_size=64, epochs=1)
        train_dp(classifier.head, TrainingExamples.from_arrays(features, data.labels), schedule, LocalSettings(0.1))
        return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4, help="rounds per session (the first is not timed)")
    parser.add_argument("--measure-training", action="store_true",
                        help="also time a head-only DP round (TensorFlow, ResNet50 features of 500 images)")
    args = parser.parse_args(argv)
    quiet_script(__file__)  # library and TensorFlow start-up lines go to the log file, not here
    rows = {n: (round_time(n, secure=False, rounds=args.rounds), round_time(n, secure=True, rounds=args.rounds))
            for n in SITE_COUNTS}
    print("zero training time: round = fit + evaluate, head-only model, numpy sites in threads, one process")
    print(f"{'sites':>5} {'plain s':>9} {'secure s':>9} {'ratio':>6}")
    for n, (plain, secure) in rows.items():
        print(f"{n:>5} {plain:>9.3f} {secure:>9.3f} {secure / plain:>6.2f}")
    if args.measure_training:
        train = head_training_time()
        print(f"with a head-only DP training round of {train:.2f} s (feature_cache bench's warm-cache round):")
        for n, (plain, secure) in rows.items():
            print(f"{n:>5} sites: (train + secure) / (train + plain) = {(train + secure) / (train + plain):.2f}")
    plain5, secure5 = rows[5]
    print(f"secagg_overhead_ratio {secure5 / plain5:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
