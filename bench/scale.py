"""The real server at scale: (a) 10 concurrent sessions of 5 sites, (b) one session of 50 sites.

This process is the server, put together as ``fl-server serve`` does it: a SQLite store with
v0 (the head-only model's trainable shapes, 525,572 values), the request socket
(``RequestServerThread``) and the ``SessionManager`` with its watcher, which spawns one
``python -m server.sessions.process`` per approval. The admin's part is ``SessionManager.approve``
once every site's request is PENDING. The sites are threads of one child process
(``bench.scale_sites``, numpy only): each registers its identity key, sends its request with a
declaration, waits for approval over the socket, and joins its session with its ticket (secure
aggregation where the session uses it, which is every session of 3+ sites by default), returning
shifted weights at once with its approved example count. A probe site polls the socket all along.

Reported per phase: approval to the first fit instruction at a site and to round 1's record,
round time (rounds 2+, between fit records), peak RSS of the server process and of each session
process, the socket probe's p50/p99 while the sessions run, server and session CPU, versions
committed and merges recorded, and whether anything was lost: every session must end COMPLETED
(with a version whose session is it) or FAILED with a reason, every site must have been heard.
Ends with ``scale_sessions_completed N`` (of the concurrent phase's sessions).

    python -m bench.scale --sessions 10 --sites-per-session 5 --big-session 50 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.modules.setdefault("tensorflow", None)  # type: ignore[arg-type]  # as in a session process: no training here

import numpy as np
import psutil
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bench.secagg_overhead import HEAD_SHAPES, _raw_private
from server.sessions.manager import FINAL_STATES, ApprovalOptions, SessionManager
from server.socket.request_socket import RequestServerThread
from server.store import Store
from server.store.lifecycle import RequestState, SessionState
from shared.errors import SessionFailedError
from shared.logging_setup import configure_logging, quiet_script
from shared.settings import load_settings
from tests.flower_fakes import free_port
from tests.privacy_fixtures import declaration

DP = {"noise_multiplier": 1.1, "delta": 1e-5, "l2_norm_clip": 1.0}
BUDGET_EPSILON = 100.0
MIB = 1 << 20


@dataclass
class Phase:
    """One scenario: its session groups, and what was measured while it ran."""

    name: str
    groups: list[list[str]]
    approved_at: dict[int, float] = field(default_factory=dict)  # session id -> time.time()
    pids: dict[int, int] = field(default_factory=dict)
    session_rss: dict[int, int] = field(default_factory=dict)  # peak, bytes
    session_cpu: dict[int, float] = field(default_factory=dict)
    server_rss: int = 0
    server_cpu: float = 0.0
    sites: dict[str, Any] = field(default_factory=dict)
    probe: list[tuple[float, float]] = field(default_factory=list)
    ended_at: float = 0.0


class Server:
    """The store, request socket and session manager of one ``fl-server serve``, in this process."""

    def __init__(self, home: Path, sites: list[str]) -> None:
        self.settings = load_settings(home=home, request_port=0, session_port_start=free_port(),
                                      session_port_count=100)
        self.store = Store.open(self.settings)
        rng = np.random.default_rng(0)
        self.store.ensure_initial_version([rng.standard_normal(s).astype(np.float32) * 0.05 for s in HEAD_SHAPES],
                                          metadata={"model": {}})
        self.tokens = {site: self.store.enrol_site(site, budget_epsilon=BUDGET_EPSILON) for site in [*sites, "probe"]}
        self.identities = {site: _raw_private(Ed25519PrivateKey.generate()).hex() for site in sites}
        self.probe_request = self.store.submit_request("probe", rounds=1, local_epochs=1, dp=DP,
                                                       declaration=declaration(100)).id
        self.manager = SessionManager(self.store, self.settings)
        self.manager.start()
        self.socket = RequestServerThread(self.store, self.settings).start()
        self.process = psutil.Process()

    def close(self) -> None:
        self.manager.shutdown(stop_running=True)
        self.socket.stop()
        self.store.close()


def run_phase(server: Server, phase: Phase, rounds: int, examples: int, timeout_s: float) -> None:
    """Start the phase's sites, approve each group once its requests are PENDING, wait for the end."""
    names = [site for group in phase.groups for site in group]
    job = {"port": server.socket.port, "rounds": rounds, "dp": DP, "budget_epsilon": BUDGET_EPSILON,
           "approval_timeout_s": timeout_s, "timeout_s": timeout_s, "probe_interval_s": 0.05,
           "probe": {"name": "probe", "token": server.tokens["probe"], "request_id": server.probe_request},
           "sites": [{"name": n, "token": server.tokens[n], "examples": examples + i, "address": site_address(i),
                      "identity": server.identities[n]} for i, n in enumerate(names)]}
    log = server.settings.home / "logs" / "scale_sites.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as errors:  # the child's warnings and tracebacks, for the post-mortem
        child = subprocess.Popen([sys.executable, "-m", "bench.scale_sites"], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, stderr=errors, text=True)
    reader = _Reader(child, json.dumps(job), log)
    requests = _pending_requests(server.store, names, timeout_s)
    stop = threading.Event()
    monitor = threading.Thread(target=_monitor, args=(server, phase, stop), daemon=True)
    monitor.start()
    options = ApprovalOptions(rounds=rounds, join_timeout_s=timeout_s, round_timeout_s=timeout_s)
    for group in phase.groups:
        approved_at = time.time()
        session = server.manager.approve([requests[site] for site in group], options, actor="bench")
        phase.approved_at[session.id], phase.pids[session.id] = approved_at, session.pid or 0
    deadline = time.monotonic() + timeout_s
    for session_id in phase.approved_at:
        try:
            server.manager.wait(session_id, timeout_s=max(1.0, deadline - time.monotonic()))
        except SessionFailedError:  # still running: stopped, and counted below as not completed
            server.manager.stop(session_id, reason=f"bench: not finished within {timeout_s:.0f} s")
    phase.ended_at = time.time()
    stop.set()
    monitor.join()
    report = reader.result(timeout_s)
    phase.sites, phase.probe = report["sites"], report["probe"]


