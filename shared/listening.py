"""Wait for a TCP port to accept connections (a session's Flower server after approval)."""

from __future__ import annotations

import socket
import time

from shared.errors import ConnectionProblem


def wait_until_listening(host: str, port: int, *, timeout_s: float, interval_s: float = 0.1) -> float:
    """Return the seconds waited until ``host:port`` accepts a connection.

    Flower's bidirectional gRPC client does not retry a refused first connection, so a client
    that starts before its session's server listens must wait here first.
    """
    started = time.monotonic()
    while True:
        try:
            with socket.create_connection((host, port), timeout=interval_s * 10):
                return time.monotonic() - started
        except OSError as exc:
            if time.monotonic() - started > timeout_s:
                raise ConnectionProblem(
                    f"session server at {host}:{port} did not start listening within {timeout_s:.0f} s ({exc})"
                ) from None
            time.sleep(interval_s)
