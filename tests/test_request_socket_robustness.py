"""The request socket under bad frames, dropped connections and rate limits (real sockets, port 0)."""

from __future__ import annotations

import socket
import struct
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from client.federation.socket_client import SiteConnection
from server.socket.connection_slots import ConnectionLimits
from server.socket.handlers import RequestHandlers
from server.socket.rate_limits import RequestRateLimits
from shared import framing
from shared.errors import (
    ConnectionProblem,
    ProtocolError,
    ServerBusy,
    ServerFault,
)
from tests.conftest_socket import CAP, DP, Env, frame, recv, send, status_ok

# ----------------------------------------------------------------- bad frames


def test_malformed_and_schema_invalid_frames_keep_an_authenticated_connection(env: Env) -> None:
    sock = env.raw()
    status_ok(env, sock)  # authenticated: bad frames are answered, never a reason to close
    send(sock, struct.pack(">I", 7) + b"{oops!}")
    reply = recv(sock)
    assert reply is not None and reply["id"] is None and reply["error"]["code"] == "protocol"
    assert "not valid JSON" in reply["error"]["message"]
    send(sock, frame(env, type="submit_request", id="s1", rounds=0, local_epochs=1, dp=DP))
    reply = recv(sock)
    assert reply is not None and reply["id"] == "s1" and reply["error"]["code"] == "protocol"
    assert "rounds" in reply["error"]["message"]
    send(sock, struct.pack(">I", 2) + b"\xff\xff")
    assert recv(sock)["error"]["code"] == "protocol"  # type: ignore[index]
    send(sock, frame(env, type="list_requests", token="wrong"))
    assert recv(sock)["error"]["code"] == "auth"  # type: ignore[index]
    status_ok(env, sock)


def test_client_checks_the_schema_before_sending(env: Env) -> None:
    with env.connect() as alpha, pytest.raises(ProtocolError, match="exactly one"):
        alpha.submit_request(rounds=1, local_epochs=1, dp={"delta": 1e-5, "l2_norm_clip": 1.0})


def test_oversized_frame_gets_an_error_then_a_clean_close(env: Env) -> None:
    other = env.raw()
    sock = env.raw()
    send(sock, struct.pack(">I", CAP + 1) + b"x" * 100)
    reply = recv(sock)
    assert reply is not None and reply["error"]["code"] == "too_large"
    assert f"cap is {CAP}" in reply["error"]["message"]
    assert sock.recv(1) == b""  # FIN, not a reset
    status_ok(env, other)
    with env.connect() as alpha:
        assert alpha.list_requests() == []


def test_truncated_frame_gets_an_error_then_a_clean_close(env: Env) -> None:
    sock = env.raw()
    send(sock, struct.pack(">I", 100) + b'{"id": 1')
    sock.shutdown(socket.SHUT_WR)
    reply = recv(sock)
    assert reply is not None and reply["error"]["code"] == "protocol"
    assert "8 of 100" in reply["error"]["message"]
    assert sock.recv(1) == b""


def test_slow_frame_times_out_and_the_client_reconnects(tmp_path: Path) -> None:
    env = Env(tmp_path, limits=ConnectionLimits(frame_timeout=0.3))
    try:
        sock = env.raw()
        send(sock, struct.pack(">I", 50) + b"{")
        reply = recv(sock)
        assert reply is not None and "no complete frame within 0.3 s" in reply["error"]["message"]
        assert sock.recv(1) == b""
        with env.connect() as alpha:
            alpha.list_requests()
            threading.Event().wait(0.6)  # the server closes the idle connection meanwhile
            assert alpha.list_requests() == []
    finally:
        env.close()


def test_connection_cap(tmp_path: Path) -> None:
    env = Env(tmp_path, limits=ConnectionLimits(max_connections=2))
    try:
        held = [env.raw(), env.raw()]
        for sock in held:
            status_ok(env, sock)
        with env.connect() as alpha, pytest.raises(ServerBusy, match="limit of 2 connections"):
            alpha.list_requests()
        held[0].close()
        threading.Event().wait(0.2)
        with env.connect() as alpha:
            assert alpha.list_requests() == []
    finally:
        env.close()


