"""Numpy-only Flower clients for session tests that are about the server, not about training."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable

import grpc
import numpy as np
from flwr.client import NumPyClient, start_client

from shared.listening import wait_until_listening

Update = Callable[[list[np.ndarray]], list[np.ndarray]]


class ScriptedClient(NumPyClient):
    """Returns ``update(global_weights)`` and proves (or fakes) a site's session secret."""

    def __init__(self, site: str, secret: str, examples: int, update: Update) -> None:
        self.site, self.secret, self.examples, self.update = site, secret, examples, update
        self.configs: list[dict] = []
        self.connection_error: grpc.RpcError | None = None

    def fit(self, parameters, config):
        self.configs.append(dict(config))
        metrics = {"site": self.site, "session_secret": self.secret, "loss": 1.0 / (1 + len(self.configs)),
                   "accuracy": 0.5, "epsilon": 0.5 * len(self.configs), "delta": 1e-5, "noise_multiplier": 1.1}
        return self.update(parameters), self.examples, metrics

    def get_properties(self, config):
        return {"site": self.site, "session_secret": self.secret}

    def validate(self, parameters):
        return 0.7, self.examples, {"site": self.site, "session_secret": self.secret, "accuracy": 0.6}


def run_in_thread(port: int, client: ScriptedClient, root_certificates: bytes | None = None,
                  host: str = "127.0.0.1") -> threading.Thread:
    """Run the client against ``host:port`` (``host="[::1]"`` connects over IPv6 loopback)."""
    wait_until_listening("127.0.0.1", port, timeout_s=30)
    transport = {"root_certificates": root_certificates} if root_certificates else {"insecure": True}

    def serve() -> None:
        try:
            start_client(server_address=f"{host}:{port}", client=client.to_client(), **transport)
        except grpc.RpcError as exc:  # the session ended (or failed) while this client waited
            client.connection_error = exc

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def serve_session(store, session_id: int, port: int, **options) -> dict:
    """Run ``run_session`` in a thread; the dict gets "thread", then "version" or "error"."""
    from server.sessions.runtime import run_session
    from shared.errors import SessionFailedError

    outcome: dict = {}

    def target() -> None:
        try:
            outcome["version"] = run_session(store, session_id, port=port, **options)
        except SessionFailedError as exc:
            outcome["error"] = exc

    outcome["thread"] = threading.Thread(target=target, daemon=True)
    outcome["thread"].start()
    return outcome
