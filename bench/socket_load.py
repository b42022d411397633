"""Load test of the request socket: many concurrent sites polling their request's status.

The server runs in its own process (a temporary SQLite store, real RequestServer on loopback,
default connection limits unless the run needs more slots in all), so its cost is not hidden behind the clients' share of the
interpreter lock. Each client connection belongs to one enrolled site, owns one request, and
asks for its status in a closed loop for ``--seconds``; each site connects from its own
loopback address (127.0.1.N), as sites do from their own hosts. Every reply is checked: right
correlation id, right request, right site.

``--idle-attackers N`` adds N outsiders without a token on one other address (127.0.0.2) that
try to hold connections open, sending a bad frame now and then and reconnecting whenever the
server closes or refuses them (the security review's slot-exhaustion probe).

Prints throughput, p50/p99 latency, errors, lost and wrong replies for the real sites, what the
attackers managed, the server's RSS before and after, and ends with ``socket_load_rps N``.

    python -m bench.socket_load --connections 200 --seconds 60 --idle-attackers 256
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import multiprocessing as mp
import statistics
import tempfile
import threading
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path

from server.socket.connection_slots import ConnectionLimits
from server.socket.request_socket import RequestServer
from server.store import Store
from shared import framing
from shared.settings import Settings, load_settings

DP = {"noise_multiplier": 1.1, "delta": 1e-5, "l2_norm_clip": 1.0}
ATTACKER_ADDRESS = "127.0.0.2"
#: Seconds between an attacker's bad frames on an open connection, and before it retries a refusal.
ATTACK_INTERVAL_S = 3.0
#: (site, token, that site's request ids) for every enrolled site.
Plan = list[tuple[str, str, list[int]]]


@dataclass
class Tally:
    """What the clients saw."""

    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    wrong: int = 0
    lost: int = 0


@dataclass
class AttackTally:
    """What the outsiders managed: connections the server held for them, refused, or cut off."""

    held_now: int = 0
    held_max: int = 0
    accepted: int = 0
    refused: int = 0
    cut_off: int = 0


# ----------------------------------------------------------------- server process


def serve(home: str, sites: int, requests_per_site: int, commit_rate: float, max_connections: int,
          pipe: Connection) -> None:
    """Child process: enrol sites, submit requests, serve until the parent says stop."""
    logging.basicConfig(level=logging.ERROR)
    settings = load_settings(home=Path(home), request_port=0)
    store = Store.open(settings)
    plan: Plan = []
    for index in range(sites):
        site = f"site{index:03d}"
        token = store.enrol_site(site)
        ids = [
            store.submit_request(site, rounds=1, local_epochs=1, dp=DP).id
            for _ in range(requests_per_site)
        ]
        plan.append((site, token, ids))
    stop = threading.Event()
    if commit_rate > 0:
        threading.Thread(target=_commit_steadily, args=(store, commit_rate, stop), daemon=True).start()
    asyncio.run(_serve_until_told(store, settings, plan, max_connections, pipe))
    stop.set()
    store.close()


def _commit_steadily(store: Store, rate: float, stop: threading.Event) -> None:
    """Unrelated writes (as sessions recording rounds make): each one empties the read cache."""
    while not stop.wait(1 / rate):
        store.notify("site000", kind="bench", message="tick")


async def _serve_until_told(store: Store, settings: Settings, plan: Plan, max_connections: int,
                            pipe: Connection) -> None:
    # Default limits, widened only when the run has more connections than they allow in all.
    limits = ConnectionLimits(max_connections=max(ConnectionLimits.max_connections, max_connections),
                              max_unauthenticated=max(ConnectionLimits.max_unauthenticated, max_connections // 2))
    server = RequestServer(store, settings, limits=limits)
    await server.start()
    pipe.send((server.port, plan))
    await asyncio.to_thread(pipe.recv)
    await server.stop()


def rss_mib(pid: int) -> str:
    """Resident set size of a process from /proc (Linux), in MiB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return f"{int(line.split()[1]) / 1024:.1f} MiB"
    except OSError:
        pass
    return "n/a"


