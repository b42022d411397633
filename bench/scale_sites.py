"""Light sites for ``bench.scale``: each a thread that speaks the real protocols, without TensorFlow.

Reads one JSON job on stdin (request port, rounds, DP terms, and per site: name, token,
declared example count, identity key), and for every site, in its own thread, does what
``fl-client`` does around training: registers its identity key and sends a request with its
declaration over the request socket (``SiteConnection``), polls until the admin approves it,
takes the session ticket (port, secret, its own plan), and joins the session's Flower server,
secure aggregation included when the ticket says so (peers checked against the ticket). Its
"training" returns the global weights shifted a little at once, with the example count the
server approved (the plan in the ticket). Meanwhile a probe site asks for its request's status
every ``probe_interval_s`` and times each answer: the request socket's latency under the load.

Prints one JSON line: per site the request id, when the ticket and each fit instruction
arrived (``time.time()``), bytes, retries and errors, and the probe's (time, latency) pairs.

    echo '{"port": 9090, "sites": [...], ...}' | python -m bench.scale_sites
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

sys.modules.setdefault("tensorflow", None)  # type: ignore[arg-type]  # light sites: Flower must not load it

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flwr.client import start_client

from bench.secagg_sites import CountingClient, site_client
from client.federation.site_identity import SessionPeers
from client.federation.socket_client import SiteConnection
from shared.errors import ConnectionProblem, ServerBusy
from shared.listening import wait_until_listening
from shared.secagg_identity import encode_public_key
from tests import thread_safe_npy

T = TypeVar("T")
#: Seconds a site waits after the socket answered "rate limited" or dropped it, before it tries again.
BUSY_BACKOFF_S = 0.5
PROBE_ADDRESS = "127.0.9.1"


class TimedClient(CountingClient):
    """Counts bytes (``CountingClient``) and notes when each fit instruction arrived."""

    def __init__(self, inner: CountingClient) -> None:
        super().__init__(inner.inner)
        self.fit_at: list[float] = []

    def fit(self, ins):  # type: ignore[no-untyped-def]
        self.fit_at.append(time.time())
        return super().fit(ins)


class Site:
    """One light site's run, and what it saw."""

    def __init__(self, spec: dict[str, Any], job: dict[str, Any]) -> None:
        """``spec``: name, token, declared examples, identity (raw hex), source ``address``, ``shift``."""
        self.spec, self.job = spec, job
        self.identity = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(spec["identity"]))
        self.report: dict[str, Any] = {"retries": 0}

    def run(self) -> None:
        try:
            self._run()
        except Exception as exc:  # noqa: BLE001 - reported; the bench counts it as lost
            self.report["error"] = f"{exc.__class__.__name__}: {exc}"

    def _run(self) -> None:
        job, spec = self.job, self.spec
        with SiteConnection("127.0.0.1", job["port"], spec["name"], spec["token"], timeout=60,
                            source_address=spec["address"]) as connection:
            self._retry(lambda: connection.register_identity_key(encode_public_key(self.identity)))
            declaration = {"examples": spec["examples"], "exact": True, "budget_epsilon": job["budget_epsilon"],
                           "budget_delta": job["dp"]["delta"]}
            request = self._retry(lambda: connection.submit_request(job["rounds"], 1, job["dp"], note="scale",
                                                                    declaration=declaration))
            self.report["request_id"] = request.id
            ticket = self._retry(lambda: connection.wait_for_approval(request.id, poll_interval=0.5,
                                                                      timeout=job["approval_timeout_s"]))
        self.report["ticket_at"] = time.time()
        peers = SessionPeers.from_ticket(ticket) if ticket.config.get("secure_aggregation") else None
        approved = int(ticket.config["site"]["examples"])
        client = TimedClient(site_client({**spec, "secret": ticket.secret, "examples": approved}, peers))
        wait_until_listening(ticket.host, ticket.port, timeout_s=60)  # as join_session: the process is starting
        start_client(server_address=f"{ticket.host}:{ticket.port}", client=client, insecure=True)
        self.report.update(fit_at=client.fit_at, bytes=[client.received, client.sent], session_id=ticket.session_id)

    def _retry(self, call: Callable[[], T]) -> T:
        """``call()``, again after a pause whenever the socket is busy or dropped the connection (counted)."""
        while True:
            try:
                return call()
            except (ServerBusy, ConnectionProblem):
                self.report["retries"] += 1
                time.sleep(BUSY_BACKOFF_S)


def probe(job: dict[str, Any], stop: threading.Event, samples: list[tuple[float, float]]) -> None:
    """Ask for the probe site's request status every ``probe_interval_s``; keep (when, seconds)."""
    spec = job["probe"]
    with SiteConnection("127.0.0.1", job["port"], spec["name"], spec["token"], timeout=60,
                        source_address=PROBE_ADDRESS) as connection:
        while not stop.wait(job["probe_interval_s"]):
            started = time.perf_counter()
            try:
                connection.request_status(spec["request_id"])
            except (ServerBusy, ConnectionProblem):
                continue
            samples.append((time.time(), time.perf_counter() - started))


def main() -> int:
    thread_safe_npy.install()  # every site is a thread of this process
    job = json.load(sys.stdin)
    sites = [Site({**spec, "shift": 0.001 * (i + 1)}, job) for i, spec in enumerate(job["sites"])]
    stop, samples = threading.Event(), []
    prober = threading.Thread(target=probe, args=(job, stop, samples), daemon=True)
    prober.start()
    threads = [threading.Thread(target=site.run, daemon=True) for site in sites]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=float(job["timeout_s"]))
    stop.set()
    prober.join(timeout=10)
    print(json.dumps({"sites": {s.spec["name"]: s.report for s in sites}, "probe": samples}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