def site_address(index: int) -> str:
    """Each site connects to the request socket from its own loopback address, as from its own host."""
    return f"127.0.{1 + index // 250}.{1 + index % 250}"


class _Reader:
    """Feeds the job to the sites' process and collects its one JSON line without blocking it."""

    def __init__(self, child: subprocess.Popen[str], job: str, log: Path) -> None:
        self.child, self.log = child, log
        self.out: list[str] = []
        self.thread = threading.Thread(target=lambda: self.out.append(child.communicate(job)[0]), daemon=True)
        self.thread.start()

    def result(self, timeout_s: float) -> dict[str, Any]:
        self.thread.join(timeout_s)
        stdout = "".join(self.out)
        if self.child.returncode != 0 or not stdout.strip():
            raise RuntimeError(f"the sites' process failed ({self.child.returncode}): see {self.log}")
        return json.loads(stdout.strip().splitlines()[-1])


def _pending_requests(store: Store, sites: list[str], timeout_s: float) -> dict[str, int]:
    """Each site's PENDING request, once all have arrived over the socket."""
    deadline = time.monotonic() + timeout_s
    wanted = set(sites)
    while True:
        pending = {r.site: r.id for r in store.list_requests(states=[RequestState.PENDING]) if r.site in wanted}
        if len(pending) == len(wanted):
            return pending
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {len(pending)} of {len(wanted)} requests arrived in {timeout_s} s")
        time.sleep(0.2)


def _monitor(server: Server, phase: Phase, stop: threading.Event) -> None:
    """Sample RSS (peak) and CPU of the server and of every session process until ``stop``."""
    while not stop.wait(0.2):
        phase.server_rss = max(phase.server_rss, server.process.memory_info().rss)
        times = server.process.cpu_times()
        phase.server_cpu = times.user + times.system
        for session_id, pid in list(phase.pids.items()):
            try:
                process = psutil.Process(pid)
                rss, times = process.memory_info().rss, process.cpu_times()
            except psutil.Error:
                continue  # ended: its last sample stands
            phase.session_rss[session_id] = max(phase.session_rss.get(session_id, 0), rss)
            phase.session_cpu[session_id] = times.user + times.system


def _spread(values: list[float], fmt: str = "{:.2f}") -> str:
    if not values:
        return "n/a"
    return f"{fmt.format(statistics.median(values))} ({fmt.format(min(values))}-{fmt.format(max(values))})"


