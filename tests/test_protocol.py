"""The wire protocol alone: message schema, replies and framing, without a server."""

from __future__ import annotations

import asyncio
import json
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared import framing
from shared import protocol as p
from shared.errors import FrameTooLarge, FramingError, ProtocolError

CREDS = {"id": 1, "site": "alpha", "token": "t0ken"}
DP = {"target_epsilon": 3.0, "delta": 1e-5, "l2_norm_clip": 1.0}


def submit(**changes: object) -> dict[str, object]:
    frame: dict[str, object] = {
        **CREDS, "type": "submit_request", "rounds": 3, "local_epochs": 1, "dp": dict(DP)
    }
    frame.update(changes)
    return frame


def read(data: bytes, max_bytes: int = 1024, eof: bool = True) -> tuple[object, asyncio.StreamReader]:
    async def go() -> tuple[object, asyncio.StreamReader]:
        reader = asyncio.StreamReader()
        reader.feed_data(data)
        if eof:
            reader.feed_eof()
        return await framing.read_frame(reader, max_bytes), reader

    return asyncio.run(go())


# ----------------------------------------------------------------- messages


@pytest.mark.parametrize(
    "frame",
    [
        submit(),
        submit(dp={"noise_multiplier": 1.1, "delta": 1e-5, "l2_norm_clip": 0.5}, note="x" * 500),
        {**CREDS, "type": "request_status", "request_id": 3},
        {**CREDS, "type": "list_requests"},
        {**CREDS, "type": "cancel_request", "request_id": 3},
        {**CREDS, "type": "list_notifications", "unread_only": True},
        {**CREDS, "type": "acknowledge", "notification_ids": [1, 2]},
        {**CREDS, "type": "list_versions"},
        {**CREDS, "type": "download_version", "version": 0, "chunk": 4},
        {**CREDS, "type": "acknowledge_update", "version": 2},
        {**CREDS, "type": "session_ticket", "request_id": 3},
        {**CREDS, "id": "corr-1", "type": "list_requests"},
    ],
)
def test_every_message_type_validates(frame: dict[str, object]) -> None:
    message = p.parse_message(frame)
    assert message.type == frame["type"]
    assert message.id == frame["id"]


@pytest.mark.parametrize(
    ("frame", "problem"),
    [
        (submit(rounds=0), "rounds"),
        (submit(rounds=1001), "rounds"),
        (submit(local_epochs=101), "local_epochs"),
        (submit(rounds=True), "rounds"),
        (submit(rounds="3"), "rounds"),
        (submit(note="x" * 501), "note"),
        (submit(extra=1), "extra"),
        (submit(dp={**DP, "noise_multiplier": 1.0}), "exactly one"),
        (submit(dp={"delta": 1e-5, "l2_norm_clip": 1.0}), "exactly one"),
        (submit(dp={**DP, "delta": 0.0}), "delta"),
        (submit(dp={**DP, "delta": 0.02}), "delta"),
        (submit(dp={**DP, "l2_norm_clip": 0}), "l2_norm_clip"),
        (submit(dp={**DP, "target_epsilon": float("inf")}), "target_epsilon"),
        (submit(site="bad site"), "site"),
        (submit(token=""), "token"),
        ({k: v for k, v in submit().items() if k != "token"}, "token"),
        ({**CREDS, "type": "launch_missiles"}, "type"),
        ({**CREDS, "type": "request_status", "request_id": 0}, "request_id"),
        ({**CREDS, "id": "x" * 65, "type": "list_requests"}, "id"),
    ],
)
def test_invalid_messages_are_refused_with_the_field_named(frame: dict[str, object], problem: str) -> None:
    with pytest.raises(ProtocolError, match=problem):
        p.parse_message(frame)


@pytest.mark.parametrize(
    "frame", [submit(token="s3cret-value" * 50), {**CREDS, "type": "s3cret-value" * 1000}]
)
def test_validation_errors_never_echo_the_input(frame: dict[str, object]) -> None:
    with pytest.raises(ProtocolError) as caught:
        p.parse_message(frame)
    assert "s3cret" not in str(caught.value)
    assert len(str(caught.value)) < 500


@pytest.mark.parametrize(("ref", "number"), [("REQ-3", 3), ("req-12", 12), ("7", 7), (9, 9)])
def test_request_refs(ref: str | int, number: int) -> None:
    assert p.parse_request_ref(ref) == number


@pytest.mark.parametrize("ref", ["REQ-", "REQ-0", "v3", "", 0, True])
def test_bad_request_refs(ref: str | int) -> None:
    with pytest.raises(ProtocolError):
        p.parse_request_ref(ref)


