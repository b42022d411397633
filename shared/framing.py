"""Frames on the request socket: a 4-byte big-endian unsigned length, then that many bytes of
UTF-8 JSON holding one object.

Both ends refuse an oversized frame from its header alone, before reading the body, and JSON's
NaN/Infinity constants are refused (they are not JSON).
"""

from __future__ import annotations

import asyncio
import json
import struct
from typing import Any

from shared.errors import ConfigError, FrameTooLarge, FramingError, ProtocolError

HEADER = struct.Struct(">I")
#: Bytes of JSON around a download chunk's base64 data; chunk sizes leave this much room.
CHUNK_ENVELOPE_BYTES = 1024


def encode_frame(obj: dict[str, Any], max_bytes: int | None = None) -> bytes:
    """Serialise one object as a length-prefixed frame, refusing one the peer would refuse."""
    body = json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()
    return _frame(body, max_bytes)


def _frame(body: bytes, max_bytes: int | None) -> bytes:
    if max_bytes is not None and len(body) > max_bytes:
        raise FrameTooLarge(f"frame of {len(body)} bytes is over the {max_bytes}-byte cap")
    return HEADER.pack(len(body)) + body


def frame_length(header: bytes, max_bytes: int) -> int:
    """The body length a header announces; an oversized one is refused before reading it."""
    (length,) = HEADER.unpack(header)
    if length > max_bytes:
        raise FrameTooLarge(f"frame of {length} bytes announced; the cap is {max_bytes} bytes")
    return length


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def decode_body(body: bytes) -> dict[str, Any]:
    """Parse a frame body: UTF-8 JSON holding exactly one object."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError("frame is not valid UTF-8") from None
    try:
        obj = json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        raise ProtocolError(f"frame is not valid JSON ({type(exc).__name__})") from None
    if not isinstance(obj, dict):
        raise ProtocolError(f"frame must hold a JSON object, not {type(obj).__name__}")
    return obj


async def read_frame(reader: asyncio.StreamReader, max_bytes: int) -> dict[str, Any] | None:
    """Read one frame; None on a clean end of stream between frames.

    Raises ``FramingError`` (truncated) or ``FrameTooLarge`` when the stream cannot be
    resynchronised, and plain ``ProtocolError`` for a bad body, after which it still can.
    """
    try:
        header = await reader.readexactly(HEADER.size)
    except asyncio.IncompleteReadError as exc:
        if not exc.partial:
            return None
        raise FramingError("connection closed inside a frame header") from None
    length = frame_length(header, max_bytes)
    try:
        body = await reader.readexactly(length)
    except asyncio.IncompleteReadError as exc:
        raise FramingError(
            f"connection closed after {len(exc.partial)} of {length} frame bytes"
        ) from None
    return decode_body(body)


def ok_frame(message_id: Any, result: bytes, max_bytes: int | None = None) -> bytes:
    """The frame answering a message that succeeded, around a :func:`result_json` payload."""
    head = b'{"id":' + json.dumps(message_id).encode() + b',"ok":true,"result":'
    return _frame(head + result + b"}", max_bytes)


def chunk_payload_bytes(max_frame_bytes: int, wanted: int) -> int:
    """Raw bytes per download chunk such that its base64 JSON frame stays under the cap."""
    fits = (max_frame_bytes - CHUNK_ENVELOPE_BYTES) // 4 * 3
    if fits <= 0:
        raise ConfigError(
            f"a {max_frame_bytes}-byte frame cap is too small for downloads",
            hint="Set max_frame_bytes to at least 4096.",
        )
    return max(1, min(wanted, fits))
