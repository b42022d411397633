"""Secrets and state files (issue 14, items 5 and 10): the database holds no usable session secret,
state is owner-only (or group-readable without secrets), disabling a site revokes its live
secrets, tokens rotate, sites can be re-enabled."""

from __future__ import annotations

import shutil
import stat
from pathlib import Path

import pytest

from server.store import Store
from shared.errors import AuthError, ConfigError
from shared.settings import Settings, load_settings
from tests.conftest_store import make_weights, running_session


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _state_files(settings: Settings) -> list[Path]:
    db = settings.home / "fl.db"
    return [db, db.with_name("fl.db-wal"), db.with_name("fl.db-shm")]


def test_the_database_alone_cannot_join_a_live_session(tmp_path: Path) -> None:
    """The probe read live secrets from the DB; now a copy of it (with its WAL) yields none."""
    settings = load_settings(home=tmp_path / "server")
    store = Store.open(settings)
    store.ensure_initial_version(make_weights(0), metadata={"model": {}})
    store.enrol_site("alpha")
    session = running_session(store, "alpha")
    secret = store.session_secret(session.id, "alpha")
    assert store.verify_session_secret(session.id, "alpha", secret)
    copy = tmp_path / "copy"
    copy.mkdir()
    for path in _state_files(settings):
        assert secret.encode() not in path.read_bytes(), path.name
        shutil.copy(path, copy / path.name)
    stolen = Store.open(load_settings(home=copy))  # the same rows, without the server's key file
    try:
        guessed = stolen.session_secret(session.id, "alpha")
        assert guessed != secret
        assert not store.verify_session_secret(session.id, "alpha", guessed)
    finally:
        stolen.close()
        store.close()


def test_state_files_are_owner_only(store_settings: Settings, store: Store, sites: dict, v0: list) -> None:
    """The probe found the DB, its WAL/SHM and var/ created 0644/0755."""
    if "sqlite" not in store_settings.database_url:
        pytest.skip("file modes are a SQLite matter")
    running_session(store, "alpha")
    for path in _state_files(store_settings):
        assert _mode(path) == 0o600, path.name
    for folder in (store_settings.home, store_settings.versions_dir, store_settings.key_file.parent):
        assert _mode(folder) == 0o700, folder
    assert _mode(store_settings.key_file) == 0o600


def test_group_readable_state_still_keeps_the_key_owner_only(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir(mode=0o755)
    (home / "fl.db").touch(mode=0o644)  # a database from before, too open
    settings = load_settings(home=home, group_readable=True)
    store = Store.open(settings)
    store.enrol_site("alpha")
    assert [_mode(p) for p in _state_files(settings)] == [0o640] * 3  # WAL and SHM exist while open
    assert _mode(home) == 0o750 and _mode(settings.versions_dir) == 0o750
    assert _mode(settings.key_file) == 0o600 and _mode(settings.key_file.parent) == 0o700
    store.close()
    owner_only = load_settings(home=home)
    store = Store.open(owner_only)  # switching the option back narrows everything again
    store.enrol_site("beta")
    assert [_mode(p) for p in _state_files(owner_only)] == [0o600] * 3 and _mode(home) == 0o700
    store.close()


def test_a_key_file_others_can_read_is_refused(tmp_path: Path) -> None:
    settings = load_settings(home=tmp_path)
    Store.open(settings).close()
    settings.key_file.chmod(0o644)
    with pytest.raises(ConfigError, match="readable by others") as caught:
        Store.open(settings)
    assert f"chmod 600 {settings.key_file}" in caught.value.hint


def test_two_processes_opening_a_new_store_agree_on_one_key(tmp_path: Path) -> None:
    settings = load_settings(home=tmp_path)
    first, second = Store.open(settings), Store.open(settings)
    try:
        first.ensure_initial_version(make_weights(0), metadata={"model": {}})
        first.enrol_site("alpha")
        session = running_session(first, "alpha")
        assert second.verify_session_secret(session.id, "alpha", first.session_secret(session.id, "alpha"))
        assert second.verify_audit().ok
    finally:
        first.close()
        second.close()


def test_disabling_a_site_revokes_its_live_session_secret(store: Store, sites: dict, v0: list) -> None:
    """The probe: a disabled site's session secret stayed valid, so it could still join."""
    session = running_session(store, "alpha", "beta")
    alpha, beta = (store.session_secret(session.id, s) for s in ("alpha", "beta"))
    assert store.disable_site("alpha") == 1
    assert not store.verify_session_secret(session.id, "alpha", alpha)
    with pytest.raises(AuthError, match="secret is gone"):
        store.session_secret(session.id, "alpha")
    assert store.verify_session_secret(session.id, "beta", beta)  # the others carry on
    store.enable_site("alpha")
    assert store.authenticate("alpha", sites["alpha"]).enabled
    assert not store.verify_session_secret(session.id, "alpha", alpha)  # revoked stays revoked
    assert [e.detail for e in store.audit_trail(action="disable_site")] == [
        {"site": "alpha", "revoked_sessions": [session.id]}
    ]


def test_a_rotated_token_replaces_the_old_one(store: Store, sites: dict) -> None:
    new = store.rotate_token("alpha")
    assert new != sites["alpha"]
    assert store.authenticate("alpha", new).name == "alpha"
    with pytest.raises(AuthError, match="unknown site or wrong token"):
        store.authenticate("alpha", sites["alpha"])
    (row,) = store.audit_trail(action="rotate_token")
    assert row.detail == {"site": "alpha"} and new not in str(row.detail)
