"""The dashboard's routes through FastAPI's TestClient, over a real (read-only) SQLite store.

Every page is checked against what ``fl-history`` computes from the same store (the queries,
``fl-history export``), so the terminal and the browser cannot drift apart unnoticed.
"""

from __future__ import annotations

import csv
import html
import io
import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from server.history.cli import main as history_main
from server.history.queries import (
    compare_versions,
    site_contributions,
    validation_accuracy,
    version_rounds,
)
from server.history.web.app import create_app
from server.history.web.charts import PLOTLY_JS
from server.store import Store
from shared.settings import Settings
from tests.web_history import HOSTILE_TEXT, PER_SITE_VALUES, SECRET_VALUE, build_history

LOOPBACK = "http://127.0.0.1"


@pytest.fixture(scope="module")
def history_settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return build_history(tmp_path_factory.mktemp("web") / "home")


@pytest.fixture(scope="module")
def store(history_settings: Settings) -> Iterator[Store]:
    opened = Store.open(history_settings, readonly=True)
    yield opened
    opened.close()


@pytest.fixture(scope="module")
def client(store: Store) -> Iterator[TestClient]:
    with TestClient(create_app(store), base_url=LOOPBACK) as test_client:
        yield test_client


def figure(page: str, name: str) -> dict:
    """The Plotly figure a page embeds for ``name`` (what dashboard.js hands to plotly.js)."""
    match = re.search(rf'<script type="application/json" id="{name}-data">(.*?)</script>', page, re.DOTALL)
    assert match, f"no figure {name} in the page"
    return json.loads(match.group(1))


def test_versions_page_and_api_show_what_fl_history_computes(client: TestClient, store: Store) -> None:
    expected = [(v.number, v.kind, v.parents, validation_accuracy(v), v.released_to, v.sha256)
                for v in store.list_versions()]
    api = client.get("/api/versions").json()
    assert [(r["number"], r["kind"], r["parents"], r["val_accuracy"], r["released_to"], r["sha256"])
            for r in api] == expected
    page = client.get("/versions").text
    for number, _kind, _parents, accuracy, _released, sha in expected:
        assert f'<a href="/versions/{number}">v{number}</a>' in page
        assert sha[:12] in page
        if accuracy is not None:
            assert f"{accuracy:.1%}" in page


def test_versions_sort_server_side_with_blanks_last(client: TestClient) -> None:
    def order(query: str) -> list[int]:
        return [r["number"] for r in client.get(f"/api/versions?{query}").json()]

    assert order("sort=accuracy&order=desc") == [3, 2, 1, 0]  # v0 has no accuracy: last either way
    assert order("sort=accuracy&order=asc") == [1, 2, 3, 0]
    page = client.get("/versions?sort=accuracy&order=desc").text
    assert [int(n) for n in re.findall(r'<tr data-version="(\d+)">', page)] == [3, 2, 1, 0]
    assert 'href="/versions?sort=accuracy&amp;order=asc&amp;per_page=100"' in page  # clicking again flips it
    second = client.get("/versions?sort=accuracy&order=desc&per_page=3&page=2").text
    assert [int(n) for n in re.findall(r'<tr data-version="(\d+)">', second)] == [0]
    assert "page 2 of 2" in second and 'href="/versions?sort=accuracy&amp;order=desc&amp;page=1&amp;per_page=3"' in second


def test_bad_parameters_are_a_422_naming_them_without_a_traceback(client: TestClient) -> None:
    page = client.get("/versions?sort=evil")
    assert page.status_code == 422
    assert "query parameter &#39;sort&#39;" in page.text and "Traceback" not in page.text
    assert client.get("/versions/abc").status_code == 422
    api = client.get("/api/audit?page=0")
    assert api.status_code == 422
    assert any("page" in e for e in api.json()["errors"]) and api.json()["hint"]


def test_unknown_version_or_session_is_a_404_page(client: TestClient) -> None:
    for path, text in (("/versions/99", "no version v99"), ("/sessions/99", "no session 99"),
                       ("/compare?a=1&b=99", "no version v99"), ("/nowhere", "nothing at /nowhere")):
        response = client.get(path)
        assert response.status_code == 404, path
        assert text in response.text and "<!doctype html>" in response.text
    api = client.get("/api/versions/99")
    assert api.status_code == 404 and api.json()["detail"] == "no version v99" and api.json()["hint"]


