"""TLS on the request socket: the right CA connects, a wrong CA or plain TCP is refused in words."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from client.federation.socket_client import SiteConnection
from scripts.make_certs import main as make_certs_main
from scripts.make_certs import make_certs
from server.socket.request_socket import RequestServerThread
from server.store import Store
from shared.errors import ConfigError, ConnectionProblem, TargetNotEmptyError
from shared.settings import load_settings
from shared.tls import is_loopback

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


def test_certificate_without_key_is_a_config_error(tmp_path: Path, certs) -> None:
    settings = load_settings(home=tmp_path, request_port=0, tls_cert=certs.server_cert)
    store = Store.open(settings)
    with pytest.raises(ConfigError, match="both FL_TLS_CERT and FL_TLS_KEY"):
        RequestServerThread(store, settings).start()
    store.close()


def test_binding_beyond_loopback_without_tls_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    settings = load_settings(home=tmp_path, request_port=0, request_host="0.0.0.0")
    store = Store.open(settings)
    with caplog.at_level(logging.WARNING), RequestServerThread(store, settings):
        pass
    store.close()
    assert any("without TLS" in r.getMessage() for r in caplog.records)


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


def test_flower_session_over_tls_refuses_a_site_trusting_another_ca(tmp_path: Path, certs) -> None:
    import threading

    import numpy as np

    from server.sessions.runtime import run_session
    from shared.errors import SessionFailedError
    from shared.tls import flower_certificates
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
                                             certificates=flower_certificates(certs.ca_cert, certs.server_cert,
                                                                              certs.server_key))
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