def test_message_id_of_only_echoes_usable_ids() -> None:
    assert p.message_id_of({"id": "abc"}) == "abc"
    assert p.message_id_of({"id": 5}) == 5
    assert p.message_id_of({"id": True}) is None
    assert p.message_id_of({"id": {"x": 1}}) is None
    assert p.message_id_of([1]) is None


# ----------------------------------------------------------------- framing


def test_frame_round_trip() -> None:
    frame = framing.encode_frame({"a": "ü", "n": [1, 2]})
    assert struct.unpack(">I", frame[:4])[0] == len(frame) - 4
    obj, _ = read(frame)
    assert obj == {"a": "ü", "n": [1, 2]}


def test_clean_end_of_stream_is_none() -> None:
    assert read(b"")[0] is None


def test_encode_refuses_oversized_frames_and_nan() -> None:
    with pytest.raises(FrameTooLarge):
        framing.encode_frame({"x": "y" * 2000}, max_bytes=1024)
    with pytest.raises(ValueError):
        framing.encode_frame({"x": float("nan")})


def test_oversized_frame_body_is_never_read() -> None:
    body = b"{" + b" " * 2000 + b"}"
    with pytest.raises(FrameTooLarge, match="cap is 1024"):
        _, _ = read(struct.pack(">I", len(body)) + body, max_bytes=1024)

    async def leftover() -> int:
        reader = asyncio.StreamReader()
        reader.feed_data(struct.pack(">I", len(body)) + body)
        with pytest.raises(FrameTooLarge):
            await framing.read_frame(reader, 1024)
        return len(await reader.read(1 << 20))

    assert asyncio.run(leftover()) == len(body)


@pytest.mark.parametrize(
    ("data", "error", "text"),
    [
        (b"\x00\x00", FramingError, "header"),
        (struct.pack(">I", 10) + b"{}", FramingError, "2 of 10"),
        (struct.pack(">I", 2) + b"\xff\xfe", ProtocolError, "UTF-8"),
        (struct.pack(">I", 5) + b"{nope", ProtocolError, "JSON"),
        (struct.pack(">I", 3) + b"NaN", ProtocolError, "JSON"),
        (struct.pack(">I", 0), ProtocolError, "JSON"),
        (struct.pack(">I", 3) + b"[1]", ProtocolError, "object, not list"),
        (struct.pack(">I", 800) + b"[" * 800, ProtocolError, "JSON"),
    ],
)
def test_bad_frames(data: bytes, error: type[Exception], text: str) -> None:
    with pytest.raises(error, match=text):
        read(data)


def test_body_errors_do_not_desynchronise_the_stream() -> None:
    data = struct.pack(">I", 5) + b"{nope" + framing.encode_frame({"ok": 1})

    async def go() -> object:
        reader = asyncio.StreamReader()
        reader.feed_data(data)
        with pytest.raises(ProtocolError):
            await framing.read_frame(reader, 1024)
        return await framing.read_frame(reader, 1024)

    assert asyncio.run(go()) == {"ok": 1}


def test_largest_download_chunk_fits_the_frame_cap() -> None:
    cap = 1 << 20
    size = framing.chunk_payload_bytes(cap, 10 << 20)
    chunk = p.DownloadChunk(
        version=2**31, chunk=2**31, total_chunks=2**31, total_size=2**40,
        sha256="f" * 64, chunk_sha256="f" * 64, data="A" * (size // 3 * 4),
    )
    assert len(framing.ok_frame("x" * 64, p.result_json(chunk), cap)) <= cap + 4
    assert framing.chunk_payload_bytes(cap, 256 << 10) == 256 << 10


def test_reply_shapes() -> None:
    err = p.error_reply(7, "auth", "wrong token for site 'a'", "check it")
    assert err == {"id": 7, "ok": False,
                   "error": {"code": "auth", "message": "wrong token for site 'a'", "hint": "check it"}}
    ok = framing.ok_frame(7, p.result_json(p.Acknowledged(acknowledged=2)))
    assert json.loads(ok[4:]) == {"id": 7, "ok": True, "result": {"acknowledged": 2}}
    assert json.loads(framing.ok_frame("a\"b", b"{}")[4:])["id"] == 'a"b'


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**60), 2**60) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)


@settings(max_examples=100, deadline=None)
@given(st.dictionaries(st.text(max_size=8), json_values, max_size=6))
def test_any_json_object_round_trips_and_never_crashes_validation(obj: dict[str, object]) -> None:
    decoded, _ = read(framing.encode_frame(obj), max_bytes=1 << 20)
    assert decoded == obj
    try:
        p.parse_message(obj)
    except ProtocolError:
        pass
