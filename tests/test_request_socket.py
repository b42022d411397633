"""The request socket end to end: real sockets on loopback, a real SQLite store, port 0.

What a site can do and see; hostile and broken input is in test_request_socket_robustness.py."""

from __future__ import annotations

import base64
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from shared.errors import (
    AuthError,
    IllegalTransitionError,
    IntegrityError,
    NotFoundError,
    RequestNotApproved,
)
from tests.conftest_socket import DP, Env, frame, recv, send, status_ok

# ----------------------------------------------------------------- success paths


def test_submit_status_list_and_cancel(env: Env) -> None:
    with env.connect() as alpha:
        req = alpha.submit_request(rounds=3, local_epochs=2, dp=DP, note="first")
        assert (req.label, req.state, req.site, req.rounds, req.dp) == ("REQ-1", "PENDING", "alpha", 3,
                                                                     {**DP, "engine": "dp-model"})
        assert alpha.request_status("REQ-1") == req
        assert [r.label for r in alpha.list_requests()] == ["REQ-1"]
        cancelled = alpha.cancel_request(req.id)
        assert cancelled.state == "CANCELLED"
        with pytest.raises(IllegalTransitionError, match="cannot cancel REQ-1: it is CANCELLED"):
            alpha.cancel_request("REQ-1")


def test_cancel_only_pending(env: Env) -> None:
    with env.connect() as alpha:
        req = alpha.submit_request(rounds=1, local_epochs=1, dp=DP)
        env.store.reject_request(req.id, reason="too many rounds")
        with pytest.raises(IllegalTransitionError, match="it is REJECTED"):
            alpha.cancel_request(req.label)


def test_notifications_and_acknowledge(env: Env) -> None:
    env.store.notify("alpha", kind="info", message="hello", payload={"n": 1})
    with env.connect() as alpha:
        notes = alpha.notifications()
        assert [(n.kind, n.message, n.payload, n.read_at) for n in notes] == [("info", "hello", {"n": 1}, None)]
        assert alpha.acknowledge([notes[0].id]) == 1
        assert alpha.notifications(unread_only=True) == []
    with env.connect("beta") as beta:
        assert beta.notifications() == []
        assert beta.acknowledge([notes[0].id]) == 0  # another site's notification is untouched


def test_session_ticket_and_wait_for_approval(env: Env) -> None:
    env.store.ensure_initial_version([np.zeros(3, np.float32)], metadata={})
    with env.connect() as alpha:
        req = alpha.submit_request(rounds=2, local_epochs=1, dp=DP)
        with pytest.raises(IllegalTransitionError, match="REQ-1 is PENDING"):
            alpha.session_ticket(req.label)
        session = env.store.create_session([req.id], config={"rounds": 2, "proximal_mu": 0.1})
        starting = alpha.session_ticket(req.label)
        assert (starting.session_id, starting.session_state, starting.port) == (session.id, "STARTING", None)
        env.store.mark_session_running(session.id, port=8123, pid=1)
        ticket = alpha.wait_for_approval(req.label, poll_interval=0.05, timeout=5)
        assert (ticket.port, ticket.host, ticket.config["proximal_mu"]) == (8123, "127.0.0.1", 0.1)
        assert ticket.secret == env.store.session_secret(session.id, "alpha")


def test_wait_for_approval_raises_with_the_rejection_reason(env: Env) -> None:
    with env.connect() as alpha:
        req = alpha.submit_request(rounds=2, local_epochs=1, dp=DP)
        timer = threading.Timer(0.2, env.store.reject_request, (req.id,), {"reason": "budget too small"})
        timer.start()
        with pytest.raises(RequestNotApproved, match="REQ-1 was rejected by admin: budget too small"):
            alpha.wait_for_approval(req.label, poll_interval=0.05, timeout=5)
        timer.join()
        with pytest.raises(RequestNotApproved, match="still"):
            alpha.wait_for_approval(alpha.submit_request(1, 1, DP).label, poll_interval=0.05, timeout=0.1)


def release_v0(env: Env, site: str = "alpha") -> tuple[bytes, str]:
    weights = [np.arange(2000, dtype=np.float32), np.ones((7, 5), np.float64)]
    info = env.store.ensure_initial_version(weights, metadata={})
    env.store.export_version(0, [site])
    return info.path.read_bytes(), info.sha256