def test_version_page_charts_the_rounds_its_session_recorded(client: TestClient, store: Store) -> None:
    rounds = version_rounds(store, store.get_version(1))
    chart = figure(client.get("/versions/1").text, "rounds-chart")
    evaluate = [t for t in chart["data"] if t["name"] == "evaluate"]
    assert [t["x"] for t in evaluate] == [[1, 2, 3]] * 2
    assert evaluate[1]["y"] == pytest.approx([r.accuracy for r in rounds if r.phase == "evaluate"])
    assert evaluate[0]["y"] == pytest.approx([r.loss for r in rounds if r.phase == "evaluate"])


def test_participants_are_aggregates_no_per_site_training_metric_leaves(client: TestClient) -> None:
    detail = client.get("/api/versions/3").json()
    assert detail["participant_count"] == 3 and detail["examples_total"] == 40 + 24 + 32
    assert {p["site"]: p["epsilon"] for p in detail["privacy"]} == {"alpha": 1.5, "beta": 1.5, "gamma": 1.5}
    for path in ("/api/versions/1", "/versions/1", "/api/sessions/1", "/sessions/1", "/api/versions/1/rounds.json"):
        text = client.get(path).text
        for per_site_value in PER_SITE_VALUES:
            assert per_site_value not in text, (path, per_site_value)


def test_rounds_download_is_what_fl_history_export_writes(client: TestClient, history_settings: Settings,
                                                          tmp_path: Path) -> None:
    assert history_main(["--home", str(history_settings.home), "export", "--format", "csv",
                         "--out", str(tmp_path / "csv")]) == 0
    assert history_main(["--home", str(history_settings.home), "export", "--format", "json",
                         "--out", str(tmp_path / "json")]) == 0
    exported = list(csv.DictReader((tmp_path / "csv" / "rounds.csv").open()))
    download = client.get("/api/versions/1/rounds.csv")
    assert download.headers["content-disposition"] == 'attachment; filename="v1-rounds.csv"'
    assert list(csv.DictReader(io.StringIO(download.text))) == [r for r in exported if r["version"] == "1"]
    exported_json = json.loads((tmp_path / "json" / "rounds.json").read_text())
    assert client.get("/api/versions/1/rounds.json").json() == [r for r in exported_json if r["version"] == 1]


def test_lineage_shows_the_merge_with_its_weight_and_staleness(client: TestClient, store: Store) -> None:
    merge = store.get_version(3)
    edges = {(e["parent"], e["child"], e["merged"]) for e in client.get("/api/lineage").json()["edges"]}
    assert edges == {(0, 1, False), (1, 2, False), (2, 3, False), (1, 3, True)}
    page = client.get("/lineage").text
    assert f"{merge.merge_weight:.3f}" in page
    dashed = [t for t in figure(page, "lineage-chart")["data"] if t.get("line", {}).get("dash") == "dash"]
    assert (dashed[0]["x"][0], dashed[0]["x"][2]) == (1, 3)
    assert "staleness 1" in json.dumps(figure(page, "lineage-chart")["layout"]["annotations"])


def test_compare_is_fl_history_compare(client: TestClient, store: Store) -> None:
    expected = compare_versions(store, 1, 3)
    api = client.get("/api/compare?a=1&b=3").json()
    assert api["l2_distance"] == pytest.approx(expected.l2_distance)
    assert (api["only_a"], api["only_b"], api["both"]) == (expected.only_a, expected.only_b, expected.both)
    page = client.get("/compare?a=1&b=3").text
    assert f"{expected.l2_distance:.4f}" in page and "gamma" in page


