"""Light sites for ``bench.secagg_overhead``: numpy clients in threads of one process of their own.

Reads one JSON job on stdin (port, secure or plain, session id, and per site: name, session
secret, example count, identity key; the bench made them all), joins every site to the session, waits until the session ends and prints one JSON line:
the protobuf bytes each site received and sent (``flwr.common.serde`` sizes of every
instruction and reply: the gRPC payload without HTTP/2 framing). The sites live outside the
server's process so that the server's CPU time is the server's alone.

    echo '{"port": 8080, "secure": true, "sites": [...]}' | python -m bench.secagg_sites
"""

from __future__ import annotations

import json
import sys
import threading
from typing import Any

import grpc
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flwr.client import Client, start_client
from flwr.common import serde

from client.federation.secagg_state import SecAggPolicy
from client.federation.secure_aggregation import SecureAggregationClient
from client.federation.site_identity import SessionPeers
from tests import thread_safe_npy
from tests.flower_fakes import ScriptedClient


class CountingClient(Client):
    """Delegates to ``inner`` and adds up the serialised size of every message both ways."""

    def __init__(self, inner: Client) -> None:
        self.inner = inner
        self.received = 0
        self.sent = 0

    def get_properties(self, ins):  # type: ignore[no-untyped-def]
        res = self.inner.get_properties(ins)
        self._count(serde.get_properties_ins_to_proto(ins), serde.get_properties_res_to_proto(res))
        return res

    def get_parameters(self, ins):  # type: ignore[no-untyped-def]
        res = self.inner.get_parameters(ins)
        self._count(serde.get_parameters_ins_to_proto(ins), serde.get_parameters_res_to_proto(res))
        return res

    def fit(self, ins):  # type: ignore[no-untyped-def]
        res = self.inner.fit(ins)
        self._count(serde.fit_ins_to_proto(ins), serde.fit_res_to_proto(res))
        return res

    def evaluate(self, ins):  # type: ignore[no-untyped-def]
        res = self.inner.evaluate(ins)
        self._count(serde.evaluate_ins_to_proto(ins), serde.evaluate_res_to_proto(res))
        return res

    def _count(self, down: Any, up: Any) -> None:
        self.received += down.ByteSize()
        self.sent += up.ByteSize()


def site_client(spec: dict[str, Any], peers: SessionPeers | None) -> CountingClient:
    """A site whose 'training' adds a small per-site shift to the global weights, at once."""
    shift = float(spec["shift"])
    inner = ScriptedClient(spec["name"], spec["secret"], int(spec["examples"]),
                           lambda ws: [w + shift for w in ws])
    if peers is None:
        return CountingClient(inner.to_client())
    identity = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(spec["identity"]))
    secure = SecureAggregationClient(inner, site=spec["name"], identity=identity, peers=peers,
                                     policy=SecAggPolicy(required=True))
    return CountingClient(secure.to_client())


def main() -> int:
    thread_safe_npy.install()  # every site is a thread of this process
    job = json.load(sys.stdin)
    peers = None
    if job["secure"]:
        keys = {spec["name"]: Ed25519PrivateKey.from_private_bytes(bytes.fromhex(spec["identity"])).public_key()
                for spec in job["sites"]}
        peers = SessionPeers(int(job["session_id"]), keys)
    clients = {spec["name"]: site_client(spec, peers) for spec in job["sites"]}
    errors: dict[str, str] = {}

    def join(name: str, client: CountingClient) -> None:
        try:
            start_client(server_address=f"127.0.0.1:{job['port']}", client=client, insecure=True)
        except (grpc.RpcError, Exception) as exc:  # noqa: BLE001 - reported, the bench fails on it
            errors[name] = f"{exc.__class__.__name__}: {exc}"

    threads = [threading.Thread(target=join, args=item, daemon=True) for item in clients.items()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=float(job.get("timeout_s", 1800)))
    print(json.dumps({"bytes": {n: [c.received, c.sent] for n, c in clients.items()}, "errors": errors}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
