"""Outsiders without a token on the request socket (issue 14, items 1, 3 and 8).

Each test replays a probe of the security review against a real server on loopback: outsiders
connect from 127.0.0.2 (or .3, .4, ...), the sites from 127.0.0.1, as they would from their own
hosts.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from server.socket.connection_slots import ConnectionLimits
from server.socket.rate_limits import RequestRateLimits
from server.store import Store
from shared.errors import AuthError, IllegalTransitionError, ServerBusy
from tests.conftest_socket import DP, Env, frame, recv, send, status_ok

ATTACKER = "127.0.0.2"


def _hold(env: Env, count: int, source: str = ATTACKER) -> list[socket.socket]:
    """``count`` connections from ``source`` that each sent one bad frame (the probe's ``{}``)."""
    held = []
    for _ in range(count):
        sock = env.raw(source)
        send(sock, {})
        held.append(sock)
    return held


def _close_all(socks: list[socket.socket]) -> None:
    for sock in socks:
        sock.close()


# ----------------------------------------------------------------- item 1: connection slots


def test_256_idle_outsiders_cannot_lock_out_a_site_with_a_token(env: Env) -> None:
    """The probe: 256 connections from one address held every slot and a site was refused."""
    before = env.connect()
    before.list_requests()  # a site already connected when the attack starts ...
    held = _hold(env, 256)
    try:
        answers = [recv(sock) for sock in held]
        refused = [a for a in answers if a is not None and "waiting to authenticate" in a["error"]["message"]]
        assert len(refused) == 256 - ConnectionLimits().max_unauthenticated_per_address
        assert before.list_requests() == []  # ... keeps working
        with env.connect() as alpha:  # and a site connecting now gets in
            assert alpha.list_requests() == []
        with env.connect("beta") as beta:
            assert beta.list_requests() == []
    finally:
        _close_all(held)
        before.close()


def test_unauthenticated_connections_get_a_deadline_that_bad_frames_do_not_extend(tmp_path: Path) -> None:
    env = Env(tmp_path, limits=ConnectionLimits(auth_deadline=1.0, max_bad_frames=100))
    try:
        sock = env.raw(ATTACKER)
        started = time.monotonic()
        bad_frame_replies = 0
        while True:
            send(sock, {})  # the probe re-armed the 30 s frame timeout with a bad frame now and then
            reply = recv(sock)
            assert reply is not None and reply["error"]["code"] == "protocol"
            if "authenticated" in reply["error"]["message"]:
                break
            bad_frame_replies += 1
            time.sleep(0.2)
        assert "no authenticated frame within 1 s" in reply["error"]["message"]
        assert 1.0 <= time.monotonic() - started < 3 and bad_frame_replies >= 3
        assert recv(sock) is None
    finally:
        env.close()


def test_an_unauthenticated_connection_is_closed_after_a_few_bad_frames(env: Env) -> None:
    sock = env.raw(ATTACKER)
    limit = ConnectionLimits().max_bad_frames
    for index in range(limit):
        send(sock, {"id": index})
        assert recv(sock)["error"]["code"] == "protocol"  # type: ignore[index]
    assert recv(sock) is None  # the last error reply was the answer; then the server hung up
    status_ok(env, env.raw())  # a site is not affected


def test_outsiders_from_many_addresses_fill_only_the_unauthenticated_pool(tmp_path: Path) -> None:
    limits = ConnectionLimits(max_connections=12, max_unauthenticated=6, max_unauthenticated_per_address=3)
    env = Env(tmp_path, limits=limits)
    sites = [env.connect() for _ in range(4)]
    try:
        for site in sites:
            site.list_requests()
        held = [s for n in range(2, 6) for s in _hold(env, 3, f"127.0.0.{n}")]
        answers = [recv(sock) for sock in held]
        assert sum("6 connections are already waiting" in a["error"]["message"] for a in answers if a) == 6
        for site in sites:  # authenticated connections are never the outsiders' to take
            assert site.list_requests() == []
        _close_all(held)
    finally:
        for site in sites:
            site.close()
        env.close()


# ----------------------------------------------------------------- item 3: budgets and the queue


def test_wrong_tokens_in_a_sites_name_do_not_spend_its_budget(tmp_path: Path) -> None:
    """The probe spent a victim's per-site budget with wrong tokens; now they cost the sender's."""
    env = Env(tmp_path, rate_limits=RequestRateLimits(per_site="4/second", auth_checks_per_address="1000/second"))
    try:
        for _ in range(5):
            sock = env.raw(ATTACKER)
            for _ in range(2):
                send(sock, frame(env, type="list_requests", token="guess"))
                assert recv(sock)["error"]["code"] == "auth"  # type: ignore[index]
            sock.close()
        with env.connect() as alpha:
            for _ in range(3):
                assert alpha.list_requests() == []
    finally:
        env.close()


def test_token_checks_are_budgeted_per_address(tmp_path: Path) -> None:
    env = Env(tmp_path, rate_limits=RequestRateLimits(auth_checks_per_address="3/second"))
    try:
        codes = []
        for _ in range(3):
            sock = env.raw(ATTACKER)
            for _ in range(2):
                send(sock, frame(env, type="list_requests", token="guess"))
                codes.append(recv(sock)["error"]["code"])  # type: ignore[index]
            sock.close()
        assert codes[:3] == ["auth"] * 3 and set(codes[3:]) == {"rate_limited"}
        with env.connect() as alpha:  # another address has its own budget
            assert alpha.list_requests() == []
    finally:
        env.close()


def test_a_site_cannot_queue_more_than_the_pending_cap(tmp_path: Path) -> None:
    env = Env(tmp_path, settings_overrides={"max_pending_requests": 3})
    try:
        with env.connect() as alpha:
            first, *_ = [alpha.submit_request(rounds=1, local_epochs=1, dp=DP) for _ in range(3)]
            with pytest.raises(IllegalTransitionError, match="already has 3 pending requests") as caught:
                alpha.submit_request(rounds=1, local_epochs=1, dp=DP)
            assert "cancel" in caught.value.hint
            alpha.cancel_request(first.label)
            alpha.submit_request(rounds=1, local_epochs=1, dp=DP)
        with env.connect("beta") as beta:  # the cap is per site
            beta.submit_request(rounds=1, local_epochs=1, dp=DP)
        assert len(env.store.list_requests()) == 5
    finally:
        env.close()


# ----------------------------------------------------------------- item 8: one answer, same cost


def test_unknown_site_and_wrong_token_cost_the_same(store: Store, sites: dict[str, str]) -> None:
    """The probe told them apart by time (4 ms vs 79 ms): a dummy scrypt now runs for unknown names."""

    def seconds(site: str) -> float:
        started = time.perf_counter()
        with pytest.raises(AuthError, match="^unknown site or wrong token$"):
            store.authenticate(site, "not-the-token")
        return time.perf_counter() - started

    samples = [(seconds("nobody"), seconds("alpha")) for _ in range(7)]  # interleaved: same machine load
    unknown, wrong = (min(column) for column in zip(*samples))  # the least disturbed run of each
    assert 1 / 3 < unknown / wrong < 3, samples  # main: 0.4 ms vs 300 ms, a ratio of 1/750


def test_a_rate_limited_site_is_told_so_after_authenticating(tmp_path: Path) -> None:
    env = Env(tmp_path, rate_limits=RequestRateLimits(per_site="2/second"))
    try:
        with env.connect() as alpha:
            alpha.list_requests()
            alpha.list_requests()
            with pytest.raises(ServerBusy, match="site 'alpha'"):
                alpha.list_requests()
    finally:
        env.close()
