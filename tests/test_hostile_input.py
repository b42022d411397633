"""Hostile input on the request socket: the server stays up, answers or closes, and the DB is unchanged."""

from __future__ import annotations

import json
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from client.federation.socket_client import SiteConnection
from server.socket.connection_slots import ConnectionLimits
from shared import framing
from shared import protocol as p
from shared.errors import ProtocolError
from tests.test_request_socket import Env, recv, send, status_ok

VALID = {
    "submit_request": {"rounds": 3, "local_epochs": 1, "note": "",
                       "dp": {"target_epsilon": 3.0, "delta": 1e-5, "l2_norm_clip": 1.0}},
    "request_status": {"request_id": 1},
    "cancel_request": {"request_id": 1},
    "list_notifications": {"unread_only": False},
    "acknowledge": {"notification_ids": [1]},
    "download_version": {"version": 0, "chunk": 0},
    "acknowledge_update": {"version": 0},
    "session_ticket": {"request_id": 1},
    "register_identity_key": {"public_key": "1PHj0IbmF1HXCbfQZi3RCBaDOW7gfDjZl6dbIBbCa40="},
}
WRONG_VALUES = st.one_of(st.none(), st.booleans(), st.floats(allow_nan=True), st.text(max_size=20),
                         st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=3), st.integers(),
                                                                               max_size=2),
                         st.integers(min_value=-(2**70), max_value=2**70))


def snapshot(env: Env) -> tuple:
    """Everything a hostile frame must not change."""
    store = env.store
    return (
        [(r.id, r.state, r.site) for r in store.list_requests()],
        [(n.id, n.read_at) for site in env.tokens for n in store.notifications(site)],
        [v.number for v in store.list_versions()],
        store.verify_audit().rows_checked,
    )


@pytest.fixture
def hostile_env(tmp_path: Path) -> Iterator[Env]:
    env = Env(tmp_path, limits=ConnectionLimits(frame_timeout=1.0))
    with env.connect() as connection:
        connection.submit_request(rounds=1, local_epochs=1,
                                  dp={"noise_multiplier": 1.0, "delta": 1e-5, "l2_norm_clip": 1.0})
    yield env
    env.close()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(message_type=st.sampled_from(sorted(VALID)), field=st.data(), value=WRONG_VALUES)
def test_wrong_types_in_every_message_are_refused_without_effect(hostile_env: Env, message_type: str,
                                                                 field: st.DataObject, value: object) -> None:
    before = snapshot(hostile_env)
    fields = dict(VALID[message_type])
    name = field.draw(st.sampled_from(sorted(fields)))
    fields[name] = value
    token = field.draw(st.sampled_from([hostile_env.tokens["alpha"], "wrong-token"]))
    message = {"id": 9, "site": "alpha", "token": token, "type": message_type, **fields}
    sock = hostile_env.raw()
    body = json.dumps(message).encode()  # lets NaN/Infinity through: the server must not
    send(sock, struct.pack(">I", len(body)) + body)
    reply = recv(sock)
    assert reply is not None
    assert reply["id"] == 9 or reply["error"]["message"].startswith("frame is not valid JSON")
    status_ok(hostile_env, sock)
    sock.close()
    if not _schema_valid(body):
        assert reply["ok"] is False and reply["error"]["code"] == "protocol", reply
        assert snapshot(hostile_env) == before
    elif token != hostile_env.tokens["alpha"]:
        assert reply["error"]["code"] == "auth"
        assert snapshot(hostile_env) == before


def _schema_valid(body: bytes) -> bool:
    try:
        p.parse_message(framing.decode_body(body))
    except ProtocolError:
        return False
    return True


def test_deeply_nested_json_is_a_protocol_error(hostile_env: Env) -> None:
    before = snapshot(hostile_env)
    sock = hostile_env.raw()
    depth = 50_000
    body = ('{"id": 1, "x": ' + "[" * depth + "]" * depth + "}").encode()
    cap = hostile_env.settings.max_frame_bytes
    body = body[: cap - 1] if len(body) >= cap else body
    sock.sendall(struct.pack(">I", len(body)) + body)
    reply = recv(sock)
    assert reply is not None and reply["ok"] is False and reply["error"]["code"] == "protocol"
    status_ok(hostile_env, sock)
    assert snapshot(hostile_env) == before


@pytest.mark.parametrize("length", [2**32 - 1, 2**31, 10**9])
def test_huge_length_prefix_is_refused_before_reading(hostile_env: Env, length: int) -> None:
    sock = hostile_env.raw()
    sock.sendall(struct.pack(">I", length))
    reply = recv(sock)
    assert reply is not None and reply["error"]["code"] == "too_large"
    assert recv(sock) is None  # then a clean close
    status_ok(hostile_env, hostile_env.raw())


def test_slow_loris_connections_are_cut_while_others_are_served(hostile_env: Env) -> None:
    stalled = []
    for _ in range(10):
        sock = hostile_env.raw("127.0.0.2")
        sock.sendall(b"\x00\x00")  # half a header, then silence
        stalled.append(sock)
    started = time.monotonic()
    with hostile_env.connect("beta") as honest:
        for _ in range(20):
            honest.list_requests()
    assert time.monotonic() - started < 5, "honest clients must not wait behind stalled ones"
    time.sleep(2.0)  # past the 1 s frame timeout
    for sock in stalled:
        sock.settimeout(5)
        reply = recv(sock)
        assert reply is not None and reply["error"]["code"] == "protocol"
        assert recv(sock) is None
        sock.close()


def test_garbage_from_many_connections_leaves_the_db_unchanged(hostile_env: Env) -> None:
    before = snapshot(hostile_env)
    junk = [b"GET / HTTP/1.1\r\n\r\n", b"\x00\x00\x00\x05hello", framing.encode_frame({"type": "submit_request"}),
            b"\x00\x00\x00\x02[]", b"\xff" * 64, json.dumps({"id": 1}).encode()]
    for payload in junk * 5:
        sock = hostile_env.raw()
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        while recv(sock) is not None:
            pass
        sock.close()
    with SiteConnection("127.0.0.1", hostile_env.port, "alpha", "forged", timeout=5) as forged:
        for _ in range(5):
            with pytest.raises(Exception, match="wrong token"):
                forged.list_requests()
    assert snapshot(hostile_env) == before
    status_ok(hostile_env, hostile_env.raw())


@pytest.mark.slow
def test_atheris_finds_no_unexpected_exception_in_frame_parsing(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for index, (message_type, fields) in enumerate(VALID.items()):
        message = {"id": index, "site": "alpha", "token": "t" * 43, "type": message_type, **fields}
        (corpus / f"{message_type}.json").write_text(json.dumps(message))
    result = subprocess.run([sys.executable, "-m", "tests.fuzz_protocol", "-runs=5000", str(corpus)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Done 5000 runs" in result.stderr