def test_unexpected_exceptions_become_internal_errors(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(self: RequestHandlers, message: object) -> None:
        raise RuntimeError("bug")

    with env.connect() as alpha:
        monkeypatch.setattr(RequestHandlers, "_list_requests", boom)
        with pytest.raises(ServerFault, match="failed to answer"):
            alpha.list_requests()
        monkeypatch.undo()
        assert alpha.list_requests() == []


def test_unreachable_server(env: Env) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        free_port = probe.getsockname()[1]
    conn = SiteConnection("127.0.0.1", free_port, "alpha", "t", timeout=2)
    with pytest.raises(
        ConnectionProblem, match=f"server not reachable at 127.0.0.1:{free_port} \\(connection refused\\)"
    ) as caught:
        conn.list_requests()
    assert "server is running" in caught.value.hint


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    junk=st.one_of(
        st.binary(max_size=300),
        st.builds(lambda n, body: struct.pack(">I", n) + body, st.integers(0, 2**32 - 1), st.binary(max_size=64)),
        st.builds(
            lambda obj: framing.encode_frame(obj),
            st.dictionaries(
                st.sampled_from(["id", "type", "site", "token", "request_id", "rounds", "dp", "x"]),
                st.one_of(st.none(), st.integers(), st.text(max_size=10), st.sampled_from(["list_requests", "alpha"])),
                max_size=6,
            ),
        ),
    )
)
def test_fuzzed_frames_never_break_the_server(env: Env, junk: bytes) -> None:
    sock = env.raw()
    sock.sendall(junk)
    sock.shutdown(socket.SHUT_WR)
    while (reply := recv(sock)) is not None:
        assert reply["ok"] is False or reply["result"] is not None
    sock.close()
    status_ok(env, env.raw())


class FlakyServer:
    """Reads each connection's first frame and hangs up without answering, ``drops`` times; then answers."""

    def __init__(self, drops: int) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.drops = drops
        self.frames: list[dict[str, Any]] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with conn:
                while (message := recv(conn)) is not None:
                    self.frames.append(message)
                    if self.drops > 0:
                        self.drops -= 1
                        break
                    send(conn, framing.ok_frame(message["id"], b'{"requests":[]}'))

    def close(self) -> None:
        self.listener.close()


def test_a_dropped_connection_is_reopened_once() -> None:
    server = FlakyServer(drops=1)
    try:
        with SiteConnection("127.0.0.1", server.port, "alpha", "t", timeout=5) as alpha:
            assert alpha.list_requests() == []
        assert [f["type"] for f in server.frames] == ["list_requests", "list_requests"]
    finally:
        server.close()


def test_a_dropped_connection_fails_after_the_second_try() -> None:
    server = FlakyServer(drops=2)
    try:
        with SiteConnection("127.0.0.1", server.port, "alpha", "t", timeout=5) as alpha:
            with pytest.raises(ConnectionProblem, match="dropped"):
                alpha.list_requests()
    finally:
        server.close()


def test_a_submit_that_may_have_arrived_is_never_sent_twice() -> None:
    server = FlakyServer(drops=1)
    try:
        with SiteConnection("127.0.0.1", server.port, "alpha", "t", timeout=5) as alpha:
            with pytest.raises(ConnectionProblem, match="dropped after sending submit_request") as caught:
                alpha.submit_request(rounds=1, local_epochs=1, dp=DP)
        assert "list your requests" in caught.value.hint
        assert len(server.frames) == 1
    finally:
        server.close()


# ----------------------------------------------------------------- rate limits


def test_a_connection_over_its_rate_is_told_and_stays_usable(tmp_path: Path) -> None:
    env = Env(tmp_path, rate_limits=RequestRateLimits(per_connection="5/second", per_site="1000/second"))
    try:
        sock = env.raw()
        codes = []
        for index in range(8):
            send(sock, frame(env, type="list_requests", id=index))
            reply = recv(sock)
            assert reply is not None and reply["id"] == index
            codes.append("ok" if reply["ok"] else reply["error"]["code"])
        assert codes[:5] == ["ok"] * 5 and set(codes[5:]) == {"rate_limited"}
        time.sleep(1.1)
        status_ok(env, sock)
        with env.connect("beta") as other:  # other connections keep their own budget
            assert other.list_requests() == []
    finally:
        env.close()


def test_a_site_over_its_rate_is_limited_across_connections(tmp_path: Path) -> None:
    env = Env(tmp_path, rate_limits=RequestRateLimits(per_connection="1000/second", per_site="4/second"))
    try:
        first, second = env.connect("alpha"), env.connect("alpha")
        for _ in range(2):
            first.list_requests()
            second.list_requests()
        with pytest.raises(ServerBusy, match="site 'alpha'"):
            first.list_requests()
        with env.connect("beta") as beta:
            assert beta.list_requests() == []
        first.close()
        second.close()
    finally:
        env.close()
