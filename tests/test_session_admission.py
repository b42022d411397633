"""Outsiders on a session's Flower port (issue 14, item 2), with real gRPC on loopback.

The session server listens on ``[::]`` (both loopbacks): the outsiders connect over 127.0.0.1,
the approved site over ``[::1]``, so they count as two addresses, as a site and an outsider on
two hosts would.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
from flwr.proto.transport_pb2 import ClientMessage
from flwr.proto.transport_pb2_grpc import FlowerServiceStub
from flwr.server.client_manager import SimpleClientManager

from server.sessions.admission import MAX_UNPROVEN_PER_ADDRESS
from server.sessions.grpc_listener import (
    MESSAGE_SLACK_BYTES,
    message_cap,
    start_session_server,
)
from server.store import Store
from server.store.lifecycle import SessionState
from shared.listening import wait_until_listening
from tests.flower_fakes import ScriptedClient, free_port, run_in_thread, serve_session
from tests.privacy_fixtures import charged_session

pytestmark = pytest.mark.slow

V0 = [np.zeros((6, 4), np.float32), np.zeros(4, np.float32)]


class SilentClient:
    """Opens Flower's Join stream and never answers: the probe's "silent connection"."""

    def __init__(self, port: int) -> None:
        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        self.release = threading.Event()
        self.call = FlowerServiceStub(self.channel).Join(self._never())
        self.ended = threading.Event()
        threading.Thread(target=self._drain, daemon=True).start()

    def _never(self) -> Iterator[ClientMessage]:
        self.release.wait()
        return
        yield  # a generator that yields nothing until released

    def _drain(self) -> None:
        try:
            for _ in self.call:
                pass
        except grpc.RpcError:
            pass
        self.ended.set()

    def close(self) -> None:
        self.release.set()
        self.channel.close()


def _session(store: Store, sites: list[str], **config) -> tuple[int, int]:
    store.ensure_initial_version(V0, metadata={"model": {"kind": "test"}})
    full = {"rounds": 1, "proximal_mu": 0.0, "min_clients": len(sites), "join_timeout_s": 20,
            "round_timeout_s": 30, "max_update_norm": 100.0, "learning_rate": 0.1, **config}
    created = charged_session(store, dict.fromkeys(sites, 10), rounds=1, config=full)
    port = free_port()
    store.mark_session_running(created.id, port=port, pid=1)
    return created.id, port


def test_silent_connections_cannot_push_a_site_past_the_join_deadline(store: Store, sites: dict[str, str]) -> None:
    """The probe: six silent connections, checked one at a time for 30 s each, made the session fail
    with ``missing: alpha``. Now they are checked side by side, and capped per address."""
    session_id, port = _session(store, ["alpha"], join_timeout_s=8)
    outcome = serve_session(store, session_id, port, host="[::]")
    wait_until_listening("127.0.0.1", port, timeout_s=30)
    silent = [SilentClient(port) for _ in range(6)]
    try:
        time.sleep(1.0)  # the outsiders are in before the site
        refused = [s for s in silent if s.ended.wait(timeout=0.1)]
        assert len(refused) == 6 - MAX_UNPROVEN_PER_ADDRESS  # over the per-address cap: turned away at once
        started = time.monotonic()
        run_in_thread(port, ScriptedClient("alpha", store.session_secret(session_id, "alpha"), 10,
                                           lambda ws: [w + 1 for w in ws]), host="[::1]")
        outcome["thread"].join(timeout=60)
        assert outcome.get("version") == 1, outcome
        assert time.monotonic() - started < 8
        assert store.get_session(session_id).state == SessionState.COMPLETED
    finally:
        for client in silent:
            client.close()


def test_sites_over_the_per_address_cap_are_told_to_come_back_and_all_join(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    """The scale bench: five sites on one host got their tickets in the same instant; the fifth,
    over the cap of four unproven connections from one address, got an empty stream, its Flower
    client ended with an error, and the session failed at its join deadline. Now a connection
    turned away for capacity gets a ``ReconnectIns`` and Flower's client comes back by itself."""
    names = [f"site{i}" for i in range(MAX_UNPROVEN_PER_ADDRESS + 2)]
    for name in names:
        store.enrol_site(name)
    session_id, port = _session(store, names, join_timeout_s=30)
    verify = store.verify_session_secret

    def slow_verify(*args: str | int) -> bool:  # proofs overlap for sure: the cap is reached
        time.sleep(0.5)
        return verify(*args)  # type: ignore[arg-type]

    store.verify_session_secret = slow_verify  # type: ignore[method-assign]
    outcome = serve_session(store, session_id, port)
    with caplog.at_level(logging.WARNING, logger="server.sessions.admission"):
        for name in names:
            run_in_thread(port, ScriptedClient(name, store.session_secret(session_id, name), 10,
                                               lambda ws: [w + 1 for w in ws]))
        outcome["thread"].join(timeout=90)
    assert outcome.get("version") == 1, outcome
    assert sorted(store.get_version(1).participants) == sorted(names)
    assert any(r.getMessage().startswith("turned away a connection from '127.0.0.1'") for r in caplog.records)


def test_the_name_an_unproven_client_claims_is_cut_and_cleaned_before_it_is_logged(
    store: Store, sites: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    session_id, port = _session(store, ["alpha"], join_timeout_s=3)
    claimed = "\x1b[2K\x1b[1A" + "mallory" * 100 + "[link=https://evil.example]x[/link]"
    outcome = serve_session(store, session_id, port)
    with caplog.at_level(logging.WARNING, logger="server.sessions.admission"):
        run_in_thread(port, ScriptedClient(claimed, "wrong", 10, lambda ws: ws))
        outcome["thread"].join(timeout=60)
    refusals = [r.getMessage() for r in caplog.records if r.getMessage().startswith("refused '[2K[1Amallory")]
    assert refusals, [r.getMessage() for r in caplog.records]
    assert all("\x1b" not in line and "link=" not in line and len(line) < 200 for line in refusals)
    dropped = store.audit_trail(action="result_dropped")
    assert dropped and all(len(row.detail["from"]) < 80 and "\x1b" not in row.detail["from"] for row in dropped)


def test_the_session_server_refuses_messages_larger_than_its_model_needs() -> None:
    """The probe: Flower's default let any connection send 2 GiB messages."""
    cap = message_cap(V0)
    assert cap == 2 * 8 * 28 + MESSAGE_SLACK_BYTES and cap < 2**31 // 100
    port = free_port()
    server = start_session_server(SimpleClientManager(), f"127.0.0.1:{port}", max_message_length=cap)
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        oversized = ClientMessage()
        oversized.get_properties_res.properties["site"].string = "x" * (cap + 1)
        with pytest.raises(grpc.RpcError) as caught:
            for _ in FlowerServiceStub(channel).Join(iter([oversized]), timeout=10):
                pass
        assert caught.value.code() in (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.CANCELLED,
                                       grpc.StatusCode.UNAVAILABLE), caught.value
        assert caught.value.code() != grpc.StatusCode.DEADLINE_EXCEEDED
    finally:
        channel.close()
        server.stop(grace=0)
