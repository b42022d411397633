"""``fl-client --site NAME <command>``: every subcommand's success and error path, in-process.

A real request socket (``RequestServerThread``) serves a tmp store; training, accepting and
evaluating a version need TensorFlow and run in ``test_interactive.py``, so here they are
covered by their error paths.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from client.menu.cli import main
from scripts.make_sample_data import generate_sample_dataset
from server.socket.request_socket import RequestServerThread
from server.store import Store
from shared.settings import load_settings
from tests.conftest_store import make_weights
from tests.flower_fakes import free_port


@dataclass
class Server:
    store: Store
    port: int
    tokens: dict[str, str]
    data: Path


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Server]:
    monkeypatch.setenv("FL_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("FL_LOG_LEVEL", "WARNING")
    monkeypatch.setenv("COLUMNS", "200")  # cells stay on one line; the 80-column test sets its own
    settings = load_settings(request_port=0)
    store = Store.open(settings)
    store.ensure_initial_version(make_weights(0), metadata={"model": {"image_size": 16}})
    tokens = {site: store.enrol_site(site, budget_epsilon=10) for site in ("north", "south")}
    data = tmp_path / "north-data"
    generate_sample_dataset(data, per_class=5, image_size=16, seed=0)
    with RequestServerThread(store, settings) as thread:
        yield Server(store, thread.port, tokens, data)
    store.close()


def run(capsys: pytest.CaptureFixture[str], *argv: str, site: str = "north") -> tuple[int, str]:
    code = main(["--site", site, *argv])
    return code, capsys.readouterr().out


@pytest.fixture
def north(server: Server, capsys: pytest.CaptureFixture[str]) -> Server:
    """``north`` set up against the running server."""
    code, out = run(capsys, "setup", f"--token={server.tokens['north']}", "--data", str(server.data),
                    "--server", f"127.0.0.1:{server.port}", "--budget-epsilon", "10")
    assert code == 0 and "site north set up" in out
    return server


def test_setup_refuses_a_bad_folder_server_or_name(server: Server, capsys: pytest.CaptureFixture[str],
                                                   tmp_path: Path) -> None:
    code, out = run(capsys, "setup", "--token", "t", "--data", str(tmp_path / "missing"))
    assert code == 1 and "error:" in out
    code, out = run(capsys, "setup", "--token", "t", "--data", str(server.data), "--server", "localhost:http")
    assert code == 1 and "host:port" in out
    code, out = run(capsys, "setup", "--token", "t", "--data", str(server.data), site="bad name!")
    assert code == 1 and "cannot set up site" in out


def test_every_command_needs_setup_first(server: Server, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run(capsys, "requests")
    assert code == 1 and "not set up" in out and "setup --token" in out


def test_request_then_list_it(north: Server, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run(capsys, "request", "--rounds", "2", "--local-epochs", "1", "--noise", "1.2", "--note", "first")
    assert code == 0 and "sent REQ-1 (PENDING)" in out
    code, out = run(capsys, "request", "--rounds", "1", "--target-epsilon", "2")
    assert code == 0 and "sent REQ-2" in out
    code, out = run(capsys, "requests")
    assert code == 0 and "REQ-1" in out and "noise 1.2" in out and "eps<=2" in out and "first" in out
    assert north.store.get_request(2).dp["target_epsilon"] == 2


def test_request_names_its_dp_engine(north: Server, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run(capsys, "request", "--rounds", "1", "--local-epochs", "1", "--noise", "1.0",
                    "--dp-engine", "keras-optimizer")
    assert code == 0 and "sent REQ-1 (PENDING) with DP engine keras-optimizer" in out
    code, out = run(capsys, "request", "--rounds", "1", "--local-epochs", "1", "--noise", "1.0")
    assert code == 0 and "with DP engine dp-model" in out  # the profile's default
    assert [north.store.get_request(n).dp["engine"] for n in (1, 2)] == ["keras-optimizer", "dp-model"]
    code, out = run(capsys, "requests")
    assert code == 0 and "keras-optimizer" in out
    with pytest.raises(SystemExit):  # argparse names the choices
        run(capsys, "request", "--rounds", "1", "--noise", "1.0", "--dp-engine", "fast")
    assert "dp-model" in capsys.readouterr().err


def test_request_over_the_budget_is_refused_before_sending(north: Server,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run(capsys, "request", "--rounds", "5", "--target-epsilon", "50")
    assert code == 1 and "error:" in out and "hint:" in out
    assert north.store.list_requests() == []


def test_rejection_reason_reaches_requests_notifications_and_train(north: Server,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    run(capsys, "request", "--rounds", "1", "--local-epochs", "1", "--noise", "1.0")
    north.store.reject_request(1, reason="use fewer rounds")
    code, out = run(capsys, "requests")
    assert code == 0 and "REJECTED" in out and "use fewer rounds" in out
    code, out = run(capsys, "notifications", "--unread")
    assert code == 0 and "rejected" in out and "use fewer rounds" in out
    code, out = run(capsys, "train", "REQ-1", "--timeout", "5")
    assert code == 1 and "was rejected" in out and "use fewer rounds" in out


def test_train_for_an_unknown_request(north: Server, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run(capsys, "train", "REQ-7", "--timeout", "1")
    assert code == 1 and "error:" in out


def test_updates_show_released_versions(north: Server, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run(capsys, "updates")
    assert code == 0 and "v0" not in out
    north.store.export_version(0, ["north"])
    code, out = run(capsys, "updates")
    assert code == 0 and "v0" in out and north.store.get_version(0).sha256[:12] in out


def test_accept_and_evaluate_need_an_available_accepted_version(north: Server,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run(capsys, "accept", "v3")
    assert code == 1 and "not available" in out
    code, out = run(capsys, "evaluate", "v0")
    assert code == 1 and "has not been accepted" in out and "accept v0" in out
    with pytest.raises(SystemExit):
        main(["--site", "north", "evaluate", "newest"])


def test_dataset_summary_lists_classes_and_skipped_files(north: Server, capsys: pytest.CaptureFixture[str]) -> None:
    (north.data / "glioma" / "notes.txt").write_text("not an image")
    code, out = run(capsys, "dataset")
    assert code == 0 and "glioma" in out and "20" in out and "1 file(s) skipped:" in out
    assert "glioma/notes.txt: not an image file (.txt)" in out
    assert f"data folder: {north.data}\n" in out  # the path whole, on one line


def test_privacy_and_log_start_empty(north: Server, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run(capsys, "privacy")
    assert code == 0 and "0.000" in out and "10.000" in out
    code, out = run(capsys, "log")
    assert code == 0 and "Accepted versions" in out


def test_tables_fit_an_80_column_pipe(north: Server, capsys: pytest.CaptureFixture[str],
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    run(capsys, "request", "--rounds", "1", "--local-epochs", "1", "--noise", "1.0", "--note", "a long note " * 5)
    north.store.export_version(0, ["north"])
    monkeypatch.setenv("COLUMNS", "80")
    for command in ("requests", "updates", "notifications", "dataset", "privacy"):
        _, out = run(capsys, command)
        laid_out = [line for line in out.splitlines() if str(north.data) not in line]  # paths are never cut
        assert max(len(line) for line in laid_out) <= 80, command


def test_wrong_token_is_named(server: Server, capsys: pytest.CaptureFixture[str]) -> None:
    run(capsys, "setup", "--token", "not-the-token", "--data", str(server.data), "--server", f":{server.port}")
    code, out = run(capsys, "requests")
    assert code == 1 and "unknown site or wrong token" in out and "hint:" in out


def test_unreachable_server_is_named_with_what_to_do(server: Server, capsys: pytest.CaptureFixture[str]) -> None:
    closed = free_port()
    run(capsys, "setup", f"--token={server.tokens['north']}", "--data", str(server.data), "--server",
        f"127.0.0.1:{closed}")
    code, out = run(capsys, "updates")
    assert code == 1 and f"server not reachable at 127.0.0.1:{closed}" in out and "server is running" in out


def test_evaluate_without_a_site_needs_a_model_file_and_a_folder(server: Server, capsys: pytest.CaptureFixture[str],
                                                                 tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        main(["evaluate", "v1", "--data", str(server.data)])  # a version belongs to a site
    assert "--site NAME is needed" in capsys.readouterr().err
    not_a_model = tmp_path / "north_FinalGlobal_v1.h5"
    not_a_model.write_text("not HDF5")
    code = main(["evaluate", str(not_a_model)])
    out = capsys.readouterr().out
    assert code == 1 and "needs the folder of scans: --data DIR" in out and "hint:" in out
    code = main(["evaluate", str(not_a_model), "--data", str(server.data)])
    out = capsys.readouterr().out
    assert code == 1 and "is not a classifier model file" in out and "FinalGlobal" in out
    code = main(["evaluate", str(tmp_path / "missing.h5"), "--data", str(server.data)])
    assert code == 1 and "does not exist" in capsys.readouterr().out


def test_a_site_name_never_becomes_a_path_outside_the_sites_folder(server: Server,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    home = Path(load_settings().home)
    code, out = run(capsys, "requests", site="../../escaped")
    assert code == 1 and "not set up" in out
    assert not (home.parent / "escaped").exists() and (home / "logs" / "fl-client.log").is_file()
