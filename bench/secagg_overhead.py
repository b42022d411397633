"""Secure vs plain rounds of a real Flower session at 3, 5, 10, 25 and 50 sites: time, server CPU, bytes.

Each session runs ``run_session`` in this process (real store, Flower gRPC on loopback, the
head-only model's trainable weights: [(2048, 256), (256,), (256, 4), (4,)], 525,572 values)
and its light sites (numpy, no TensorFlow, ``bench.secagg_sites``) in one child process, so
this process's CPU time is the server's alone. Sites "train" in zero time: the difference
between the arms is the protocol's own cost (key and share exchange, quantising and masking,
uint64 vectors, unmasking) plus the masked evaluate step, which only secure sessions run (a
plain session sends no validation metrics, so it has none): it downloads the new weights again
and returns masked validation sums. A round is timed between the fit records of consecutive
rounds (the first round, with the joins, is left out); the "fit phase" of a secure round is its
fit record minus the previous round's evaluate record. Server CPU is this process's user +
system time over the same span (and the sites' process's, all sites together); bytes are the
serialised instructions and replies of each site (received / sent), per round.

Repetitions interleave the arms (plain then secure, then secure then plain, ...) for every site
count, so a noisy neighbour on this shared machine hits both; every figure is the median over
repetitions with the min-max spread, and the ratio is taken per repetition (secure / plain of
the same repetition). With ``--measure-training`` it also times one head-only DP round as
``bench/feature_cache.py`` does and reports (train + secure) / (train + plain), since sites
train in parallel. Ends with ``secagg_overhead_ratio R``: secure / plain round time at 5 sites,
zero training time (the protocol-only, pessimistic ratio).

    python -m bench.secagg_overhead --repeats 3 --rounds 3 --measure-training
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from shared.logging_setup import quiet_script

quiet_script(__file__)  # before Flower imports TensorFlow: its start-up lines go to the log file, not here
import numpy as np
import psutil
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from server.sessions.runtime import run_session
from server.store import Store
from shared.listening import wait_until_listening
from shared.secagg_graph import neighbourhood_size
from shared.secagg_identity import encode_public_key
from shared.settings import load_settings
from tests.flower_fakes import free_port
from tests.privacy_fixtures import charged_session

HEAD_SHAPES = [(2048, 256), (256,), (256, 4), (4,)]
SITE_COUNTS = (3, 5, 10, 25, 50)
ARMS = ("plain", "secure")


@dataclass(frozen=True)
class Measurement:
    """One session: per-round medians over its timed rounds, and bytes per site per round."""

    round_s: float
    fit_s: float  # the round minus its masked evaluate step (plain sessions have none)
    server_cpu_s: float
    sites_cpu_s: float  # all sites together (one process)
    received_mb: float  # per site per round, server -> site
    sent_mb: float  # per site per round, site -> server


def measure_session(site_count: int, *, secure: bool, rounds: int) -> Measurement:
    """Run one session of ``rounds`` rounds with ``site_count`` light sites and measure it."""
    sites_process: dict[str, psutil.Process] = {}
    with tempfile.TemporaryDirectory() as home:
        store = Store.open(load_settings(home=Path(home)))
        try:
            session_id, port, sites = _prepare(store, site_count, secure=secure, rounds=rounds)
            marks, evaluated = _mark_fit_records(store, sites_process)
            outcome: dict[str, object] = {}
            server = threading.Thread(target=_serve, args=(store, session_id, port, outcome), daemon=True)
            server.start()
            wait_until_listening("127.0.0.1", port, timeout_s=60)
            job = {"port": port, "secure": secure, "session_id": session_id, "sites": sites}
            child = subprocess.Popen([sys.executable, "-m", "bench.secagg_sites"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            sites_process["sites"] = psutil.Process(child.pid)
            stdout, stderr = child.communicate(json.dumps(job), timeout=3600)
            server.join(timeout=600)
        finally:
            store.close()
    report = json.loads(stdout.strip().splitlines()[-1]) if child.returncode == 0 else {"errors": {"exit": stderr}}
    if "error" in outcome or report["errors"] or len(marks) != rounds:
        raise RuntimeError(f"{site_count} sites, secure={secure}: {outcome.get('error')} {report['errors']} "
                           f"({len(marks)} of {rounds} rounds)\n{stderr[-2000:]}")
    walls, server_cpu, sites_cpu = (np.diff([m[i] for m in marks]) for i in range(3))
    round_ends = evaluated if len(evaluated) == len(marks) else [m[0] for m in marks]
    fits = [marks[r][0] - round_ends[r - 1] for r in range(1, len(marks))]
    received = statistics.mean(r for r, _ in report["bytes"].values()) / rounds / 1e6
    sent = statistics.mean(s for _, s in report["bytes"].values()) / rounds / 1e6
    return Measurement(float(np.median(walls)), float(np.median(fits)), float(np.median(server_cpu)),
                       float(np.median(sites_cpu)), received, sent)


def _prepare(store: Store, site_count: int, *, secure: bool, rounds: int) -> tuple[int, int, list[dict]]:
    """Enrol the sites, queue one request each, create and mark running their joint session."""
    rng = np.random.default_rng(0)
    store.ensure_initial_version([rng.standard_normal(s).astype(np.float32) * 0.05 for s in HEAD_SHAPES],
                                 metadata={"model": {}})
    names = [f"site{i:02d}" for i in range(site_count)]
    identities = {name: Ed25519PrivateKey.generate() for name in names}
    for name in names:
        store.enrol_site(name)
        store.register_identity_key(name, encode_public_key(identities[name]))
    session = charged_session(store, {name: 100 + i for i, name in enumerate(names)}, rounds=rounds,
                              batch_size=16, config={
                                  "proximal_mu": 0.01, "min_clients": site_count, "join_timeout_s": 120,
                                  "round_timeout_s": 600, "max_update_norm": 1e3, "learning_rate": 0.05,
                                  "secure_aggregation": secure})
    port = free_port()
    store.mark_session_running(session.id, port=port, pid=1)
    sites = [{"name": name, "secret": store.session_secret(session.id, name), "examples": 100 + i,
              "shift": 0.001 * (i + 1), "identity": _raw_private(identities[name]).hex()}
             for i, name in enumerate(names)]
    return session.id, port, sites


def _raw_private(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                             serialization.NoEncryption())


def _serve(store: Store, session_id: int, port: int, outcome: dict[str, object]) -> None:
    try:
        outcome["version"] = run_session(store, session_id, port=port)
    except Exception as exc:  # noqa: BLE001 - reported by measure_session
        outcome["error"] = exc


def _mark_fit_records(
    store: Store, sites: dict[str, psutil.Process]
) -> tuple[list[tuple[float, float, float]], list[float]]:
    """Wrap the store's round recorder to note (wall, server CPU, sites' CPU) when each round's fit is
    aggregated, and the wall time when its masked evaluate is (secure sessions only)."""
    marks: list[tuple[float, float, float]] = []
    evaluated: list[float] = []
    record = store.record_round

    def timed(session_id: int, **kwargs) -> None:  # type: ignore[no-untyped-def]
        if kwargs["phase"] == "fit":
            usage = resource.getrusage(resource.RUSAGE_SELF)
            child = sites["sites"].cpu_times()
            marks.append((time.perf_counter(), usage.ru_utime + usage.ru_stime, child.user + child.system))
        elif kwargs["phase"] == "evaluate":
            evaluated.append(time.perf_counter())
        record(session_id, **kwargs)

    store.record_round = timed  # type: ignore[method-assign]
    return marks, evaluated


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


def _spread(values: list[float], fmt: str = "{:.3f}") -> str:
    return f"{fmt.format(statistics.median(values))} [{fmt.format(min(values))}-{fmt.format(max(values))}]"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="rounds per session (the first is not timed)")
    parser.add_argument("--repeats", type=int, default=3, help="sessions per arm and site count, interleaved")
    parser.add_argument("--sites", default=",".join(map(str, SITE_COUNTS)), help="comma-separated site counts")
    parser.add_argument("--measure-training", action="store_true",
                        help="also time a head-only DP round (TensorFlow, ResNet50 features of 500 images)")
    args = parser.parse_args(argv)
    logging.getLogger("flwr").setLevel(logging.WARNING)  # Flower logs every round at INFO
    counts = [int(n) for n in args.sites.split(",")]
    if 5 not in counts:
        parser.error("the headline ratio is at 5 sites: include 5 in --sites")
    runs: dict[tuple[int, str], list[Measurement]] = {(n, arm): [] for n in counts for arm in ARMS}
    for repeat in range(args.repeats):
        for n in counts:
            for arm in ARMS if repeat % 2 == 0 else ARMS[::-1]:
                runs[(n, arm)].append(measure_session(n, secure=arm == "secure", rounds=args.rounds))
                print(f"repeat {repeat + 1}/{args.repeats}, {n} sites, {arm}: "
                      f"{runs[(n, arm)][-1].round_s:.3f} s/round", file=sys.stderr, flush=True)

    print(f"zero training time, head-only model, {args.rounds} rounds per session (first not timed), "
          f"{args.repeats} interleaved repetitions: median [min-max]")
    print(f"{'sites':>5} {'arm':<6} {'round s':>22} {'server CPU s/round':>22} {'sites CPU s/round':>22} "
          f"{'MB/site/round down, up':>24}")
    for n in counts:
        for arm in ARMS:
            ms = runs[(n, arm)]
            print(f"{n:>5} {arm:<6} {_spread([m.round_s for m in ms]):>22} "
                  f"{_spread([m.server_cpu_s for m in ms]):>22} {_spread([m.sites_cpu_s for m in ms]):>22} "
                  f"{statistics.median(m.received_mb for m in ms):>11.2f}, {statistics.median(m.sent_mb for m in ms):>.2f}")
    print("per site, secure minus plain, medians (the masked evaluate step included, which downloads the new "
          "weights again): the protocol's cost grows with k, the neighbourhood, not with n")
    for n in counts:
        plain, secure = runs[(n, "plain")], runs[(n, "secure")]
        cpu_ms = 1e3 * (statistics.median(m.sites_cpu_s for m in secure) - statistics.median(m.sites_cpu_s for m in plain)) / n
        kb = 1e3 * (statistics.median(m.received_mb + m.sent_mb for m in secure)
                    - statistics.median(m.received_mb + m.sent_mb for m in plain))
        print(f"{n:>5} sites (k = {neighbourhood_size(n):>2}): {cpu_ms:6.1f} ms CPU, {kb:6.1f} kB per site per round")
    ratios = {n: [s.round_s / p.round_s for p, s in zip(runs[(n, "plain")], runs[(n, "secure")])] for n in counts}
    fit_ratios = {n: [s.fit_s / p.round_s for p, s in zip(runs[(n, "plain")], runs[(n, "secure")])] for n in counts}
    print("secure / plain round time, per repetition: median [min-max]; a secure round also runs the masked "
          "evaluate step that plain sessions skip, so its fit phase alone is beside it")
    for n in counts:
        print(f"{n:>5} sites: {_spread(ratios[n], '{:.2f}')}   fit phase only: {_spread(fit_ratios[n], '{:.2f}')}")
    if args.measure_training:
        train = head_training_time()
        print(f"with a head-only DP training round of {train:.2f} s (feature_cache bench's warm-cache round):")
        for n in counts:
            plain = statistics.median(m.round_s for m in runs[(n, "plain")])
            secure = statistics.median(m.round_s for m in runs[(n, "secure")])
            print(f"{n:>5} sites: (train + secure) / (train + plain) = {(train + secure) / (train + plain):.2f}")
    print(f"secagg_overhead_ratio {statistics.median(ratios[5]):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
