"""The request socket's two caches: authentication results and unchanged-database reads."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from server.socket.auth_cache import AuthCache
from server.socket.read_cache import ReadCache
from server.store import Store
from shared import protocol as p
from shared.errors import AuthError
from shared.settings import load_settings

DP = {"noise_multiplier": 1.0, "delta": 1e-5, "l2_norm_clip": 1.0}


class CountingVerifier:
    """Stands in for Store.authenticate: slow enough to overlap, counts its calls."""

    def __init__(self) -> None:
        self.calls = 0
        self.lock = threading.Lock()

    def __call__(self, site: str, token: str) -> str:
        with self.lock:
            self.calls += 1
        threading.Event().wait(0.05)
        if token != "right":
            raise AuthError(f"wrong token for site '{site}'")
        return f"info:{site}"


def run_auth(cache_kwargs: dict[str, object], scenario: object) -> CountingVerifier:
    verifier = CountingVerifier()

    async def go() -> None:
        cache: AuthCache[str] = AuthCache(verifier, **cache_kwargs)  # type: ignore[arg-type]
        try:
            await scenario(cache)  # type: ignore[operator]
        finally:
            cache.close()

    asyncio.run(go())
    return verifier


def test_concurrent_frames_share_one_check_and_later_ones_hit_the_cache() -> None:
    async def scenario(cache: AuthCache[str]) -> None:
        results = await asyncio.gather(*(cache.authenticate("a", "right") for _ in range(20)))
        assert results == ["info:a"] * 20
        assert await cache.authenticate("a", "right") == "info:a"

    assert run_auth({}, scenario).calls == 1


def test_wrong_tokens_are_never_cached_and_never_match_a_cached_entry() -> None:
    async def scenario(cache: AuthCache[str]) -> None:
        await cache.authenticate("a", "right")
        for _ in range(2):
            with pytest.raises(AuthError, match="wrong token"):
                await cache.authenticate("a", "wrong")

    assert run_auth({}, scenario).calls == 3


def test_entries_expire_and_can_be_forgotten() -> None:
    now = [0.0]

    async def scenario(cache: AuthCache[str]) -> None:
        await cache.authenticate("a", "right")
        now[0] = 5.0
        await cache.authenticate("a", "right")  # still fresh
        now[0] = 11.0
        await cache.authenticate("a", "right")  # expired: checked again
        cache.forget("a")
        await cache.authenticate("a", "right")  # forgotten: checked again

    assert run_auth({"ttl": 10.0, "clock": lambda: now[0]}, scenario).calls == 3


def status(request_id: int) -> p.Message:
    return p.parse_message(
        {"type": "request_status", "id": 1, "site": "alpha", "token": "t", "request_id": request_id}
    )


def test_read_cache_drops_everything_when_any_connection_commits(tmp_path: Path) -> None:
    settings = load_settings(home=tmp_path)
    store = Store.open(settings)
    other_writer = Store.open(settings)  # its own engine and connections, like another process
    try:
        store.enrol_site("alpha")
        req = store.submit_request("alpha", rounds=1, local_epochs=1, dp=DP)
        cache = ReadCache(settings.database_url)
        message = status(req.id)
        assert cache.get(message)[0] is None
        _, generation = cache.get(message)
        cache.put(message, generation, b"PENDING")
        assert cache.get(message.model_copy(update={"id": 2, "token": "other"}))[0] == b"PENDING"
        assert cache.get(status(req.id + 1))[0] is None  # a different question
        other_writer.reject_request(req.id, reason="no")
        assert cache.get(message)[0] is None
        cache.close()
    finally:
        other_writer.close()
        store.close()


def test_a_result_read_across_a_commit_is_not_kept(tmp_path: Path) -> None:
    settings = load_settings(home=tmp_path)
    store = Store.open(settings)
    try:
        store.enrol_site("alpha")
        cache = ReadCache(settings.database_url)
        message = status(1)
        _, generation = cache.get(message)
        store.notify("alpha", kind="x", message="a commit while the read was in flight")
        cache.get(status(2))  # another query notices the new generation first
        cache.put(message, generation, b"old")
        assert cache.get(message)[0] is None
        cache.close()
    finally:
        store.close()


def test_read_cache_is_off_without_sqlite() -> None:
    cache = ReadCache("postgresql://nobody@localhost/fl")
    message = status(1)
    result, generation = cache.get(message)
    assert (result, generation) == (None, None)
    cache.put(message, generation, b"kept?")
    assert cache.get(message) == (None, None)
