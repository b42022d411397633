"""Remember recent successful site authentications so the request socket stays fast.

Enrolment tokens are checked with scrypt, which costs tens of milliseconds on purpose; doing
that for every status query would cap the socket at a few dozen requests per second. After one
successful check the cache keeps a keyed BLAKE2b digest of (site, token), never the token
itself, and later frames are compared in constant time. An entry lives ``ttl`` seconds, so a
disabled site or a rotated token stops working within that time even if nobody calls
:meth:`AuthCache.forget`. Failed checks are never cached: every wrong token pays for scrypt
(and the caller may charge it to the sender, see ``before_check``), and checks run on a small
dedicated thread pool, so a flood of bad tokens can neither occupy the
threads that answer other queries nor leave a 16 MiB scrypt arena behind in every one of them.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Generic, TypeVar

Info = TypeVar("Info")


@dataclass(frozen=True)
class _Entry(Generic[Info]):
    digest: bytes
    expires: float
    info: Info


class AuthCache(Generic[Info]):
    """Async front of a slow, synchronous ``verify(site, token) -> info`` that raises on failure."""

    def __init__(
        self,
        verify: Callable[[str, str], Info],
        *,
        ttl: float = 30.0,
        max_concurrent_checks: int = 2,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._verify = verify
        self._ttl = ttl
        self._clock = clock
        self._key = secrets.token_bytes(32)
        self._entries: dict[str, _Entry[Info]] = {}
        self._inflight: dict[tuple[str, bytes], asyncio.Future[Info]] = {}
        self._pool = ThreadPoolExecutor(max_concurrent_checks, thread_name_prefix="auth-check")

    async def authenticate(
        self, site: str, token: str, *, before_check: Callable[[], None] | None = None
    ) -> Info:
        """The site's info when ``token`` is right; re-raises the verifier's error otherwise.

        ``before_check`` runs only when a new scrypt check is about to start (not for a cache
        hit, nor for a frame that joins a check already running); it may raise to refuse it.
        """
        digest = self._digest(site, token)
        entry = self._entries.get(site)
        if (
            entry is not None
            and entry.expires > self._clock()
            and hmac.compare_digest(entry.digest, digest)
        ):
            return entry.info
        key = (site, digest)
        pending = self._inflight.get(key)
        if pending is None:  # one scrypt check however many frames arrive with the same pair
            if before_check is not None:
                before_check()
            pending = asyncio.ensure_future(self._check(site, token, digest))
            self._inflight[key] = pending
            pending.add_done_callback(lambda done: self._finished(key, done))
        return await asyncio.shield(pending)

    def forget(self, site: str) -> None:
        """Drop a site's entry at once, e.g. after the admin disables it or rotates its token."""
        self._entries.pop(site, None)

    def _finished(self, key: tuple[str, bytes], done: asyncio.Future[Info]) -> None:
        self._inflight.pop(key, None)
        if not done.cancelled():
            done.exception()  # retrieved here too, so no waiter leaving early causes a warning

    def close(self) -> None:
        """Release the check threads (a check still running finishes on its own)."""
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def _check(self, site: str, token: str, digest: bytes) -> Info:
        loop = asyncio.get_running_loop()
        info = await loop.run_in_executor(self._pool, self._verify, site, token)
        self._entries[site] = _Entry(digest, self._clock() + self._ttl, info)
        return info

    def _digest(self, site: str, token: str) -> bytes:
        material = site.encode() + b"\x00" + token.encode()
        return hashlib.blake2b(material, key=self._key, digest_size=32).digest()
