"""The request socket: an asyncio TCP server that answers sites' framed JSON messages.

Each connection is a loop of read frame -> validate -> authenticate -> dispatch -> reply.
A bad frame gets an error frame; a frame whose length is over the cap, or that the peer cut
short, leaves the byte stream unusable, so the server answers and then closes cleanly. Until a
connection has carried one valid token it is held to the short leash of
:mod:`server.socket.connection_slots` (per-address cap, auth deadline, few bad frames), so
outsiders cannot hold the slots sites need. Nothing a peer sends can stop the server:
unexpected exceptions become an ``internal`` error frame and a logged traceback. Store calls
run in worker threads.
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
from server.socket.connection_slots import (
    Connection,
    ConnectionLimits,
    ConnectionSlots,
    peer_address,
)
from server.socket.handlers import RequestHandlers
from server.socket.rate_limits import RequestRateLimits
from server.socket.read_cache import ReadCache
from server.socket.replies import Reply, error_code
from server.store import Store
from server.store.records import SiteInfo
from shared import framing
from shared import protocol as p
from shared.errors import AuthError, FLError, FrameTooLarge, FramingError, ProtocolError
from shared.settings import Settings
from shared.tls import certificate_names, require_tls_beyond_loopback, server_tls

log = logging.getLogger(__name__)

#: How long a closing connection keeps draining what the peer still sends, so the kernel ends
#: it with FIN (the peer reads our error frame) rather than RST (the peer may lose it).
LINGER_SECONDS = 1.0
#: How long a TLS handshake may take; it happens before a connection has a slot.
TLS_HANDSHAKE_SECONDS = 10.0


class RequestServer:
    """Serves the request socket on ``host:port`` (port 0 picks a free one, see ``.port``).

    ``limits`` caps connections and bounds how long a peer may wait between frames and to
    authenticate (see :class:`ConnectionLimits`); one connection over a cap is answered
    ``rate_limited`` and closed. ``auth_ttl`` is how long a successful token check is reused
    (see :mod:`server.socket.auth_cache`).
    """

    def __init__(
        self,
        store: Store,
        settings: Settings,
        *,
        host: str | None = None,
        port: int | None = None,
        limits: ConnectionLimits | None = None,
        auth_ttl: float = 30.0,
        rate_limits: RequestRateLimits | None = None,
    ) -> None:
        self._settings = settings
        self._host = settings.request_host if host is None else host
        self._requested_port = settings.request_port if port is None else port
        self._max_frame = settings.max_frame_bytes
        self._slots = ConnectionSlots(limits or ConnectionLimits())
        self._auth_ttl = auth_ttl
        self._store = store
        self._limits = rate_limits or RequestRateLimits()
        self._handlers = RequestHandlers(store, settings)
        self._auth: AuthCache[SiteInfo] | None = None
        self._cache: ReadCache | None = None
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[Any]] = set()
        self._client_auth = settings.tls_client_auth
        self.port: int = 0

    async def start(self) -> None:
        """Listen; returns once connections are accepted."""
        tls = server_tls(self._settings)
        require_tls_beyond_loopback(self._host, tls, self._settings.insecure, "the request socket")
        context: ssl.SSLContext | None = tls.ssl_context() if tls is not None else None
        self._auth = AuthCache(self._store.authenticate, ttl=self._auth_ttl)
        self._cache = ReadCache(self._settings.database_url)
        self._server = await asyncio.start_server(
            self._serve_connection, self._host, self._requested_port, ssl=context,
            ssl_handshake_timeout=TLS_HANDSHAKE_SECONDS if context is not None else None,
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
        connection = Connection(peer_address(peer), self._limits.new_connection())
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        refusal = self._slots.refusal(connection.address)
        if refusal is not None:
            log.warning("refusing %s: %s", peer, refusal)
            try:
                await self._close(reader, writer, "rate_limited", refusal, "Try again in a few seconds.")
            finally:
                self._connections.discard(task)
            return
        self._slots.take(connection)
        try:
            await self._converse(reader, writer, peer, connection)
        except (ConnectionError, asyncio.IncompleteReadError):
            log.debug("connection from %s dropped", peer)
        except asyncio.CancelledError:
            writer.close()
            raise
        except Exception:  # a bug here must cost one connection, never the server
            log.exception("connection from %s failed unexpectedly", peer)
            writer.close()
        finally:
            self._slots.release(connection)
            self._connections.discard(task)

    async def _converse(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: Any, connection: Connection
    ) -> None:
        """Answer frames until the peer closes, idles too long, breaks the framing, or (before
        authenticating) runs out of time or of bad frames."""
        while True:
            try:
                obj = await asyncio.wait_for(
                    framing.read_frame(reader, self._max_frame), self._slots.read_timeout(connection)
                )
            except asyncio.TimeoutError:
                await self._close_timed_out(reader, writer, peer, connection)
                return
            except FramingError as exc:
                log.warning("closing %s: %s", peer, exc)
                await self._close(reader, writer, error_code(exc), str(exc), "Reconnect; the stream was out of step.")
                return
            except ProtocolError as exc:
                log.warning("bad frame from %s: %s", peer, exc)
                writer.write(framing.encode_frame(p.error_reply(None, "protocol", str(exc), exc.hint)))
                await writer.drain()
                if await self._struck_out(reader, writer, peer, connection):
                    return
                continue
            if obj is None:
                writer.close()
                return
            reply = await self._answer(obj, peer, connection, writer)
            if reply.authenticated:
                self._slots.authenticated(connection)
            writer.write(reply.frame)
            await writer.drain()
            if not reply.ok and await self._struck_out(reader, writer, peer, connection):
                return

    async def _close_timed_out(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: Any, connection: Connection
    ) -> None:
        if self._slots.past_deadline(connection):
            deadline = self._slots.limits.auth_deadline
            log.warning("closing %s: not authenticated within %g s", peer, deadline)
            message = f"no authenticated frame within {deadline:g} s of connecting; closing"
        else:
            timeout = self._slots.limits.frame_timeout
            log.warning("closing %s: no complete frame within %.0f s", peer, timeout)
            message = f"no complete frame within {timeout:g} s; closing"
        await self._close(reader, writer, "protocol", message, "Reconnect and send whole frames.")

    async def _struck_out(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: Any, connection: Connection
    ) -> bool:
        """Count an error reply; hang up on an unauthenticated connection that has had too many.

        No farewell frame: the error reply just sent is the peer's answer, and a client that
        sends again reads the end of the stream (and reconnects), never a stray frame.
        """
        if not self._slots.strike(connection):
            return False
        log.warning("closing %s: %d bad frames before authenticating", peer, connection.bad_frames)
        await self._close(reader, writer, None)
        return True

    async def _answer(
        self, obj: dict[str, Any], peer: Any, connection: Connection, writer: asyncio.StreamWriter
    ) -> Reply:
        """The encoded reply to one decoded frame; never raises."""
        message_id = p.message_id_of(obj)
        started = time.perf_counter()
        authenticated = False
        try:
            self._limits.check_connection(connection.rate_key)
            message = p.parse_message(obj)
            assert self._auth is not None
            await self._auth.authenticate(
                message.site, message.token,
                before_check=lambda: self._limits.check_address(connection.address),
            )
            self._check_certificate(message.site, writer)
            authenticated = True
            self._limits.check_site(message.site)
            frame = self._encode_result(message, await self._result_json(message))
        except FLError as exc:
            log.warning("%s from %s: %s", type(exc).__name__, peer, exc)
            reply = p.error_reply(message_id, error_code(exc), str(exc), exc.hint)
            return Reply(framing.encode_frame(reply), False, authenticated)
        except Exception:
            log.exception("internal error answering %s from %s", obj.get("type"), peer)
            reply = p.error_reply(
                message_id,
                "internal",
                "the server failed to answer this message",
                "Try again; if it persists, ask the admin to check the server log.",
            )
            return Reply(framing.encode_frame(reply), False, authenticated)
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "%s %s id=%s from %s ok in %.1f ms",
                message.site, message.type, message.id, peer, (time.perf_counter() - started) * 1e3,
            )
        return Reply(frame, True, True)

    def _check_certificate(self, site: str, writer: asyncio.StreamWriter) -> None:
        """Under mutual TLS, the token must come with a certificate issued for that very site."""
        if not self._client_auth:
            return
        if site not in certificate_names(writer.get_extra_info("peercert")):
            raise AuthError(
                f"this connection's client certificate is not issued for site '{site}'",
                hint="Use the certificate the admin issued for this site (fl-client setup --tls-cert).",
            )

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
        code: p.ErrorCode | None,
        message: str = "",
        hint: str = "",
    ) -> None:
        """Send a final error frame (unless ``code`` is None), half-close, drain the peer briefly,
        then close: a clean FIN."""
        try:
            if code is not None:
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
