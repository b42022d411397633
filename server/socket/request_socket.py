"""The request socket: an asyncio TCP server that answers sites' framed JSON messages.

Each connection is a loop of read frame -> validate -> authenticate -> dispatch -> reply.
A bad frame gets an error frame and the connection stays usable; a frame whose length is over
the cap, or that the peer cut short, leaves the byte stream unusable, so the server answers
and then closes cleanly. Nothing a peer sends can stop the server: unexpected exceptions become
an ``internal`` error frame and a logged traceback. Store calls run in worker threads.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import threading
import time
from types import TracebackType
from typing import Any

from server.socket.auth_cache import AuthCache
from server.socket.handlers import RequestHandlers
from server.socket.rate_limits import RequestRateLimits
from server.socket.read_cache import ReadCache
from server.store import Store
from server.store.records import SiteInfo
from shared import framing
from shared import protocol as p
from shared.errors import (
    AuthError,
    ConfigError,
    FLError,
    FrameTooLarge,
    FramingError,
    IllegalTransitionError,
    NotFoundError,
    ProtocolError,
    ServerBusy,
)
from shared.settings import Settings
from shared.tls import server_context, warn_if_exposed

log = logging.getLogger(__name__)

#: How long a closing connection keeps draining what the peer still sends, so the kernel ends
#: it with FIN (the peer reads our error frame) rather than RST (the peer may lose it).
LINGER_SECONDS = 1.0


def error_code(exc: FLError) -> p.ErrorCode:
    """The wire code of an error the server raised on purpose (most specific class first)."""
    if isinstance(exc, AuthError):
        return "auth"
    if isinstance(exc, ServerBusy):
        return "rate_limited"
    if isinstance(exc, FrameTooLarge):
        return "too_large"
    if isinstance(exc, ProtocolError):
        return "protocol"
    if isinstance(exc, NotFoundError):
        return "not_found"
    if isinstance(exc, IllegalTransitionError):
        return "illegal"
    return "refused"


class RequestServer:
    """Serves the request socket on ``host:port`` (port 0 picks a free one, see ``.port``).

    ``max_connections`` caps open connections (one more is answered ``rate_limited`` and
    closed); ``frame_timeout`` is how long the server waits for the next complete frame, which
    bounds both slow senders (slow-loris) and idle connections (clients reconnect on their own);
    ``auth_ttl`` is how long a successful token check is reused (see :mod:`server.socket.auth_cache`).
    """

    def __init__(
        self,
        store: Store,
        settings: Settings,
        *,
        host: str | None = None,
        port: int | None = None,
        max_connections: int = 256,
        frame_timeout: float = 30.0,
        auth_ttl: float = 30.0,
        rate_limits: RequestRateLimits | None = None,
    ) -> None:
        self._settings = settings
        self._host = settings.request_host if host is None else host
        self._requested_port = settings.request_port if port is None else port
        self._max_frame = settings.max_frame_bytes
        self._max_connections = max_connections
        self._frame_timeout = frame_timeout
        self._auth_ttl = auth_ttl
        self._store = store
        self._limits = rate_limits or RequestRateLimits()
        self._handlers = RequestHandlers(store, settings)
        self._auth: AuthCache[SiteInfo] | None = None
        self._cache: ReadCache | None = None
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[Any]] = set()
        self.port: int = 0

    async def start(self) -> None:
        """Listen; returns once connections are accepted."""
        self._auth = AuthCache(self._store.authenticate, ttl=self._auth_ttl)
        self._cache = ReadCache(self._settings.database_url)
        tls = self._tls_context()
        warn_if_exposed(self._host, tls is not None, "the request socket")
        self._server = await asyncio.start_server(
            self._serve_connection, self._host, self._requested_port, ssl=tls
        )
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("request socket listening on %s:%d", self._host, self.port)

    async def stop(self) -> None:
        """Stop accepting, end open connections, and wait for them to finish."""
        if self._server is None:
            return
        self._server.close()
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        await self._server.wait_closed()
        self._server = None
        if self._cache is not None:
            self._cache.close()
        if self._auth is not None:
            self._auth.close()
        log.info("request socket on port %d stopped", self.port)

    def _tls_context(self) -> ssl.SSLContext | None:
        """TLS when the settings name a certificate and key; plain TCP otherwise."""
        cert, key = self._settings.tls_cert, self._settings.tls_key
        if cert is None and key is None:
            return None
        if cert is None or key is None:
            raise ConfigError("TLS needs both FL_TLS_CERT and FL_TLS_KEY")
        return server_context(cert, key)

    def forget_site(self, site: str) -> None:
        """Make the next frame from ``site`` re-check its token (call after disable or rotation).

        Safe to call from any thread: it only drops one dictionary entry.
        """
        if self._auth is not None:
            self._auth.forget(site)

    # -------------------------------------------------------------- connections

    async def _serve_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        peer = writer.get_extra_info("peername")
        if len(self._connections) >= self._max_connections:
            log.warning("refusing %s: already %d connections", peer, len(self._connections))
            await self._close(
                reader,
                writer,
                "rate_limited",
                f"the server is at its limit of {self._max_connections} connections",
                "Try again in a few seconds.",
            )
            return
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            await self._converse(reader, writer, peer)
        except (ConnectionError, asyncio.IncompleteReadError):
            log.debug("connection from %s dropped", peer)
        except asyncio.CancelledError:
            writer.close()
            raise
        except Exception:  # a bug here must cost one connection, never the server
            log.exception("connection from %s failed unexpectedly", peer)
            writer.close()
        finally:
            self._connections.discard(task)

    async def _converse(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: Any
    ) -> None:
        """Answer frames until the peer closes, idles too long, or breaks the framing."""
        budget = self._limits.new_connection()
        while True:
            try:
                obj = await asyncio.wait_for(
                    framing.read_frame(reader, self._max_frame), self._frame_timeout
                )
            except asyncio.TimeoutError:
                log.warning("closing %s: no complete frame within %.0f s", peer, self._frame_timeout)
                await self._close(
                    reader,
                    writer,
                    "protocol",
                    f"no complete frame within {self._frame_timeout:g} s; closing",
                    "Reconnect and send whole frames.",
                )
                return
            except FramingError as exc:
                log.warning("closing %s: %s", peer, exc)
                await self._close(reader, writer, error_code(exc), str(exc), "Reconnect; the stream was out of step.")
                return
            except ProtocolError as exc:
                log.warning("bad frame from %s: %s", peer, exc)
                writer.write(framing.encode_frame(p.error_reply(None, "protocol", str(exc), exc.hint)))
                await writer.drain()
                continue
            if obj is None:
                writer.close()
                return
            writer.write(await self._answer(obj, peer, budget))
            await writer.drain()

    async def _answer(self, obj: dict[str, Any], peer: Any, budget: str) -> bytes:
        """The encoded reply to one decoded frame; never raises."""
        message_id = p.message_id_of(obj)
        started = time.perf_counter()
        try:
            self._limits.check_connection(budget)
            message = p.parse_message(obj)
            self._limits.check_site(message.site)
            assert self._auth is not None
            await self._auth.authenticate(message.site, message.token)
            frame = self._encode_result(message, await self._result_json(message))
        except FLError as exc:
            log.warning("%s from %s: %s", type(exc).__name__, peer, exc)
            reply = p.error_reply(message_id, error_code(exc), str(exc), exc.hint)
            return framing.encode_frame(reply)
        except Exception:
            log.exception("internal error answering %s from %s", obj.get("type"), peer)
            reply = p.error_reply(
                message_id,
                "internal",
                "the server failed to answer this message",
                "Try again; if it persists, ask the admin to check the server log.",
            )
            return framing.encode_frame(reply)
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "%s %s id=%s from %s ok in %.1f ms",
                message.site, message.type, message.id, peer, (time.perf_counter() - started) * 1e3,
            )
        return frame

    async def _result_json(self, message: p.Message) -> bytes:
        """From the read cache while the database is unchanged, else from the store in a thread."""
        assert self._cache is not None
        result, generation = self._cache.get(message)
        if result is None:
            result = p.result_json(await asyncio.to_thread(self._handlers.handle, message))
            self._cache.put(message, generation, result)
        return result

    def _encode_result(self, message: p.Message, result: bytes) -> bytes:
        try:
            return framing.ok_frame(message.id, result, self._max_frame)
        except FrameTooLarge:
            raise FrameTooLarge(
                f"the reply to {message.type} is over the {self._max_frame}-byte frame cap",
                hint="Acknowledge old notifications, or ask the admin to raise max_frame_bytes.",
            ) from None

    async def _close(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        code: p.ErrorCode,
        message: str,
        hint: str,
    ) -> None:
        """Send a final error frame, half-close, drain the peer briefly, then close: a clean FIN."""
        try:
            writer.write(framing.encode_frame(p.error_reply(None, code, message, hint)))
            await writer.drain()
            if writer.can_write_eof():
                writer.write_eof()
            await asyncio.wait_for(self._discard(reader), LINGER_SECONDS)
        except (ConnectionError, asyncio.TimeoutError):
            pass
        finally:
            writer.close()

    async def _discard(self, reader: asyncio.StreamReader) -> None:
        budget = 4 * self._max_frame
        while budget > 0:
            data = await reader.read(65536)
            if not data:
                return
            budget -= len(data)


class RequestServerThread:
    """Runs a :class:`RequestServer` on its own event loop in a daemon thread.

    For synchronous callers (the admin console, tests, benchmarks): ``start()`` returns once the
    socket listens (or raises why it could not), ``stop()`` returns once it is closed.
    """

    def __init__(self, store: Store, settings: Settings, **server_options: Any) -> None:
        self.server = RequestServer(store, settings, **server_options)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopped: asyncio.Event | None = None

    @property
    def port(self) -> int:
        return self.server.port

    def start(self) -> RequestServerThread:
        ready = threading.Event()
        failure: list[BaseException] = []
        self._thread = threading.Thread(
            target=self._run, args=(ready, failure), name="request-socket", daemon=True
        )
        self._thread.start()
        ready.wait()
        if failure:
            self._thread.join()
            raise failure[0]
        return self

    def stop(self) -> None:
        if self._loop is None or self._thread is None or self._stopped is None:
            return
        self._loop.call_soon_threadsafe(self._stopped.set)
        self._thread.join()
        self._loop = self._thread = self._stopped = None

    def __enter__(self) -> RequestServerThread:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _run(self, ready: threading.Event, failure: list[BaseException]) -> None:
        asyncio.run(self._main(ready, failure))

    async def _main(self, ready: threading.Event, failure: list[BaseException]) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopped = asyncio.Event()
        try:
            await self.server.start()
        except BaseException as exc:  # e.g. address in use: re-raised in start()'s caller
            failure.append(exc)
            ready.set()
            return
        ready.set()
        await self._stopped.wait()
        await self.server.stop()