def summarise(store: Store, phase: Phase) -> dict[str, Any]:
    """Print the phase's figures; return its counts (completed, failed, lost, versions, merges)."""
    sessions = {sid: store.get_session(sid) for sid in phase.approved_at}
    first_fit, first_round, round_s = [], [], []
    for sid, session in sessions.items():
        fits = [min(r["fit_at"]) for s, r in phase.sites.items() if s in session.participants and r.get("fit_at")]
        if fits:
            first_fit.append(min(fits) - phase.approved_at[sid])
        marks = [r.recorded_at.timestamp() for r in store.session_rounds(sid) if r.phase == "fit"]
        if marks:
            first_round.append(marks[0] - phase.approved_at[sid])
            round_s.extend(np.diff(marks).tolist())
    completed = [s for s in sessions.values() if s.state == SessionState.COMPLETED]
    failed = [s for s in sessions.values() if s.state == SessionState.FAILED]
    versions = {v.session_id: v for v in store.list_versions() if v.session_id in sessions}
    lost = [f"session {s.id}: {s.state.value}" for s in sessions.values()
            if s.state not in FINAL_STATES or (s.state == SessionState.FAILED and not s.reason)]
    lost += [f"session {s.id} COMPLETED without its version" for s in completed
             if s.version_number is None or s.id not in versions]
    lost += [f"site {name}: {r.get('error', 'no report')}" for name, r in phase.sites.items()
             if "error" in r or "fit_at" not in r]
    during = [latency for at, latency in phase.probe if min(phase.approved_at.values()) <= at <= phase.ended_at]
    merges = [v for v in versions.values() if v.kind == "merge"]
    sizes = [len(g) for g in phase.groups]
    print(f"\n{phase.name}: {len(sessions)} session(s) of {_spread(sizes, '{:.0f}')} sites, secure aggregation "
          f"{'on' if all(s.config.get('secure_aggregation') for s in sessions.values()) else 'not everywhere'}")
    print(f"  ended: {len(completed)} COMPLETED, {len(failed)} FAILED"
          + "".join(f"\n    session {s.id} FAILED: {s.reason}" for s in failed))
    print(f"  approval -> first fit instruction at a site, s: {_spread(first_fit)}")
    print(f"  approval -> round 1 recorded, s:              {_spread(first_round)}")
    print(f"  round time (rounds 2+, all sessions), s:     {_spread(round_s, '{:.3f}')}")
    print(f"  server process: peak RSS {phase.server_rss / MIB:.0f} MiB, CPU {phase.server_cpu:.1f} s so far")
    print(f"  session processes: peak RSS {_spread([v / MIB for v in phase.session_rss.values()], '{:.0f}')} MiB "
          f"each, {sum(phase.session_rss.values()) / MIB:.0f} MiB together; CPU "
          f"{_spread(list(phase.session_cpu.values()), '{:.1f}')} s each")
    retries = sum(r.get("retries", 0) for r in phase.sites.values())
    print(f"  request socket while sessions ran: {len(during)} probe requests, p50 "
          f"{_percentile(during, 50):.1f} ms, p99 {_percentile(during, 99):.1f} ms; sites' retries (busy or dropped) {retries}")
    print(f"  versions committed {len(versions)}, merges recorded {len(merges)} "
          f"(staleness {_spread([float(v.staleness) for v in merges], '{:.0f}')})")
    print(f"  lost: {len(lost)}" + "".join(f"\n    {line}" for line in lost))
    return {"completed": len(completed), "lost": len(lost)}


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q) * 1e3) if values else float("nan")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=10, help="concurrent sessions in phase (a)")
    parser.add_argument("--sites-per-session", type=int, default=5)
    parser.add_argument("--big-session", type=int, default=50, help="sites of phase (b)'s one session; 0 skips it")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--examples", type=int, default=1000, help="declared images per site (plus its index)")
    parser.add_argument("--timeout", type=float, default=900, help="seconds any phase step may take")
    parser.add_argument("--home", type=Path, help="keep the store and session logs here (default: a temporary folder)")
    args = parser.parse_args(argv)
    log_file = quiet_script(__file__)
    configure_logging("INFO", log_file, console=False)  # the server's warnings (rate limits, ...) too
    logging.getLogger("flwr").setLevel(logging.WARNING)
    count = max(args.sessions * args.sites_per_session, args.big_session)
    names = [f"site{i:02d}" for i in range(count)]
    per = args.sites_per_session
    phases = [Phase(f"(a) {args.sessions} concurrent sessions",
                    [names[i * per:(i + 1) * per] for i in range(args.sessions)])]
    if args.big_session:
        phases.append(Phase(f"(b) one session of {args.big_session} sites", [names[:args.big_session]]))
    print(f"{args.rounds} rounds per session, zero training time (light sites), head-only model; "
          f"machine load {' '.join(f'{x:.1f}' for x in psutil.getloadavg())}")
    results = []
    with tempfile.TemporaryDirectory() as scratch:
        server = Server(args.home or Path(scratch), names)
        try:
            for phase in phases:
                run_phase(server, phase, args.rounds, args.examples, args.timeout)
                results.append(summarise(server.store, phase))
        finally:
            server.close()
    print(f"scale_sessions_completed {results[0]['completed']}")
    return 0 if all(r["lost"] == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
