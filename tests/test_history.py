"""``fl-history`` on a store with real records: two sessions, one of them merged, read-only always.

The store is filled through the Store API the way the session processes fill it (no TensorFlow):
v1 from a joint session of alpha+beta, v2 from gamma's session that started on v0 and is merged.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from matplotlib.figure import Figure
from sqlalchemy import text

from server.history import plots as history_plots
from server.history.cli import main
from server.history.queries import compare_versions, l2_distance, site_contributions
from server.sessions.privacy_plan import privacy_summary
from server.store import Store
from shared.errors import ReadOnlyStoreError
from shared.privacy_accounting import epsilon_for
from shared.settings import Settings, load_settings
from tests.conftest_store import commit_scored, make_weights
from tests.privacy_fixtures import charged_session, schedule

SITE_EXAMPLES = {"alpha": 40, "beta": 24, "gamma": 32}


def _run_session(store: Store, sites: list[str], *, rounds: int, seed: int) -> int:
    """Approve one request per site (charged to the ledger), record each round like a session process."""
    session = charged_session(store, {s: SITE_EXAMPLES[s] for s in sites}, rounds=rounds)
    store.mark_session_running(session.id, port=9000 + session.id, pid=100 + session.id)
    for r in range(1, rounds + 1):
        per_fit = {s: {"examples": SITE_EXAMPLES[s]} for s in sites}
        store.record_round(session.id, round_number=r, phase="fit",
                           metrics={"loss": 1.3 - 0.1 * r, "accuracy": 0.3 + 0.1 * r, "examples": 64},
                           per_site=per_fit)
        store.record_round(session.id, round_number=r, phase="evaluate",
                           metrics={"loss": 1.35 - 0.1 * r, "accuracy": 0.25 + 0.12 * r, "examples": 16},
                           per_site={s: {"loss": 1.2, "accuracy": 0.5, "examples": 8} for s in sites})
    return session.id


def _commit(store: Store, session_id: int, sites: list[str], seed: int, rounds: int) -> None:
    commit_scored(
        store, session_id, make_weights(seed),
        metrics={"fit": {"loss": 1.0, "accuracy": 0.5, "examples": 64},
                 "evaluate": {"loss": 1.1, "accuracy": 0.25 + 0.12 * rounds, "examples": 16, "sites": len(sites)}},
        dp_summary=privacy_summary(store, session_id, sites),
        participants=sites, rounds=rounds)


@pytest.fixture(scope="module")
def history_settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """v0 initial, v1 = session(alpha, beta), v2 = gamma's session from v0 merged into v1."""
    settings = load_settings(home=tmp_path_factory.mktemp("history") / "home")
    store = Store.open(settings)
    store.ensure_initial_version(make_weights(0), metadata={"model": {"image_size": 32}})
    for site in SITE_EXAMPLES:
        store.enrol_site(site)
    joint = _run_session(store, ["alpha", "beta"], rounds=3, seed=1)
    alone = _run_session(store, ["gamma"], rounds=2, seed=2)
    _commit(store, joint, ["alpha", "beta"], seed=1, rounds=3)
    _commit(store, alone, ["gamma"], seed=2, rounds=2)
    store.close()
    return settings


@pytest.fixture
def history(history_settings: Settings) -> Iterator[Store]:
    store = Store.open(history_settings, readonly=True)
    yield store
    store.close()