def test_sessions_show_round_k_of_n_and_escape_what_sites_sent(client: TestClient) -> None:
    sessions = {s["id"]: s for s in client.get("/api/sessions").json()}
    assert [s for s in sessions] == [4, 3, 2, 1]  # newest first
    assert (sessions[1]["rounds_done"], sessions[1]["rounds_total"], sessions[1]["state"]) == (3, 3, "COMPLETED")
    assert sessions[4]["state"] == "FAILED" and HOSTILE_TEXT in sessions[4]["reason"]  # JSON keeps the text
    for path in ("/sessions", "/sessions/4", "/audit"):
        page = client.get(path).text
        assert "<script>alert" not in page and "<img src=x" not in page, path
        assert html.escape("<script>alert(", quote=False) in page or "\\u003cscript\\u003e" in page, path
    assert '<td class="round">3 of 3</td>' in client.get("/sessions").text


def test_privacy_page_has_the_points_of_fl_history_sites(client: TestClient, store: Store) -> None:
    points = sorted((p for c in site_contributions(store) for p in c.points),
                    key=lambda p: (p.recorded_at, p.site, p.session_id))
    api = client.get("/api/privacy").json()
    assert [(p["site"], p["session_id"], p["rounds"], p["epsilon_total"]) for p in api] == \
        [(p.site, p.session_id, p.rounds, p.epsilon_total) for p in points]
    charges = {(c.site, c.session_id): c.total_epsilon for c in store.privacy_charges()}
    assert {(p["site"], p["session_id"]): p["epsilon_total"] for p in api} == charges  # the server's ledger
    chart = figure(client.get("/privacy").text, "privacy-chart")
    alpha = next(t for t in chart["data"] if t["name"] == "alpha")
    assert alpha["y"] == pytest.approx([p.epsilon_total for p in points if p.site == "alpha"])
    assert len(alpha["y"]) == 2 and alpha["y"][0] < alpha["y"][1]  # sessions 1 and 3, composed


def test_audit_is_paginated_newest_first_with_the_chain_verdict(client: TestClient, store: Store) -> None:
    total = len(store.audit_trail())
    first = client.get("/api/audit?per_page=5").json()
    second = client.get("/api/audit?per_page=5&page=2").json()
    assert first["total"] == total and first["pages"] == -(-total // 5)
    assert [e["id"] for e in first["entries"] + second["entries"]] == list(range(total, total - 10, -1))
    assert first["chain_ok"] and first["rows_checked"] == total
    page = client.get("/audit?per_page=5&page=2").text
    assert "Hash chain verified" in page and 'href="/audit?page=3&amp;per_page=5"' in page


def test_no_secret_reaches_any_response(client: TestClient) -> None:
    paths = ["/versions", "/versions/3", "/lineage", "/compare?a=1&b=3", "/sessions", "/sessions/3", "/privacy",
             "/audit", "/api/versions", "/api/versions/3", "/api/sessions", "/api/sessions/3", "/api/audit",
             "/api/privacy", "/api/lineage", "/openapi.json"]
    for path in paths:
        assert SECRET_VALUE not in client.get(path).text, path
    assert client.get("/api/sessions/3").json()["session"]["config"]["secagg_private_key"] == "[redacted]"
    dropped = next(e for e in client.get("/api/audit").json()["entries"] if e["action"] == "result_dropped")
    assert dropped["detail"]["session_secret"] == "[redacted]" and dropped["detail"]["reason"] == HOSTILE_TEXT


def test_pages_load_nothing_from_elsewhere(client: TestClient) -> None:
    for path in ("/versions", "/versions/1", "/lineage", "/privacy", "/sessions", "/docs"):
        page = client.get(path)
        assert not re.search(r'(src|href)="(https?:)?//', page.text), path
        assert "script-src 'self'" in page.headers["content-security-policy"]
    plotly_js = client.get("/static/vendor/plotly.min.js")
    assert plotly_js.status_code == 200 and plotly_js.content == PLOTLY_JS.read_bytes()
    swagger = re.search(r"(/static-offline-docs/swagger-ui-bundle\.js)", client.get("/docs").text)
    assert swagger and client.get(swagger.group(1)).status_code == 200


def test_a_loopback_dashboard_refuses_other_host_names(client: TestClient) -> None:
    """A page elsewhere cannot read it through DNS rebinding: its Host header is not loopback."""
    assert client.get("/versions", headers={"host": "evil.example:8050"}).status_code == 400
    assert client.get("/versions", headers={"host": "localhost:8050"}).status_code == 200
