"""Latency of the dashboard's versions page and its JSON twin on a big history.

A temporary store gets ``--versions`` versions (each from its own session of two of ``--sites``
sites, rounds recorded, weights committed through the Store API as session processes do), then
``fl-history web`` runs in its own process (real uvicorn on loopback, so the client's share of
the interpreter lock is not counted) and one keep-alive client asks for ``/versions`` and
``/api/versions`` ``--requests`` times each, interleaved (the order flips every repetition), plus
the page right after each of ``--requests`` store changes (a release), which makes the dashboard
read all versions again. Prints median, p95 and min-max per arm and their ratios, and ends with
``dashboard_p95_ms N``: the worse p95 of page and API on an unchanged store.

    python -m bench.dashboard --versions 1000 --sites 20 --requests 200
"""

from __future__ import annotations

import argparse
import http.client
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from server.store import Store
from shared.listening import wait_until_listening
from shared.settings import load_settings

ROOT = Path(__file__).resolve().parents[1]
ARMS = {"page": "/versions", "api": "/api/versions", "changed": "/versions"}


def build_store(home: Path, *, versions: int, sites: int) -> None:
    """v0 and ``versions`` session versions, each trained by two sites for two recorded rounds."""
    store = Store.open(load_settings(home=home))
    rng = np.random.default_rng(0)
    try:
        store.ensure_initial_version([np.zeros((8, 4), np.float32)], metadata={"model": {"image_size": 32}})
        names = [f"site-{i:02d}" for i in range(sites)]
        for name in names:
            store.enrol_site(name)
        for n in range(versions):
            pair = [names[n % sites], names[(n + 1) % sites]]
            ids = [store.submit_request(s, rounds=2, local_epochs=1, dp={"noise_multiplier": 1.1}).id for s in pair]
            session = store.create_session(ids, config={"rounds": 2})
            store.mark_session_running(session.id, port=9000, pid=1)
            for r in (1, 2):
                report = {s: {"epsilon": 0.5 * r, "epsilon_total": 0.5 * r, "examples": 30} for s in pair}
                store.record_round(session.id, round_number=r, phase="fit", per_site=report,
                                   metrics={"loss": 1.0 / r, "accuracy": 0.3 + 0.1 * r, "examples": 60})
                store.record_round(session.id, round_number=r, phase="evaluate", metrics={"accuracy": 0.3 + 0.1 * r})
            store.commit_session_result(
                session.id, [rng.standard_normal((8, 4)).astype(np.float32)],
                metrics={"evaluate": {"accuracy": float(rng.uniform(0.3, 0.9)), "loss": 1.0}},
                dp_summary={s: {"epsilon": 1.0, "delta": 1e-5, "noise_multiplier": 1.1, "examples": 30} for s in pair},
                participants=pair, rounds=2)
    finally:
        store.close()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def measure(port: int, requests: int, home: Path) -> dict[str, list[float]]:
    """Milliseconds per request for each arm, interleaved on one keep-alive connection.

    The "changed" arm asks for the page right after the admin released a version to a site, so
    the dashboard must read the whole table again (its cache is keyed on the store's versions).
    """
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    times: dict[str, list[float]] = {arm: [] for arm in ARMS}
    admin = Store.open(load_settings(home=home))
    versions, sites = admin.head().number, [s.name for s in admin.list_sites()]
    releases = ((1 + i % versions, sites[i // versions % len(sites)]) for i in range(10**6))

    def one(arm: str) -> float:
        if arm == "changed":
            number, site = next(releases)
            admin.export_version(number, [site], actor="bench")
        started = time.perf_counter()
        connection.request("GET", ARMS[arm])
        response = connection.getresponse()
        body = response.read()
        elapsed = (time.perf_counter() - started) * 1000
        if response.status != 200 or not body:
            raise RuntimeError(f"{ARMS[arm]} answered {response.status}")
        return elapsed

    for _ in range(10):  # warm-up: imports, pools, template compilation
        for arm in ARMS:
            one(arm)
    for i in range(requests):
        for arm in (list(ARMS) if i % 2 == 0 else list(reversed(ARMS))):
            times[arm].append(one(arm))
    connection.close()
    admin.close()
    return times


def p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[94]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--versions", type=int, default=1000)
    parser.add_argument("--sites", type=int, default=20)
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        started = time.perf_counter()
        build_store(home, versions=args.versions, sites=args.sites)
        print(f"store: {args.versions} versions from {args.sites} sites built in {time.perf_counter() - started:.0f} s")
        port = free_port()
        server = subprocess.Popen([sys.executable, "-m", "server.history.cli", "--home", str(home), "web",
                                   "--port", str(port)], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                                  stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        try:
            wait_until_listening("127.0.0.1", port, timeout_s=60)
            times = measure(port, args.requests, home)
        finally:
            server.send_signal(signal.SIGINT)
            server.wait(timeout=30)
    print(f"{'arm':<8} {'path':<14} {'median ms':>10} {'p95 ms':>8} {'min-max ms':>16}")
    for arm, values in times.items():
        print(f"{arm:<8} {ARMS[arm]:<14} {statistics.median(values):>10.1f} {p95(values):>8.1f} "
              f"{min(values):>7.1f}-{max(values):<8.1f}")
    page, api, changed = times["page"], times["api"], times["changed"]
    print(f"ratios ({args.requests} requests per arm, interleaved): page/api median "
          f"{statistics.median(page) / statistics.median(api):.2f}, p95 {p95(page) / p95(api):.2f}; "
          f"page just after a store change / page: median {statistics.median(changed) / statistics.median(page):.1f}, "
          f"p95 {p95(changed) / p95(page):.1f}")
    print(f"dashboard_p95_ms {max(p95(page), p95(api)):.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
