"""The request socket end to end: real sockets on loopback, a real SQLite store, port 0."""

from __future__ import annotations

import base64
import socket
import time
import struct
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from client.socket_client import SiteConnection
from server.request_handlers import RequestHandlers
from server.rate_limits import RequestRateLimits
from server.request_socket import RequestServerThread
from server.store import Store
from shared import protocol as p
from shared.errors import (
    AuthError,
    ConnectionProblem,
    IllegalTransitionError,
    IntegrityError,
    NotFoundError,
    ProtocolError,
    RequestNotApproved,
    ServerBusy,
    ServerFault,
)
from shared.settings import Settings, load_settings

DP = {"target_epsilon": 3.0, "delta": 1e-5, "l2_norm_clip": 1.0}
CAP = 4096  # small frame cap so oversized frames and multi-chunk downloads are cheap


class Env:
    """A store with two enrolled sites and a running request socket."""

    def __init__(self, tmp: Path, **server_options: Any) -> None:
        self.settings: Settings = load_settings(
            home=tmp, request_port=0, max_frame_bytes=CAP, download_chunk_bytes=1024
        )
        self.store = Store.open(self.settings)
        self.tokens = {site: self.store.enrol_site(site) for site in ("alpha", "beta")}
        self.thread = RequestServerThread(self.store, self.settings, **server_options).start()
        self.port = self.thread.port

    def connect(self, site: str = "alpha", token: str | None = None, **kw: Any) -> SiteConnection:
        return SiteConnection(
            "127.0.0.1", self.port, site, token or self.tokens[site], max_frame_bytes=CAP, timeout=10, **kw
        )

    def raw(self) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        return sock

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
    sock.sendall(obj if isinstance(obj, bytes) else p.encode_frame(obj))


def recv(sock: socket.socket) -> dict[str, Any] | None:
    """One reply frame, or None when the server closed the connection."""
    header = _recv_exact(sock, 4)
    if header is None:
        return None
    body = _recv_exact(sock, struct.unpack(">I", header)[0])
    assert body is not None
    return p.decode_body(body)


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


# ----------------------------------------------------------------- success paths


def test_submit_status_list_and_cancel(env: Env) -> None:
    with env.connect() as alpha:
        req = alpha.submit_request(rounds=3, local_epochs=2, dp=DP, note="first")
        assert (req.label, req.state, req.site, req.rounds, req.dp) == ("REQ-1", "PENDING", "alpha", 3, DP)
        assert alpha.request_status("REQ-1") == req
        assert [r.label for r in alpha.list_requests()] == ["REQ-1"]
        cancelled = alpha.cancel_request(req.id)
        assert cancelled.state == "CANCELLED"
        with pytest.raises(IllegalTransitionError, match="cannot cancel REQ-1: it is CANCELLED"):
            alpha.cancel_request("REQ-1")


def test_cancel_only_pending(env: Env) -> None:
    with env.connect() as alpha:
        req = alpha.submit_request(rounds=1, local_epochs=1, dp=DP)
        env.store.reject_request(req.id, reason="too many rounds")
        with pytest.raises(IllegalTransitionError, match="it is REJECTED"):
            alpha.cancel_request(req.label)


def test_notifications_and_acknowledge(env: Env) -> None:
    env.store.notify("alpha", kind="info", message="hello", payload={"n": 1})
    with env.connect() as alpha:
        notes = alpha.notifications()
        assert [(n.kind, n.message, n.payload, n.read_at) for n in notes] == [("info", "hello", {"n": 1}, None)]
        assert alpha.acknowledge([notes[0].id]) == 1
        assert alpha.notifications(unread_only=True) == []
    with env.connect("beta") as beta:
        assert beta.notifications() == []
        assert beta.acknowledge([notes[0].id]) == 0  # another site's notification is untouched


def test_session_ticket_and_wait_for_approval(env: Env) -> None:
    env.store.ensure_initial_version([np.zeros(3, np.float32)], metadata={})
    with env.connect() as alpha:
        req = alpha.submit_request(rounds=2, local_epochs=1, dp=DP)
        with pytest.raises(IllegalTransitionError, match="REQ-1 is PENDING"):
            alpha.session_ticket(req.label)
        session = env.store.create_session([req.id], config={"rounds": 2, "proximal_mu": 0.1})
        starting = alpha.session_ticket(req.label)
        assert (starting.session_id, starting.session_state, starting.port) == (session.id, "STARTING", None)
        env.store.mark_session_running(session.id, port=8123, pid=1)
        ticket = alpha.wait_for_approval(req.label, poll_interval=0.05, timeout=5)
        assert (ticket.port, ticket.host, ticket.config["proximal_mu"]) == (8123, "127.0.0.1", 0.1)
        assert ticket.secret == env.store.session_secret(session.id, "alpha")


def test_wait_for_approval_raises_with_the_rejection_reason(env: Env) -> None:
    with env.connect() as alpha:
        req = alpha.submit_request(rounds=2, local_epochs=1, dp=DP)
        timer = threading.Timer(0.2, env.store.reject_request, (req.id,), {"reason": "budget too small"})
        timer.start()
        with pytest.raises(RequestNotApproved, match="REQ-1 was rejected by admin: budget too small"):
            alpha.wait_for_approval(req.label, poll_interval=0.05, timeout=5)
        timer.join()
        with pytest.raises(RequestNotApproved, match="still"):
            alpha.wait_for_approval(alpha.submit_request(1, 1, DP).label, poll_interval=0.05, timeout=0.1)


