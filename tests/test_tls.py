"""TLS on the request socket and the Flower sessions: the right CA connects, a wrong CA or plain TCP is
refused in words; clear text beyond loopback is refused; mutual TLS binds a token to its site's
certificate; certificate keys stay 0600 (issue 14, items 7 and 11)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from client.federation.socket_client import SiteConnection
from scripts.make_certs import main as make_certs_main
from scripts.make_certs import make_certs
from server.console.cli import main as server_main
from server.socket.request_socket import RequestServerThread
from server.store import Store
from shared.certificates import issue_site_certificate
from shared.errors import AuthError, ConfigError, ConnectionProblem, TargetNotEmptyError
from shared.settings import load_settings
from shared.tls import ServerTLS, is_loopback, require_tls_for_listeners

DP = {"noise_multiplier": 1.0, "delta": 1e-5, "l2_norm_clip": 1.0}


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory):
    return make_certs(tmp_path_factory.mktemp("certs"), hosts=["fl.example"], ips=[])


@pytest.fixture
def tls_server(tmp_path: Path, certs) -> Iterator[tuple[RequestServerThread, str]]:
    settings = load_settings(home=tmp_path, request_port=0, tls_ca=certs.ca_cert, tls_cert=certs.server_cert,
                             tls_key=certs.server_key)
    store = Store.open(settings)
    token = store.enrol_site("north")
    with RequestServerThread(store, settings) as server:
        yield server, token
    store.close()


def test_site_with_the_federation_ca_talks_over_tls(tls_server, certs) -> None:
    server, token = tls_server
    with SiteConnection("localhost", server.port, "north", token, tls_ca=certs.ca_cert) as connection:
        view = connection.submit_request(rounds=1, local_epochs=1, dp=DP)
        assert connection.request_status(view.id).state == "PENDING"
        assert connection.list_requests()[0].label == view.label  # the TLS connection is reused


def test_a_site_trusting_another_ca_is_refused_with_a_clear_message(tls_server, tmp_path: Path) -> None:
    server, token = tls_server
    other = make_certs(tmp_path / "other", hosts=[], ips=[])
    with pytest.raises(ConnectionProblem, match="does not trust") as error:
        SiteConnection("localhost", server.port, "north", token, tls_ca=other.ca_cert).list_requests()
    assert "CA file" in error.value.hint


def test_plain_tcp_client_cannot_talk_to_a_tls_server(tls_server) -> None:
    server, token = tls_server
    with pytest.raises(ConnectionProblem):
        SiteConnection("localhost", server.port, "north", token, timeout=5).list_requests()


def test_a_partial_tls_setting_is_a_config_error(tmp_path: Path, certs) -> None:
    with pytest.raises(ConfigError, match="both FL_TLS_CERT and FL_TLS_KEY"):
        load_settings(home=tmp_path, tls_cert=certs.server_cert)
    with pytest.raises(ConfigError, match="mutual TLS"):
        load_settings(home=tmp_path, tls_cert=certs.server_cert, tls_key=certs.server_key, tls_client_auth=True)


def test_binding_beyond_loopback_without_tls_is_refused(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The probe: a non-loopback bind without TLS only warned; tokens would cross the network in clear."""
    settings = load_settings(home=tmp_path, request_port=0, request_host="0.0.0.0")
    store = Store.open(settings)
    with pytest.raises(ConfigError, match="without TLS") as caught:
        RequestServerThread(store, settings).start()
    assert "--insecure" in caught.value.hint and "make_certs" in caught.value.hint
    with pytest.raises(ConfigError, match="session servers"):
        require_tls_for_listeners(load_settings(home=tmp_path, session_host="10.1.2.3"))
    insecure = load_settings(home=tmp_path, request_port=0, request_host="0.0.0.0", insecure=True)
    with caplog.at_level(logging.WARNING), RequestServerThread(store, insecure):
        pass
    store.close()
    assert any("without TLS (--insecure)" in r.getMessage() for r in caplog.records)


