"""Identity keys over the real request socket: registration, tickets that carry peers' keys, reset."""

from __future__ import annotations

import base64
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from client.federation.site_identity import load_identity
from client.menu.actions import register_identity
from client.site_profile import SiteProfile
from shared.errors import ProtocolError, StoreError
from shared.secagg_identity import encode_public_key, fingerprint
from tests.conftest_socket import DP, Env, frame, recv, send


def test_the_first_registered_identity_key_holds_until_the_admin_resets_it(env: Env) -> None:
    first, second = (encode_public_key(Ed25519PrivateKey.generate()) for _ in range(2))
    with env.connect() as alpha:
        registered = alpha.register_identity_key(first)
        assert registered.newly_registered and registered.fingerprint == fingerprint(base64.b64decode(first))
        assert alpha.register_identity_key(first).newly_registered is False  # idempotent
        with pytest.raises(StoreError, match="already registered another identity key") as refused:
            alpha.register_identity_key(second)
        assert "fl-server reset-identity-key alpha" in refused.value.hint
        assert env.store.identity_keys(["alpha"]) == {"alpha": first}
        assert env.store.reset_identity_key("alpha", actor="admin")
        assert alpha.register_identity_key(second).newly_registered
    actions = [row.action for row in env.store.audit_trail()]
    assert actions.count("register_identity_key") == 2 and "reset_identity_key" in actions


def test_a_malformed_identity_key_is_refused_and_nothing_is_stored(env: Env) -> None:
    with env.connect() as alpha:
        for bad in ("not base64", "QUJD", "A" * 44, "A" * 42 + "=="):
            with pytest.raises(ProtocolError):
                alpha.register_identity_key(bad)
    sock = env.raw()
    send(sock, frame(env, type="register_identity_key", public_key=12))
    assert recv(sock)["error"]["code"] == "protocol"
    assert env.store.identity_keys(["alpha"]) == {}


def test_a_ticket_names_each_participant_with_its_registered_key(env: Env) -> None:
    env.store.ensure_initial_version([np.zeros(3, np.float32)], metadata={})
    keys = {site: encode_public_key(Ed25519PrivateKey.generate()) for site in ("alpha", "beta")}
    requests = {}
    for site, key in keys.items():
        with env.connect(site) as connection:
            connection.register_identity_key(key)
            requests[site] = connection.submit_request(rounds=1, local_epochs=1, dp=DP).id
    session = env.store.create_session(list(requests.values()), config={"rounds": 1, "secure_aggregation": True})
    with env.connect("alpha") as alpha:
        ticket = alpha.session_ticket(requests["alpha"])
    assert ticket.session_id == session.id and ticket.peers == keys


def test_setup_makes_an_owner_only_identity_key_and_registers_it(env: Env, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    profile = SiteProfile(site="alpha", state_dir=tmp_path / "state", data_root=data, token=env.tokens["alpha"],
                          server_port=env.port)
    registered = register_identity(profile)
    key = load_identity(profile.identity_key_path)
    assert (profile.identity_key_path.stat().st_mode & 0o777) == 0o600
    assert registered.newly_registered and registered.fingerprint == fingerprint(key)
    assert env.store.identity_keys(["alpha"]) == {"alpha": encode_public_key(key)}
    assert register_identity(profile).newly_registered is False  # the same key again: setup can be re-run


def test_fl_client_setup_registers_the_key_and_can_require_secure_aggregation(
    env: Env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from client.menu.cli import main
    from client.site_profile import load_profile
    from scripts.make_sample_data import generate_sample_dataset
    from shared.settings import load_settings

    monkeypatch.setenv("FL_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("COLUMNS", "200")
    generate_sample_dataset(tmp_path / "data", per_class=2, image_size=16, seed=0)
    setup = ["--site", "alpha", "setup", "--data", str(tmp_path / "data"), "--server", f"127.0.0.1:{env.port}"]
    assert main([*setup, "--token", "wrong", "--require-secure-aggregation"]) == 0  # the profile is saved anyway
    assert "identity key not registered yet (unknown site or wrong token)" in capsys.readouterr().out
    assert main([*setup, f"--token={env.tokens['alpha']}", "--require-secure-aggregation"]) == 0
    profile = load_profile(load_settings(), "alpha")
    key = load_identity(profile.identity_key_path)
    assert f"identity key {fingerprint(key)} registered" in capsys.readouterr().out
    assert profile.require_secure_aggregation
    assert env.store.identity_keys(["alpha"]) == {"alpha": encode_public_key(key)}