def release_v0(env: Env, site: str = "alpha") -> tuple[bytes, str]:
    weights = [np.arange(2000, dtype=np.float32), np.ones((7, 5), np.float64)]
    info = env.store.ensure_initial_version(weights, metadata={})
    env.store.export_version(0, [site])
    return info.path.read_bytes(), info.sha256


def test_download_reassembles_chunks_with_matching_sha256(env: Env, tmp_path: Path) -> None:
    data, sha = release_v0(env)
    with env.connect() as alpha:
        [version] = alpha.list_versions()
        assert (version.number, version.sha256, version.size_bytes) == (0, sha, len(data))
        assert version.size_bytes > 5 * 1024  # several chunks under the small cap
        dest = tmp_path / "dl" / "alpha_v0.npz"
        path, digest = alpha.download_version(0, dest)
        assert (path, digest, path.read_bytes()) == (dest, sha, data)
        assert list(dest.parent.iterdir()) == [dest]
        assert alpha.accept_update(0).recorded is True


def test_versions_not_released_are_invisible(env: Env, tmp_path: Path) -> None:
    release_v0(env)
    with env.connect("beta") as beta:
        assert beta.list_versions() == []
        with pytest.raises(NotFoundError, match="no version v0 available to site 'beta'"):
            beta.download_version(0, tmp_path / "x.npz")
        with pytest.raises(NotFoundError, match="no version v9 available to site 'beta'"):
            beta.accept_update(9)
    assert not (tmp_path / "x.npz").exists()
    assert list(tmp_path.glob(".x.npz*")) == []


def test_corrupt_chunk_is_detected(env: Env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    release_v0(env)
    with env.connect() as alpha:
        real_call = alpha._call

        def tampering(message_type: str, **fields: Any) -> Any:
            result = real_call(message_type, **fields)
            if message_type == "download_version" and fields["chunk"] == 2:
                data = bytearray(base64.b64decode(result.data))  # type: ignore[attr-defined]
                data[0] ^= 0xFF
                result = result.model_copy(update={"data": base64.b64encode(bytes(data)).decode()})  # type: ignore[attr-defined]
            return result

        monkeypatch.setattr(alpha, "_call", tampering)
        with pytest.raises(IntegrityError, match="chunk 2 of v0 arrived corrupt"):
            alpha.download_version(0, tmp_path / "dl" / "v0.npz")
    assert list((tmp_path / "dl").iterdir()) == []  # no partial file left behind


def test_corrupt_file_on_the_server_is_detected(env: Env, tmp_path: Path) -> None:
    data, _ = release_v0(env)
    path = env.store.version_path(0)
    path.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    with env.connect() as alpha, pytest.raises(IntegrityError, match="does not match the server's record"):
        alpha.download_version(0, tmp_path / "dl" / "v0.npz")
    assert list((tmp_path / "dl").iterdir()) == []


# ----------------------------------------------------------------- authentication and isolation


def test_unknown_site_and_wrong_token(env: Env) -> None:
    with env.connect("gamma", token="whatever") as gamma, pytest.raises(AuthError, match="unknown site 'gamma'"):
        gamma.list_requests()
    with env.connect("alpha", token="wrong") as alpha:
        with pytest.raises(AuthError, match="wrong token for site 'alpha'") as caught:
            alpha.list_requests()
        assert caught.value.hint
    sock = env.raw()
    send(sock, {**frame(env), "type": "list_requests", "token": "wrong", "id": 9})
    reply = recv(sock)
    assert reply is not None and reply["id"] == 9 and reply["error"]["code"] == "auth"
    status_ok(env, sock)  # the connection stays usable


def test_disabled_site_is_refused_after_forget(env: Env) -> None:
    with env.connect() as alpha:
        alpha.list_requests()
        env.store.disable_site("alpha")
        env.thread.server.forget_site("alpha")
        with pytest.raises(AuthError, match="disabled"):
            alpha.list_requests()


def test_another_sites_request_is_indistinguishable_from_a_missing_one(env: Env) -> None:
    with env.connect() as alpha, env.connect("beta") as beta:
        req = alpha.submit_request(rounds=1, local_epochs=1, dp=DP)
        assert beta.list_requests() == []
        for call in (beta.request_status, beta.cancel_request, beta.session_ticket):
            with pytest.raises(NotFoundError) as theirs:
                call(req.label)
            with pytest.raises(NotFoundError) as missing:
                call("REQ-999")
            assert str(theirs.value) == "no request REQ-1 for site 'beta'"
            assert str(missing.value) == "no request REQ-999 for site 'beta'"
            assert theirs.value.hint == missing.value.hint
        assert alpha.request_status(req.label).state == "PENDING"


# ----------------------------------------------------------------- bad frames


def test_malformed_and_schema_invalid_frames_keep_the_connection(env: Env) -> None:
    sock = env.raw()
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
    env = Env(tmp_path, frame_timeout=0.3)
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
    env = Env(tmp_path, max_connections=2)
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
            lambda obj: p.encode_frame(obj),
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
                    send(conn, p.ok_frame(message["id"], b'{"requests":[]}'))

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