def test_fl_server_refuses_an_exposed_clear_text_start(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("FL_HOME", str(tmp_path))
    monkeypatch.setenv("FL_SESSION_HOST", "0.0.0.0")
    assert server_main(["serve"]) == 1
    assert "without TLS" in capsys.readouterr().out


@pytest.mark.parametrize(("host", "loopback"), [("127.0.0.1", True), ("::1", True), ("localhost", True),
                                                 ("0.0.0.0", False), ("", False), ("10.1.2.3", False)])
def test_loopback_detection(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_make_certs_refuses_to_overwrite(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_certs(tmp_path, hosts=[], ips=[])
    with pytest.raises(TargetNotEmptyError):
        make_certs(tmp_path, hosts=[], ips=[])
    assert make_certs_main(["--out", str(tmp_path)]) == 2
    assert make_certs_main(["--out", str(tmp_path), "--force", "--ip", "10.0.0.5"]) == 0
    assert "FL_TLS_CERT=" in capsys.readouterr().out
    assert (tmp_path / "server.key").stat().st_mode & 0o777 == 0o600


def test_make_certs_force_leaves_no_key_readable_by_others(tmp_path: Path) -> None:
    """The probe: --force kept an old key file's 0644 mode."""
    make_certs(tmp_path, hosts=[], ips=[])
    for name in ("ca.key", "server.key"):
        (tmp_path / name).chmod(0o644)
    assert make_certs_main(["--out", str(tmp_path), "--force"]) == 0
    assert make_certs_main(["--out", str(tmp_path), "--site", "north"]) == 0
    (tmp_path / "sites" / "north.key").chmod(0o644)
    assert make_certs_main(["--out", str(tmp_path), "--site", "north", "--force"]) == 0
    for key in (tmp_path / "ca.key", tmp_path / "server.key", tmp_path / "sites" / "north.key"):
        assert key.stat().st_mode & 0o777 == 0o600, key
    assert (tmp_path / "server.pem").stat().st_mode & 0o777 == 0o644


# ----------------------------------------------------------------- mutual TLS


@pytest.fixture
def mutual_tls_server(tmp_path: Path) -> Iterator[tuple[RequestServerThread, dict[str, str], Path]]:
    ca_dir = tmp_path / "certs"
    files = make_certs(ca_dir, hosts=[], ips=[])
    settings = load_settings(home=tmp_path / "home", request_port=0, tls_ca=files.ca_cert, tls_cert=files.server_cert,
                             tls_key=files.server_key, tls_client_auth=True)
    store = Store.open(settings)
    tokens = {site: store.enrol_site(site) for site in ("north", "south")}
    for site in tokens:
        issue_site_certificate(ca_dir, site)
    with RequestServerThread(store, settings) as server:
        yield server, tokens, ca_dir
    store.close()


def _mutual(server: RequestServerThread, ca_dir: Path, site: str, token: str, cert_of: str | None) -> SiteConnection:
    client_cert = {} if cert_of is None else {"tls_cert": ca_dir / "sites" / f"{cert_of}.pem",
                                              "tls_key": ca_dir / "sites" / f"{cert_of}.key"}
    return SiteConnection("localhost", server.port, site, token, tls_ca=ca_dir / "ca.pem", timeout=5, **client_cert)


def test_mutual_tls_binds_a_token_to_its_sites_certificate(mutual_tls_server) -> None:
    server, tokens, ca_dir = mutual_tls_server
    with _mutual(server, ca_dir, "north", tokens["north"], "north") as north:
        assert north.list_requests() == []
    with pytest.raises(ConnectionProblem):  # no client certificate: no handshake
        _mutual(server, ca_dir, "north", tokens["north"], None).list_requests()
    stolen_token = _mutual(server, ca_dir, "north", tokens["north"], "south")
    with stolen_token, pytest.raises(AuthError, match="not issued for site 'north'"):
        stolen_token.list_requests()


def test_flower_session_over_tls_refuses_a_site_trusting_another_ca(tmp_path: Path, certs) -> None:
    import threading

    import numpy as np

    from server.sessions.runtime import run_session
    from shared.errors import SessionFailedError
    from tests.flower_fakes import ScriptedClient, free_port, run_in_thread
    from tests.privacy_fixtures import charged_session

    store = Store.open(load_settings(home=tmp_path / "home"))
    store.ensure_initial_version([np.zeros((3, 2), np.float32)], metadata={"model": {}})
    store.enrol_site("north")
    store.enrol_site("south")
    config = {"proximal_mu": 0.0, "min_clients": 1, "join_timeout_s": 8, "round_timeout_s": 30,
              "max_update_norm": 100.0, "learning_rate": 0.1, "secure_aggregation": False}
    session = charged_session(store, {"north": 5, "south": 5}, rounds=1, config=config)
    port = free_port()
    store.mark_session_running(session.id, port=port, pid=1)
    outcome: dict = {}

    def serve() -> None:
        try:
            outcome["version"] = run_session(store, session.id, port=port, host="127.0.0.1",
                                             certificates=ServerTLS(certs.server_cert, certs.server_key)
                                             .flower_certificates())  # no CA: one setting, cert + key
        except SessionFailedError as exc:
            outcome["error"] = exc

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    trusted = ScriptedClient("north", store.session_secret(session.id, "north"), 5, lambda ws: [w + 1 for w in ws])
    other_ca = make_certs(tmp_path / "other", hosts=[], ips=[]).ca_cert.read_bytes()
    untrusting = ScriptedClient("south", store.session_secret(session.id, "south"), 5, lambda ws: ws)
    run_in_thread(port, trusted, root_certificates=certs.ca_cert.read_bytes())
    run_in_thread(port, untrusting, root_certificates=other_ca)
    server.join(timeout=60)
    store.close()

    # north joined over TLS; south, trusting another CA, never completed the handshake.
    assert "only 1 of 2 site(s) connected" in str(outcome.get("error")), outcome
    assert "missing: south" in str(outcome["error"])
    assert untrusting.configs == []