# ----------------------------------------------------------------- clients


async def query(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, site: str, token: str,
    request_id: int, counter: int, tally: Tally | None,
) -> None:
    """One status query; with a tally, record its latency or count it as an error or wrong answer."""
    message = {"type": "request_status", "id": counter, "site": site, "token": token,
               "request_id": request_id}
    sent = time.perf_counter()
    writer.write(framing.encode_frame(message))
    reply = await asyncio.wait_for(framing.read_frame(reader, 1 << 20), 10)
    elapsed = time.perf_counter() - sent
    if reply is None:
        raise ConnectionError("server closed the connection")
    if tally is None:
        if not reply.get("ok"):
            raise SystemExit(f"warm-up failed for {site}: {reply}")
        return
    if not reply.get("ok"):
        tally.errors += 1
    elif (reply["id"], reply["result"]["id"], reply["result"]["site"]) != (counter, request_id, site):
        tally.wrong += 1
    else:
        tally.latencies.append(elapsed)


async def load(
    port: int, plan: Plan, connections: int, seconds: float, server_pid: int, attackers: int
) -> tuple[Tally, AttackTally, float, str]:
    """Start the attackers (if any) and let them settle, open every site connection and warm it
    up, then run the timed phase; also the RSS after warm-up."""
    tally, attack = Tally(), AttackTally()
    start = asyncio.Event()
    warm_events = []
    tasks = []
    holder = {"stop_at": float("inf")}
    outsiders = [asyncio.create_task(_run_attacker(port, holder, attack)) for _ in range(attackers)]
    if attackers:
        await asyncio.sleep(2 * ATTACK_INTERVAL_S)  # they hold what they can before any site connects
    for index in range(connections):
        site_index = index % len(plan)
        site, token, ids = plan[site_index]
        request_id = ids[(index // len(plan)) % len(ids)]
        warm = asyncio.Event()
        warm_events.append(warm)
        tasks.append(asyncio.create_task(_run_client(port, site_address(site_index), site, token, request_id,
                                                     holder, warm, start, tally)))
    await asyncio.gather(*(event.wait() for event in warm_events))
    rss_warm = rss_mib(server_pid)
    began = time.perf_counter()
    holder["stop_at"] = began + seconds
    start.set()
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - began
    await asyncio.gather(*outsiders)
    return tally, attack, elapsed, rss_warm


def site_address(index: int) -> str:
    """Site ``index``'s own loopback address: 127.0.1.1, 127.0.1.2, ..."""
    return f"127.0.{1 + index // 250}.{1 + index % 250}"


async def _run_attacker(port: int, holder: dict[str, float], attack: AttackTally) -> None:
    """An outsider on ATTACKER_ADDRESS: hold a connection with a bad frame now and then; reconnect
    at once when the server cuts it off, a little later when it refuses."""
    while time.perf_counter() < holder["stop_at"]:
        outcome = await _attack_once(port, holder, attack)
        if outcome == "refused":
            attack.refused += 1
            await asyncio.sleep(ATTACK_INTERVAL_S)
        else:
            attack.cut_off += outcome == "cut off"


async def _attack_once(port: int, holder: dict[str, float], attack: AttackTally) -> str:
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(ATTACKER_ADDRESS, 0))
    except OSError:
        return "refused"
    held = False
    try:
        while time.perf_counter() < holder["stop_at"]:
            writer.write(framing.encode_frame({}))
            reply = await asyncio.wait_for(framing.read_frame(reader, 1 << 20), 30)
            message = "" if reply is None else str(reply.get("error", {}).get("message", ""))
            if reply is None or "closing" in message:  # hung up, or a farewell (deadline) frame
                return "cut off"
            if "waiting to authenticate" in message or "at its limit" in message:
                return "refused"
            if not held:
                held = True
                attack.accepted += 1
                attack.held_now += 1
                attack.held_max = max(attack.held_max, attack.held_now)
            try:  # idle until the next bad frame, but notice at once when the server hangs up
                await asyncio.wait_for(framing.read_frame(reader, 1 << 20), ATTACK_INTERVAL_S)
                return "cut off"  # the end of the stream, or a farewell frame
            except asyncio.TimeoutError:
                continue
        return "stopped"
    except (ConnectionError, asyncio.IncompleteReadError, asyncio.TimeoutError):
        return "cut off"
    finally:
        attack.held_now -= held
        writer.close()


async def _run_client(port: int, address: str, site: str, token: str, request_id: int, holder: dict[str, float],
                      warm: asyncio.Event, start: asyncio.Event, tally: Tally) -> None:
    """One connection: a warm-up query (fills the auth cache), then status queries until the stop time.

    A connection that breaks counts its unanswered query as lost and stops.
    """
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(address, 0))
    counter = 0
    try:
        try:
            await query(reader, writer, site, token, request_id, counter, None)
        finally:
            warm.set()
        await start.wait()
        while time.perf_counter() < holder["stop_at"]:
            counter += 1
            await query(reader, writer, site, token, request_id, counter, tally)
    except (ConnectionError, asyncio.IncompleteReadError, asyncio.TimeoutError):
        tally.lost += 1
    finally:
        writer.close()


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--sites", type=int, default=10, help="enrolled sites; connections share them")
    parser.add_argument("--commits-per-second", type=float, default=0.0,
                        help="unrelated store writes during the run (each invalidates the read cache)")
    parser.add_argument("--idle-attackers", type=int, default=0,
                        help=f"outsiders without a token on {ATTACKER_ADDRESS} trying to hold connections")
    args = parser.parse_args()

    requests_per_site = -(-args.connections // args.sites)
    with tempfile.TemporaryDirectory(prefix="socket_load_") as home:
        parent_end, child_end = mp.Pipe()
        server = mp.get_context("spawn").Process(
            target=serve, args=(home, args.sites, requests_per_site, args.commits_per_second,
                                args.connections + args.idle_attackers, child_end), daemon=True
        )
        server.start()
        port, plan = parent_end.recv()
        rss_before = rss_mib(server.pid)  # type: ignore[arg-type]
        tally, attack, elapsed, rss_warm = asyncio.run(
            load(port, plan, args.connections, args.seconds, server.pid, args.idle_attackers)  # type: ignore[arg-type]
        )
        rss_after = rss_mib(server.pid)  # type: ignore[arg-type]
        parent_end.send("stop")
        server.join(timeout=30)

    done = sorted(tally.latencies)
    rps = len(done) / elapsed
    print(f"connections {args.connections}  sites {args.sites}  duration {elapsed:.1f} s"
          f"  commits/s {args.commits_per_second:g}")
    print(f"requests {len(done)}  requests/s {rps:.0f}")
    print(f"latency ms  p50 {percentile(done, 0.50) * 1e3:.2f}  p99 {percentile(done, 0.99) * 1e3:.2f}"
          f"  max {done[-1] * 1e3 if done else float('nan'):.2f}  mean {statistics.fmean(done) * 1e3 if done else float('nan'):.2f}")
    print(f"errors {tally.errors}  wrong {tally.wrong}")
    print(f"lost {tally.lost}")
    if args.idle_attackers:
        print(f"attackers {args.idle_attackers} on {ATTACKER_ADDRESS}: held at most {attack.held_max} connections "
              f"at once; {attack.accepted} accepted, {attack.refused} refused, {attack.cut_off} cut off by the server")
    print(f"server rss before {rss_before}  after warm-up {rss_warm}  after {rss_after}")
    print(f"socket_load_rps {rps:.0f}")


if __name__ == "__main__":
    main()