def _cli(settings: Settings, capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    assert main(["--home", str(settings.home), *argv]) == 0
    return capsys.readouterr().out


def test_the_fixture_holds_a_session_version_and_a_merge(history: Store) -> None:
    kinds = [(v.number, v.kind, v.parents) for v in history.list_versions()]
    assert kinds == [(0, "initial", []), (1, "session", [0]), (2, "merge", [1, 0])]


def test_versions_lists_every_version_with_accuracy(history_settings: Settings, capsys) -> None:
    out = _cli(history_settings, capsys, "versions")
    assert all(label in out for label in ("v0", "v1", "v2", "merge", "61.0%", "49.0%"))


def test_lineage_shows_the_merge_with_its_weight(history_settings: Settings, history: Store, capsys) -> None:
    out = _cli(history_settings, capsys, "lineage")
    merge = history.get_version(2)
    assert f"weight {merge.merge_weight:.3f}" in out and "merged from v0" in out


def test_show_prints_rounds_privacy_and_sha(history_settings: Settings, history: Store, capsys) -> None:
    out = _cli(history_settings, capsys, "show", "v1")
    assert history.get_version(1).sha256 in out.replace("\n", "")
    assert "alpha" in out and "Privacy (server ledger" in out and "Per-round" in out
    assert "add/remove one image" in out and "PLD" in out


def test_rounds_lists_fit_and_evaluate_of_each_round(history_settings: Settings, capsys) -> None:
    out = _cli(history_settings, capsys, "rounds", "1")
    assert out.count("evaluate") == 3 and out.count("fit") >= 3
    assert "no training rounds" in _cli(history_settings, capsys, "rounds", "0")


def test_compare_reports_metrics_participants_and_l2(history_settings: Settings, history: Store, capsys) -> None:
    out = _cli(history_settings, capsys, "compare", "v1", "v2")
    expected = l2_distance(history.load_weights(1), history.load_weights(2))
    assert f"{expected:.4f}" in out and "only v2: gamma" in out and "evaluate accuracy" in out


def test_l2_distance_is_zero_for_itself_and_matches_numpy(history: Store) -> None:
    a, b = history.load_weights(0), history.load_weights(1)
    assert l2_distance(a, a) == 0
    flat = np.concatenate([(x - y).ravel().astype(np.float64) for x, y in zip(a, b)])
    assert l2_distance(a, b) == pytest.approx(float(np.linalg.norm(flat)))
    comparison = compare_versions(history, 0, 1)
    assert comparison.l2_distance == pytest.approx(l2_distance(a, b)) and comparison.only_b == ["alpha", "beta"]


def test_sites_shows_contribution_and_epsilon_over_time(history_settings: Settings, history: Store,
                                                        capsys) -> None:
    out = _cli(history_settings, capsys, "sites")
    assert "Per-site contribution" in out and "Epsilon charged over time" in out
    by_site = {c.site: c for c in site_contributions(history)}
    assert by_site["alpha"].examples == 40 and by_site["alpha"].versions == [1]
    assert by_site["gamma"].versions == [2] and len(by_site["alpha"].points) == 1
    (charge,) = history.privacy_charges(site="alpha")
    assert by_site["alpha"].latest_total_epsilon == charge.total_epsilon
    assert charge.total_epsilon == pytest.approx(epsilon_for(schedule(40).session_event(3), 1e-5))


def test_export_writes_csv_and_json_with_the_same_rows(history_settings: Settings, tmp_path: Path,
                                                       capsys) -> None:
    out = _cli(history_settings, capsys, "export", "--format", "csv", "--out", str(tmp_path / "csv"))
    _cli(history_settings, capsys, "export", "--format", "json", "--out", str(tmp_path / "json"))
    assert "versions.csv" in out
    for table in ("versions", "rounds", "sites", "privacy_reports"):
        with (tmp_path / "csv" / f"{table}.csv").open(newline="") as handle:
            rows = list(csv.DictReader(handle))
        assert len(rows) == len(json.loads((tmp_path / "json" / f"{table}.json").read_text()))
    versions = json.loads((tmp_path / "json" / "versions.json").read_text())
    assert [v["kind"] for v in versions] == ["initial", "session", "merge"] and versions[2]["parents"] == [1, 0]


def _study(path: Path) -> Path:
    rows = [{"epsilon": e, "label": f"eps {e}", "accuracy": a} for e, a in ((0.5, 0.3), (2.0, 0.5), (8.0, 0.7))]
    path.write_text(json.dumps({"rows": [*rows, {"epsilon": None, "label": "no DP", "accuracy": 0.8}]}))
    return path


def test_plot_writes_non_empty_pngs_and_prints_their_names(history_settings: Settings, tmp_path: Path,
                                                           capsys) -> None:
    study = _study(tmp_path / "study.json")
    out = _cli(history_settings, capsys, "plot", "--out", str(tmp_path / "plots"), "--study", str(study))
    for name in (history_plots.ROUNDS_PNG, history_plots.EPSILON_PNG, history_plots.STUDY_PNG):
        path = tmp_path / "plots" / name
        assert name in out and path.stat().st_size > 1000
        assert path.read_bytes().startswith(b"\x89PNG")


def _labels(fig: Figure) -> list[tuple[str, str]]:
    return [(axes.get_xlabel(), axes.get_ylabel()) for axes in fig.axes]


def test_plots_have_the_right_axes_and_one_line_per_version_or_site(history: Store, tmp_path: Path) -> None:
    from server.history.queries import all_rounds

    rounds = history_plots.rounds_figure(all_rounds(history))
    assert _labels(rounds) == [("round", "validation accuracy"), ("round", "validation loss")]
    assert [line.get_label() for line in rounds.axes[1].get_lines()] == ["v1 (session 1)", "v2 (session 2)"]
    epsilon = history_plots.epsilon_figure(site_contributions(history))
    assert _labels(epsilon) == [("time of approval", "epsilon spent (composed total, PLD)")]
    assert len(epsilon.axes[0].get_lines()) == 3
    study = history_plots.privacy_utility_figure(history_plots.load_study(_study(tmp_path / "s.json")))
    assert _labels(study) == [("target epsilon per site (log scale)", "final accuracy (held-out)")]
    assert study.axes[0].get_xscale() == "log"


def test_the_history_store_cannot_write(history: Store) -> None:
    assert history.readonly
    with pytest.raises(ReadOnlyStoreError):
        history.enrol_site("mallory")
    with pytest.raises(ReadOnlyStoreError):
        history.rollback(0)
    with pytest.raises(Exception, match="readonly|read-only"), history._engine.begin() as connection:
        connection.execute(text("INSERT INTO audit_log (id, at, actor, action, detail, prev_hash, row_hash) "
                                "VALUES (999, '2024-01-01', 'x', 'y', '{}', '', '')"))
    assert [s.name for s in history.list_sites()] == sorted(SITE_EXAMPLES)


def test_missing_store_and_unknown_version_are_clear_errors(history_settings: Settings, tmp_path: Path,
                                                           capsys) -> None:
    assert main(["--home", str(tmp_path / "nothing"), "versions"]) == 1
    assert "no database" in capsys.readouterr().out
    assert main(["--home", str(history_settings.home), "show", "v9"]) == 1
    assert "no version v9" in capsys.readouterr().out
    assert not (tmp_path / "nothing").exists(), "a read-only open must not create the store"


def test_browser_runs_the_chosen_views_until_quit(history_settings: Settings, monkeypatch, capsys) -> None:
    answers = iter(["lineage", "compare two versions", "1", "2", "sites and privacy", "quit"])
    monkeypatch.setattr("shared.prompts.choose", lambda message, choices, **_: next(answers))
    assert main(["--home", str(history_settings.home)]) == 0
    out = capsys.readouterr().out
    assert "lineage" in out and "L2 distance" in out and "Per-site contribution" in out


def test_a_study_of_the_no_dp_baseline_alone_still_plots(tmp_path: Path) -> None:
    fig = history_plots.privacy_utility_figure({"rows": [{"epsilon": None, "label": "no DP", "accuracy": 0.8}]})
    assert history_plots.save(fig, tmp_path / "s.png").stat().st_size > 1000
