"""The request-socket test bench: a real store with two sites and a running request socket,
and raw-frame helpers for tests that speak the wire protocol by hand."""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from client.federation.socket_client import SiteConnection
from server.socket.request_socket import RequestServerThread
from server.store import Store
from shared import framing
from shared.settings import Settings, load_settings

DP = {"target_epsilon": 3.0, "delta": 1e-5, "l2_norm_clip": 1.0}
CAP = 4096  # small frame cap so oversized frames and multi-chunk downloads are cheap


class Env:
    """A store with two enrolled sites and a running request socket."""

    def __init__(self, tmp: Path, settings_overrides: dict[str, Any] | None = None, **server_options: Any) -> None:
        self.settings: Settings = load_settings(
            home=tmp, request_port=0, max_frame_bytes=CAP, download_chunk_bytes=1024, **(settings_overrides or {})
        )
        self.store = Store.open(self.settings)
        self.tokens = {site: self.store.enrol_site(site) for site in ("alpha", "beta")}
        self.thread = RequestServerThread(self.store, self.settings, **server_options).start()
        self.port = self.thread.port

    def connect(self, site: str = "alpha", token: str | None = None, **kw: Any) -> SiteConnection:
        return SiteConnection(
            "127.0.0.1", self.port, site, token or self.tokens[site], max_frame_bytes=CAP, timeout=10, **kw
        )

    def raw(self, source: str = "127.0.0.1") -> socket.socket:
        """A plain TCP connection from ``source`` (another loopback address plays an outsider)."""
        return socket.create_connection(("127.0.0.1", self.port), timeout=10, source_address=(source, 0))

    def close(self) -> None:
        self.thread.stop()
        self.store.close()


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    e = Env(tmp_path)
    yield e
    e.close()


def frame(env: Env, site: str = "alpha", **fields: Any) -> dict[str, Any]:
    return {"id": 1, "site": site, "token": env.tokens[site], **fields}


def send(sock: socket.socket, obj: dict[str, Any] | bytes) -> None:
    sock.sendall(obj if isinstance(obj, bytes) else framing.encode_frame(obj))


def recv(sock: socket.socket) -> dict[str, Any] | None:
    """One reply frame, or None when the server closed the connection."""
    header = _recv_exact(sock, 4)
    if header is None:
        return None
    body = _recv_exact(sock, struct.unpack(">I", header)[0])
    assert body is not None
    return framing.decode_body(body)


def _recv_exact(sock: socket.socket, size: int) -> bytes | None:
    data = b""
    while len(data) < size:
        more = sock.recv(size - len(data))
        if not more:
            return None
        data += more
    return data


def status_ok(env: Env, sock: socket.socket) -> None:
    """The connection (or server) still answers a valid message."""
    send(sock, frame(env, type="list_requests", id="after"))
    reply = recv(sock)
    assert reply is not None and reply["ok"] is True and reply["id"] == "after"
