"""Every view of a version shows its own accuracy or "not evaluated", and how its session combined updates.

One small store written through the real APIs (no Flower): v1 from a secure session whose last
round scored it, v2 a plain median session's result merged into v1 (nothing scored it). The
analyst's ``fl-history``, the admin's ``fl-server`` and the dashboard must agree.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import numpy as np
import pytest
from fastapi.testclient import TestClient

from server.console.cli import main as admin_main
from server.history.cli import main as history_main
from server.history.web.app import create_app
from server.sessions.merge import commit_result
from server.store import Store
from shared.settings import Settings, load_settings
from tests.privacy_fixtures import charged_session

V0 = [np.zeros((6, 4), np.float32), np.zeros(4, np.float32)]
SECURE = "FedProx example-weighted mean (secure aggregation: the server saw only the sum)"
MEDIAN = "coordinate-wise median (one vote per site)"


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    settings = load_settings(home=tmp_path_factory.mktemp("views") / "home")
    store = Store.open(settings)
    try:
        store.ensure_initial_version(V0, metadata={"model": {"image_size": 32}})
        for site in ("alpha", "beta", "gamma"):
            store.enrol_site(site)
        secure = charged_session(store, {"alpha": 30, "beta": 10, "gamma": 20}, rounds=1,
                                 config={"secure_aggregation": True, "secagg_threshold": 2})
        median = charged_session(store, {"alpha": 30, "beta": 10, "gamma": 20}, rounds=1,
                                 config={"secure_aggregation": False, "aggregation": {"aggregator": "median"}})
        for session in (secure, median):
            store.mark_session_running(session.id, port=9000 + session.id, pid=1)
        store.commit_session_result(secure.id, [w + 1 for w in V0], participants=["alpha", "beta", "gamma"],
                                    metrics={"fit": {"examples": 60}, "evaluate": {"accuracy": 0.75, "loss": 0.5,
                                                                                   "examples": 60}},
                                    dp_summary={}, rounds=1)
        commit_result(store, median.id, [w + 2 for w in V0], evaluated=None, metrics={"fit": {"examples": 60}},
                      dp_summary={}, participants=["alpha", "beta", "gamma"], rounds=1)
    finally:
        store.close()
    return settings


def _out(capsys: pytest.CaptureFixture[str], main, *argv: str) -> str:  # type: ignore[no-untyped-def]
    """The command's output with table borders and runs of spaces made single spaces."""
    assert main(list(argv)) == 0
    return " ".join(capsys.readouterr().out.replace("│", " ").replace("┃", " ").split())


def test_the_terminal_views_show_own_accuracy_or_not_evaluated(settings: Settings, capsys: pytest.CaptureFixture[str],
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FL_HOME", str(settings.home))
    monkeypatch.setenv("COLUMNS", "200")
    home = ("--home", str(settings.home))
    versions = _out(capsys, history_main, *home, "versions")
    assert "v1 session v0 1 alpha, beta, gamma 1 75.0%" in versions
    assert "v2 merge v1, v0 2 alpha, beta, gamma 1 not evaluated" in versions
    assert "v0 initial 0 not evaluated" in versions

    merged = _out(capsys, history_main, *home, "show", "v2")
    assert f"aggregation: {MEDIAN}" in merged and "validation: not evaluated" in merged
    scored = _out(capsys, history_main, *home, "show", "v1")
    assert f"aggregation: {SECURE}" in scored
    assert "validation: accuracy 75.0%, loss 0.5000 on 60 validation images of the sites, scored on these weights" \
        in scored
    assert _out(capsys, admin_main, "version", "v2") == merged  # the admin's details are the same view
    compared = _out(capsys, history_main, *home, "compare", "v1", "v2")
    assert "evaluate accuracy 0.7500 not evaluated" in compared
    assert "v2 merge 3 60 not evaluated" in _out(capsys, admin_main, "stats")


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    store = Store.open(settings, readonly=True)
    with TestClient(create_app(store), base_url="http://127.0.0.1") as test_client:
        yield test_client
    store.close()


def test_the_dashboard_shows_own_accuracy_or_not_evaluated(client: TestClient) -> None:
    page = " ".join(client.get("/versions/2").text.split())
    assert f"<dt>aggregation</dt><dd>{MEDIAN}</dd>" in page
    assert "<dt>validation</dt><dd>not evaluated (no secure round scored these weights)</dd>" in page
    page = " ".join(client.get("/versions/1").text.split())
    assert "accuracy 75.0%, loss 0.5000, scored on these weights" in page and SECURE in page
    detail = json.loads(client.get("/api/versions/2").text)
    assert detail["aggregation"] == MEDIAN and detail["version"]["val_accuracy"] is None
    assert json.loads(client.get("/api/versions/0").text)["aggregation"] is None
    listing = " ".join(client.get("/versions").text.split())
    assert listing.count("not evaluated") == 2  # v0 and v2
    assert " ".join(client.get("/lineage").text.split()).count("not evaluated") == 2

