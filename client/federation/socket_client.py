"""A site's synchronous connection to the request socket, used by the menu, the launcher and tests.

Every method sends one message from :mod:`shared.protocol`, checked locally against the same
schema the server uses, and returns the typed result. Error frames become the matching
:class:`~shared.errors.FLError` subclass with the server's message and hint; socket failures
become :class:`~shared.errors.ConnectionProblem` worded for a person. A connection the server
dropped (it closes idle ones) is reopened once per call; a ``submit_request`` that may already
have reached the server is never sent twice.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import itertools
import os
import select
import socket
import tempfile
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from pydantic import BaseModel

from shared import framing
from shared import protocol as p
from shared.errors import (
    AuthError,
    ConnectionProblem,
    FLError,
    FrameTooLarge,
    IllegalTransitionError,
    IntegrityError,
    NotFoundError,
    ProtocolError,
    RequestNotApproved,
    ServerBusy,
    ServerFault,
    StoreError,
)
from shared.progress import report
from shared.tls import wrap_client_socket

_ERRORS: dict[str, type[FLError]] = {
    "auth": AuthError,
    "protocol": ProtocolError,
    "too_large": FrameTooLarge,
    "not_found": NotFoundError,
    "illegal": IllegalTransitionError,
    "refused": StoreError,
    "rate_limited": ServerBusy,
    "internal": ServerFault,
}
_READY_STATES = frozenset({"APPROVED", "RUNNING"})
_ENDED_STATES = frozenset({"REJECTED", "CANCELLED", "FAILED", "INTERRUPTED", "COMPLETED"})
#: Messages whose second delivery would change something: never resent after a drop.
_NOT_RESENT = frozenset({"submit_request"})


class _Dropped(Exception):
    """The connection broke; ``sent`` tells whether the frame may have reached the server."""

    def __init__(self, reason: str, *, sent: bool) -> None:
        super().__init__(reason)
        self.sent = sent


class SiteConnection:
    """One site's connection to the request socket at ``host:port`` (opened on first use).

    Safe to share between threads: calls are serialised.
    """

    def __init__(
        self,
        host: str,
        port: int,
        site: str,
        token: str,
        *,
        timeout: float = 30.0,
        max_frame_bytes: int = 1 << 20,
        tls_ca: Path | None = None,
        tls_cert: Path | None = None,
        tls_key: Path | None = None,
        source_address: str | None = None,
    ) -> None:
        """``source_address``: the local address to connect from (a host with several; benches)."""
        self.host, self.port, self.site = host, port, site
        self._source = None if source_address is None else (source_address, 0)
        self.tls_ca = tls_ca
        self._client_certificate = {"cert": tls_cert, "key": tls_key}  # mutual TLS, when the server asks
        self._token = token
        self._timeout = timeout
        self._max_frame = max_frame_bytes
        self._sock: socket.socket | None = None
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    # -------------------------------------------------------------- requests

    def submit_request(
        self, rounds: int, local_epochs: int, dp: dict[str, Any], note: str = "",
        declaration: dict[str, Any] | None = None,
    ) -> p.RequestView:
        """Queue a training request; it stays PENDING until the admin decides.

        ``declaration`` (``protocol.DataDeclaration``): the count and budget the server plans with.
        """
        extra = {} if declaration is None else {"declaration": declaration}
        result = self._call("submit_request", rounds=rounds, local_epochs=local_epochs, dp=dp, note=note, **extra)
        return result  # type: ignore[return-value]

    def request_status(self, request: str | int) -> p.RequestView:
        return self._call("request_status", request_id=p.parse_request_ref(request))  # type: ignore[return-value]

    def list_requests(self) -> list[p.RequestView]:
        return self._call("list_requests").requests  # type: ignore[attr-defined, no-any-return]

    def cancel_request(self, request: str | int) -> p.RequestView:
        """Withdraw a request; only a PENDING one can be cancelled from the site."""
        return self._call("cancel_request", request_id=p.parse_request_ref(request))  # type: ignore[return-value]

    def session_ticket(self, request: str | int) -> p.SessionTicket:
        """Host, port, secret and config of the session an approved request belongs to."""
        return self._call("session_ticket", request_id=p.parse_request_ref(request))  # type: ignore[return-value]

    def register_identity_key(self, public_key: str) -> p.IdentityKeyRegistered:
        """Register this site's identity public key (base64) for secure aggregation; idempotent."""
        return self._call("register_identity_key", public_key=public_key)  # type: ignore[return-value]

    def wait_for_approval(
        self, request: str | int, *, poll_interval: float = 2.0, timeout: float | None = None
    ) -> p.SessionTicket:
        """Poll until the request is approved and its session listens; raise if it never will be."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            status = self.request_status(request)
            if status.state in _READY_STATES:
                ticket = self.session_ticket(request)
                if ticket.port is not None:
                    return ticket
            elif status.state in _ENDED_STATES:
                raise _not_approved(status)
            if deadline is not None and time.monotonic() + poll_interval > deadline:
                raise RequestNotApproved(
                    f"{status.label} is still {status.state} after {timeout:g} s",
                    hint="The admin has not approved it yet; wait longer or ask them.",
                )
            time.sleep(poll_interval)

    # -------------------------------------------------------------- notifications

    def notifications(self, unread_only: bool = False) -> list[p.NotificationView]:
        return self._call("list_notifications", unread_only=unread_only).notifications  # type: ignore[attr-defined, no-any-return]

    def acknowledge(self, notification_ids: list[int]) -> int:
        """Mark notifications read; returns how many were unread before."""
        return self._call("acknowledge", notification_ids=list(notification_ids)).acknowledged  # type: ignore[attr-defined, no-any-return]

    # -------------------------------------------------------------- versions

    def list_versions(self) -> list[p.VersionView]:
        """Versions the server released to this site."""
        return self._call("list_versions").versions  # type: ignore[attr-defined, no-any-return]

    def download_version(self, number: int, dest_path: str | Path) -> tuple[Path, str]:
        """Stream version ``number`` into ``dest_path``, verified chunk by chunk and as a whole.

        The bytes go to a temporary file beside ``dest_path`` that is renamed into place only
        after the whole file's sha256 matches the store's record, so ``dest_path`` never holds a
        partial or corrupt file. Returns the path and the verified sha256.
        """
        dest = Path(dest_path)
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
        try:
            with os.fdopen(fd, "wb") as out:
                digest = self._stream_chunks(number, out)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp_name, dest)
        except BaseException:
            Path(tmp_name).unlink(missing_ok=True)
            raise
        return dest, digest

    def accept_update(self, number: int) -> p.UpdateAccepted:
        """Tell the server this site took version ``number`` (recorded as its download)."""
        return self._call("acknowledge_update", version=number)  # type: ignore[return-value]

    # -------------------------------------------------------------- connection

    def close(self) -> None:
        with self._lock:
            self._drop()

    def __enter__(self) -> SiteConnection:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -------------------------------------------------------------- internals

    def _stream_chunks(self, number: int, out: Any) -> str:
        """Write every chunk of a version to ``out``; returns the whole file's verified sha256."""
        whole = hashlib.sha256()
        first: p.DownloadChunk | None = None
        index = 0
        while first is None or index < first.total_chunks:
            chunk: p.DownloadChunk = self._call("download_version", version=number, chunk=index)  # type: ignore[assignment]
            first = first or chunk
            data = _chunk_bytes(chunk, first, index)
            whole.update(data)
            out.write(data)
            report(f"downloading v{number}", out.tell(), first.total_size, "bytes")
            index += 1
        size = out.tell()
        if size != first.total_size or whole.hexdigest() != first.sha256:
            raise IntegrityError(
                f"downloaded v{number} ({size} bytes) does not match the server's record "
                f"({first.total_size} bytes, sha256 {first.sha256[:12]}...)",
                hint="The server's copy may be corrupt; ask the admin to verify the version store.",
            )
        return whole.hexdigest()

    def _call(self, message_type: str, **fields: Any) -> BaseModel:
        frame = {"type": message_type, "id": next(self._ids), "site": self.site, "token": self._token}
        frame.update(fields)
        p.parse_message(frame)  # the server's own schema: bad input fails here, with no round trip
        data = framing.encode_frame(frame, self._max_frame)
        with self._lock:
            reply = self._exchange(message_type, data)
        return self._result(message_type, frame["id"], reply)

    def _exchange(self, message_type: str, data: bytes) -> dict[str, Any]:
        """Send a frame and read its reply, reopening a dropped connection once."""
        try:
            return self._send_and_receive(data)
        except _Dropped as exc:
            self._drop()
            if exc.sent and message_type in _NOT_RESENT:
                raise self._dropped_problem(message_type, exc) from None
        try:
            return self._send_and_receive(data)
        except _Dropped as exc:
            self._drop()
            raise self._dropped_problem(message_type, exc) from None

    def _send_and_receive(self, data: bytes) -> dict[str, Any]:
        sock = self._connected()
        try:
            sock.sendall(data)
        except OSError as exc:
            raise _Dropped(_reason(exc), sent=False) from None
        try:
            return _recv_frame(sock, self._max_frame)
        except socket.timeout:
            self._drop()
            raise ConnectionProblem(
                f"server at {self.host}:{self.port} did not answer within {self._timeout:g} s",
                hint="The server may be overloaded; try again shortly.",
            ) from None
        except (OSError, EOFError) as exc:
            raise _Dropped(_reason(exc), sent=True) from None
        except ProtocolError:
            self._drop()  # a frame we cannot parse leaves the stream out of step
            raise

    def _connected(self) -> socket.socket:
        """An open socket; a cached one the server has closed or written to unasked is replaced."""
        if self._sock is not None and _has_pending_input(self._sock):
            self._drop()
        if self._sock is None:
            try:
                self._sock = socket.create_connection((self.host, self.port), timeout=self._timeout,
                                                      source_address=self._source)
            except OSError as exc:
                raise ConnectionProblem(
                    f"server not reachable at {self.host}:{self.port} ({_reason(exc)})"
                ) from None
            self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.tls_ca is not None:
                self._sock = wrap_client_socket(self._sock, self.tls_ca, self.host, self.port,
                                                **self._client_certificate)
        return self._sock

    def _drop(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _dropped_problem(self, message_type: str, exc: _Dropped) -> ConnectionProblem:
        if exc.sent and message_type in _NOT_RESENT:
            return ConnectionProblem(
                f"connection to {self.host}:{self.port} dropped after sending {message_type} "
                f"({exc})",
                hint="It may have been stored: list your requests before sending it again.",
            )
        return ConnectionProblem(f"connection to {self.host}:{self.port} dropped ({exc})")

    def _result(self, message_type: str, message_id: int, reply: dict[str, Any]) -> BaseModel:
        if reply.get("id") != message_id:
            self._drop()  # an unasked frame (e.g. the server closing the stream): start afresh
        if reply.get("ok") is True and reply.get("id") == message_id:
            try:
                return p.RESULT_MODELS[message_type].model_validate(reply.get("result"))
            except ValueError as exc:
                raise ProtocolError(f"malformed {message_type} result from the server: {exc}") from None
        if reply.get("ok") is False:
            try:
                error = p.ErrorBody.model_validate(reply.get("error"))
            except ValueError:
                raise ProtocolError("malformed error frame from the server") from None
            raise _ERRORS[error.code](error.message, hint=error.hint or None)
        raise ProtocolError(f"unexpected reply to {message_type} (id {reply.get('id')!r})")


def _chunk_bytes(chunk: p.DownloadChunk, first: p.DownloadChunk, index: int) -> bytes:
    """Decode and check one chunk against its own hash and the first chunk's description."""
    label = f"chunk {index} of v{first.version}"
    if chunk.chunk != index or (chunk.total_chunks, chunk.total_size, chunk.sha256) != (
        first.total_chunks,
        first.total_size,
        first.sha256,
    ):
        raise IntegrityError(
            f"{label} describes a different file than chunk 0",
            hint="The version changed during the download; download it again.",
        )
    try:
        data = base64.b64decode(chunk.data, validate=True)
    except (binascii.Error, ValueError):
        raise ProtocolError(f"{label} is not valid base64") from None
    if hashlib.sha256(data).hexdigest() != chunk.chunk_sha256:
        raise IntegrityError(
            f"{label} arrived corrupt (sha256 mismatch)",
            hint="Download it again; if it keeps failing, check the network path.",
        )
    return data


def _recv_frame(sock: socket.socket, max_bytes: int) -> dict[str, Any]:
    header = _recv_exact(sock, framing.HEADER.size)
    return framing.decode_body(_recv_exact(sock, framing.frame_length(header, max_bytes)))


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    buffer = bytearray(size)
    view = memoryview(buffer)
    received = 0
    while received < size:
        count = sock.recv_into(view[received:])
        if count == 0:
            raise EOFError("server closed the connection")
        received += count
    return bytes(buffer)


def _has_pending_input(sock: socket.socket) -> bool:
    """Whether the server sent something (data or EOF) while we were not asking."""
    readable, _, _ = select.select([sock], [], [], 0)
    return bool(readable)


def _reason(exc: BaseException) -> str:
    """A few words for a socket error: 'connection refused', 'timed out', ..."""
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, socket.gaierror):
        return "unknown host"
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return "timed out"
    if isinstance(exc, ConnectionResetError):
        return "connection reset"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc) or type(exc).__name__


def _not_approved(status: p.RequestView) -> RequestNotApproved:
    """The error for a request that ended without (or after) a session to join."""
    why = f": {status.reason}" if status.reason else ""
    if status.state == "REJECTED":
        who = f" by {status.decided_by}" if status.decided_by else ""
        return RequestNotApproved(f"{status.label} was rejected{who}{why}")
    if status.state == "COMPLETED":
        return RequestNotApproved(
            f"{status.label} already completed", hint="Check your notifications for the new version."
        )
    return RequestNotApproved(f"{status.label} is {status.state}{why}")
