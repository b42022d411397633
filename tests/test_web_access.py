"""Who may read the dashboard: analyst tokens in the store, ``fl-server analyst-token``, and the
rules by bind address (loopback without a token; elsewhere TLS and a token)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from server.console.cli import main as server_main
from server.history.cli import main as history_main
from server.history.web.access import COOKIE, AccessPolicy
from server.history.web.app import create_app
from server.store import Store
from shared.errors import AuthError, ConfigError, DuplicateError
from shared.settings import Settings, load_settings
from tests.conftest_store import make_weights

OFF_LOOPBACK = AccessPolicy.for_bind("0.0.0.0", tls=True)


def test_a_token_is_shown_once_and_kept_only_as_a_hash(store: Store, store_settings: Settings) -> None:
    analyst, token = store.create_analyst_token("ana")
    token_id, secret = token.split(".")
    assert int(token_id) == analyst.id and len(secret) >= 40
    assert store.authenticate_analyst(token).name == "ana"
    if store_settings.database_url.startswith("sqlite"):
        with sqlite3.connect(store_settings.home / "fl.db") as db:
            (stored,) = db.execute("SELECT token_hash FROM analyst_tokens").fetchone()
        assert stored.startswith("scrypt$") and secret not in stored
    created = store.audit_trail(action="create_analyst_token")
    assert created[-1].detail == {"analyst": "ana", "token_id": analyst.id}  # no secret in the log
    for wrong in (f"{token_id}.{secret[:-2]}xx", f"{int(token_id) + 1}.{secret}", secret, "", "1.short"):
        with pytest.raises(AuthError):
            store.authenticate_analyst(wrong)


def test_one_active_token_per_analyst_revoking_bites_at_once(store: Store) -> None:
    first, token = store.create_analyst_token("ana")
    with pytest.raises(DuplicateError, match="already has an active token"):
        store.create_analyst_token("ana")
    assert store.analyst_token_active(first.id)
    assert [t.id for t in store.revoke_analyst_token("ana")] == [first.id]
    assert not store.analyst_token_active(first.id)
    with pytest.raises(AuthError, match="revoked"):
        store.authenticate_analyst(token)
    second, _ = store.create_analyst_token("ana")
    assert [(t.id, t.active) for t in store.list_analyst_tokens()] == [(first.id, False), (second.id, True)]
    assert store.audit_trail(action="revoke_analyst_token")[-1].detail["token_ids"] == [first.id]


def test_a_store_from_before_analyst_tokens_reads_as_having_none(tmp_path: Path) -> None:
    settings = load_settings(home=tmp_path / "home")
    Store.open(settings).close()
    with sqlite3.connect(settings.home / "fl.db") as db:
        db.execute("DROP TABLE analyst_tokens")
    readonly = Store.open(settings, readonly=True)
    try:
        assert readonly.list_analyst_tokens() == []
        with pytest.raises(AuthError, match="no analyst token has been created yet"):
            readonly.authenticate_analyst("1." + "a" * 43)
    finally:
        readonly.close()


def test_fl_server_analyst_token_create_list_revoke(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("FL_HOME", str(tmp_path / "home"))
    assert server_main(["analyst-token", "create", "ana"]) == 0
    token = capsys.readouterr().out.split("token: ")[1].split()[0]
    assert server_main(["analyst-token", "list"]) == 0
    listing = capsys.readouterr().out
    assert "ana" in listing and "active" in listing and token.split(".")[1] not in listing
    store = Store.open(load_settings(home=tmp_path / "home"), readonly=True)
    try:
        assert store.authenticate_analyst(token).name == "ana"
        assert server_main(["analyst-token", "revoke", "ana"]) == 0
        assert "revoked 1 token(s) of ana" in capsys.readouterr().out
        with pytest.raises(AuthError):
            store.authenticate_analyst(token)
    finally:
        store.close()
    assert server_main(["analyst-token", "revoke", "ana"]) == 1
    assert "has no active token" in capsys.readouterr().out


def test_binding_beyond_loopback_needs_tls(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ConfigError) as refused:
        AccessPolicy.for_bind("0.0.0.0", tls=False)
    assert "FL_TLS_CERT" in refused.value.hint
    for host in ("127.0.0.1", "localhost", "::1"):
        assert not AccessPolicy.for_bind(host, tls=False).token_required
    assert AccessPolicy.for_bind("10.1.2.3", tls=True).token_required
    Store.open(load_settings(home=tmp_path / "home")).close()
    assert history_main(["--home", str(tmp_path / "home"), "web", "--host", "0.0.0.0"]) == 1
    out = capsys.readouterr().out
    assert "without TLS" in out and "hint:" in out and "Traceback" not in out
    with pytest.raises(SystemExit):
        history_main(["--home", str(tmp_path / "home"), "web", "--port", "70000"])


@pytest.fixture
def guarded(tmp_path: Path) -> Iterator[tuple[TestClient, Store, str]]:
    """A dashboard as it runs off loopback (HTTPS, token required), an admin's store, one token."""
    settings = load_settings(home=tmp_path / "home")
    admin = Store.open(settings)
    admin.ensure_initial_version(make_weights(0), metadata={"model": {"image_size": 32}})
    _, token = admin.create_analyst_token("ana")
    readonly = Store.open(settings, readonly=True)
    with TestClient(create_app(readonly, OFF_LOOPBACK), base_url="https://dashboard.example",
                    follow_redirects=False) as client:
        yield client, admin, token
    readonly.close()
    admin.close()