def test_download_reassembles_chunks_with_matching_sha256(env: Env, tmp_path: Path) -> None:
    data, sha = release_v0(env)
    with env.connect() as alpha:
        [version] = alpha.list_versions()
        assert (version.number, version.sha256, version.size_bytes) == (0, sha, len(data))
        assert version.size_bytes > 5 * 1024  # several chunks under the small cap
        dest = tmp_path / "dl" / "alpha_v0.npz"
        path, digest = alpha.download_version(0, dest)
        assert (path, digest, path.read_bytes()) == (dest, sha, data)
        assert list(dest.parent.iterdir()) == [dest]
        assert alpha.accept_update(0).recorded is True


def test_versions_not_released_are_invisible(env: Env, tmp_path: Path) -> None:
    release_v0(env)
    with env.connect("beta") as beta:
        assert beta.list_versions() == []
        with pytest.raises(NotFoundError, match="no version v0 available to site 'beta'"):
            beta.download_version(0, tmp_path / "x.npz")
        with pytest.raises(NotFoundError, match="no version v9 available to site 'beta'"):
            beta.accept_update(9)
    assert not (tmp_path / "x.npz").exists()
    assert list(tmp_path.glob(".x.npz*")) == []


def test_corrupt_chunk_is_detected(env: Env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    release_v0(env)
    with env.connect() as alpha:
        real_call = alpha._call

        def tampering(message_type: str, **fields: Any) -> Any:
            result = real_call(message_type, **fields)
            if message_type == "download_version" and fields["chunk"] == 2:
                data = bytearray(base64.b64decode(result.data))  # type: ignore[attr-defined]
                data[0] ^= 0xFF
                result = result.model_copy(update={"data": base64.b64encode(bytes(data)).decode()})  # type: ignore[attr-defined]
            return result

        monkeypatch.setattr(alpha, "_call", tampering)
        with pytest.raises(IntegrityError, match="chunk 2 of v0 arrived corrupt"):
            alpha.download_version(0, tmp_path / "dl" / "v0.npz")
    assert list((tmp_path / "dl").iterdir()) == []  # no partial file left behind


def test_corrupt_file_on_the_server_is_detected(env: Env, tmp_path: Path) -> None:
    data, _ = release_v0(env)
    path = env.store.version_path(0)
    path.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    with env.connect() as alpha, pytest.raises(IntegrityError, match="does not match the server's record"):
        alpha.download_version(0, tmp_path / "dl" / "v0.npz")
    assert list((tmp_path / "dl").iterdir()) == []


# ----------------------------------------------------------------- authentication and isolation


def test_unknown_site_and_wrong_token_get_one_answer(env: Env) -> None:
    with env.connect("gamma", token="whatever") as gamma, pytest.raises(AuthError) as unknown:
        gamma.list_requests()
    with env.connect("alpha", token="wrong") as alpha:
        with pytest.raises(AuthError) as wrong:
            alpha.list_requests()
    assert str(unknown.value) == str(wrong.value) == "unknown site or wrong token"
    assert unknown.value.hint == wrong.value.hint and wrong.value.hint
    sock = env.raw()
    send(sock, {**frame(env), "type": "list_requests", "token": "wrong", "id": 9})
    reply = recv(sock)
    assert reply is not None and reply["id"] == 9 and reply["error"]["code"] == "auth"
    status_ok(env, sock)  # the connection stays usable


def test_disabled_site_is_refused_after_forget(env: Env) -> None:
    with env.connect() as alpha:
        alpha.list_requests()
        env.store.disable_site("alpha")
        env.thread.server.forget_site("alpha")
        with pytest.raises(AuthError, match="disabled"):
            alpha.list_requests()


def test_another_sites_request_is_indistinguishable_from_a_missing_one(env: Env) -> None:
    with env.connect() as alpha, env.connect("beta") as beta:
        req = alpha.submit_request(rounds=1, local_epochs=1, dp=DP)
        assert beta.list_requests() == []
        for call in (beta.request_status, beta.cancel_request, beta.session_ticket):
            with pytest.raises(NotFoundError) as theirs:
                call(req.label)
            with pytest.raises(NotFoundError) as missing:
                call("REQ-999")
            assert str(theirs.value) == "no request REQ-1 for site 'beta'"
            assert str(missing.value) == "no request REQ-999 for site 'beta'"
            assert theirs.value.hint == missing.value.hint
        assert alpha.request_status(req.label).state == "PENDING"