def test_off_loopback_nothing_but_the_login_page_without_a_token(guarded) -> None:
    client, _, _ = guarded
    api = client.get("/api/versions")
    assert api.status_code == 401 and api.headers["www-authenticate"] == "Bearer"
    assert "analyst-token create" in api.json()["hint"]
    assert client.get("/openapi.json").status_code == 401
    page = client.get("/versions?sort=kind")
    assert page.status_code == 303 and page.headers["location"] == "/login?next=%2Fversions%3Fsort%3Dkind"
    assert client.get("/login").status_code == 200
    assert client.get("/static/dashboard.css").status_code == 200
    assert client.get("/api/versions", headers={"Authorization": "Bearer 1.wrongwrongwrongwrongwrong"}).status_code == 401


def test_a_bearer_token_opens_the_api_until_it_is_revoked(guarded) -> None:
    client, admin, token = guarded
    bearer = {"Authorization": f"Bearer {token}"}
    assert [v["number"] for v in client.get("/api/versions", headers=bearer).json()] == [0]
    assert client.get("/api/versions", headers=bearer).status_code == 200  # second time: no scrypt, same answer
    admin.revoke_analyst_token("ana")
    assert client.get("/api/versions", headers=bearer).status_code == 401


def test_login_keeps_the_token_in_a_strict_cookie_and_goes_back(guarded) -> None:
    client, _, token = guarded
    wrong = client.post("/login", data={"token": "1.nopenopenopenopenope", "next": "/audit"})
    assert wrong.status_code == 401 and "unknown or wrong analyst token" in wrong.text
    response = client.post("/login", data={"token": token, "next": "/audit"})
    assert response.status_code == 303 and response.headers["location"] == "/audit"
    cookie = response.headers["set-cookie"]
    assert cookie.startswith(f"{COOKIE}=") and "HttpOnly" in cookie and "Secure" in cookie
    assert "samesite=strict" in cookie.lower()
    assert client.get("/audit").status_code == 200  # the client now sends the cookie
    assert "Strict-Transport-Security" in client.get("/audit").headers
    assert client.post("/login", data={"token": token, "next": "//evil.example/x"}).headers["location"] == "/"
    client.get("/logout")
    assert client.get("/audit").status_code == 303


def test_token_guessing_is_slowed_per_address(guarded) -> None:
    client, _, token = guarded
    for attempt in range(20):
        assert client.get("/api/versions", headers={"Authorization": f"Bearer 9.guess{attempt:020d}"}).status_code == 401
    refused = client.get("/api/versions", headers={"Authorization": f"Bearer {token}"})
    assert refused.status_code == 429 and "too many failed token checks" in refused.json()["detail"]
