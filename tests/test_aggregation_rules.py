"""No site steers the combination: approved (capped) weights, robust rules per session, the aggregate's norm.

Real Flower sessions on loopback over a real store, with numpy sites (``ScriptedClient``); the
approval checks run through ``fl-server approve`` in-process.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from server.console.cli import main
from server.history.queries import version_details
from server.history.version_views import version_details_view
from server.sessions.aggregation_rule import AggregationRule, Aggregator, choose_rule
from server.store import Store
from server.store.lifecycle import SessionState
from shared import secagg_protocol
from shared.errors import ConfigError
from shared.settings import load_settings
from tests.conftest_store import cli_home
from tests.flower_fakes import ScriptedClient, free_port, run_in_thread, serve_session
from tests.privacy_fixtures import charged_session, declaration

V0 = [np.zeros((6, 4), np.float32), np.zeros(4, np.float32)]


def _plain_session(store: Store, examples: dict[str, int], **config) -> tuple[int, int]:
    store.ensure_initial_version(V0, metadata={"model": {}})
    full = {"proximal_mu": 0.0, "min_clients": len(examples), "join_timeout_s": 30, "round_timeout_s": 60,
            "max_update_norm": 100.0, "learning_rate": 0.1, "secure_aggregation": False, **config}
    session = charged_session(store, examples, rounds=1, config=full)
    port = free_port()
    store.mark_session_running(session.id, port=port, pid=1)
    return session.id, port


def _run(store: Store, session_id: int, port: int, updates: dict[str, tuple[int, object]]) -> dict:
    """Serve the session; each site sends ``update(global weights)`` with its (claimed) count."""
    outcome = serve_session(store, session_id, port)
    for site, (examples, update) in updates.items():
        run_in_thread(port, ScriptedClient(site, store.session_secret(session_id, site), examples, update))
    outcome["thread"].join(timeout=120)
    return outcome


def _shift(by: float):
    return lambda weights: [w + by for w in weights]


def _text(renderable: object) -> str:
    console = Console(file=io.StringIO(), width=200, color_system=None)
    console.print(renderable)
    return console.file.getvalue()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("aggregation", "expected"),
    [
        ({"aggregator": "fedprox"}, (30 * 1 + 10 * 2 + 20 * 15) / 60),  # the attacker moves the mean
        ({"aggregator": "trimmed-mean", "trim_fraction": 0.34}, 2.0),  # one cut at each end: the middle site
        ({"aggregator": "median"}, 2.0),
    ],
)
def test_a_robust_rule_keeps_one_site_from_steering_the_round(store: Store, sites: dict[str, str],
                                                              aggregation: dict, expected: float) -> None:
    """gamma sends a large update that passes the per-update bound (norm 79 < 100): the weighted mean
    follows it, the median and the trimmed mean stay within the honest sites' values."""
    counts = {"alpha": 30, "beta": 10, "gamma": 20}
    session_id, port = _plain_session(store, counts, aggregation=aggregation)
    outcome = _run(store, session_id, port, {"alpha": (30, _shift(1.0)), "beta": (10, _shift(2.0)),
                                             "gamma": (20, _shift(15.0))})

    assert outcome.get("version") == 1, outcome
    for weights in store.load_weights(1):
        np.testing.assert_allclose(weights, expected, rtol=1e-6)
    rule = AggregationRule.from_config(store.get_session(session_id).config)
    details = _text(version_details_view(version_details(store, 1)))
    assert f"aggregation: {rule.describe()}" in " ".join(details.split())
    assert "validation: not evaluated" in details  # a plain session scores nothing


@pytest.mark.slow
def test_the_aggregate_is_norm_checked_on_the_plain_path(store: Store, sites: dict[str, str]) -> None:
    """Each update has norm sqrt(2) < 1.6; their coordinate-wise median has norm sqrt(3) > 1.6: the round fails."""
    def ones_at(*positions: int):
        def update(weights: list[np.ndarray]) -> list[np.ndarray]:
            kernel = weights[0].copy().reshape(-1)
            kernel[list(positions)] += 1.0
            return [kernel.reshape(weights[0].shape), weights[1]]
        return update

    session_id, port = _plain_session(store, dict.fromkeys(("alpha", "beta", "gamma"), 10),
                                      aggregation={"aggregator": "median"}, max_update_norm=1.6)
    outcome = _run(store, session_id, port, {"alpha": (10, ones_at(0, 1)), "beta": (10, ones_at(1, 2)),
                                             "gamma": (10, ones_at(0, 2))})

    session = store.get_session(session_id)
    assert "error" in outcome and session.state == SessionState.FAILED
    assert "aggregate update is rejected (update norm 1.73 exceeds the bound 1.6)" in session.reason
    assert store.audit_trail(action="result_dropped") == []  # every single update passed
    assert [v.number for v in store.list_versions()] == [0]


@pytest.mark.slow
def test_a_site_weighs_in_with_its_approved_count_capped_as_in_a_secure_round(store: Store,
                                                                              sites: dict[str, str]) -> None:
    """A count of 10^6 approved for alpha weighs no more than beta's 16384 (the secure rounds' cap)."""
    cap = secagg_protocol.DEFAULT_WEIGHT_CAP
    session_id, port = _plain_session(store, {"alpha": 10**6, "beta": cap})
    outcome = _run(store, session_id, port, {"alpha": (10**6, _shift(1.0)), "beta": (cap, _shift(-1.0))})

    assert outcome.get("version") == 1, outcome
    for weights in store.load_weights(1):
        np.testing.assert_allclose(weights, 0.0, atol=1e-6)  # uncapped: (10^6 - 16384) / 1016384 = 0.97


def test_rules_are_checked_when_chosen() -> None:
    assert choose_rule("fedprox", None, secure_aggregation=True, min_results=2) == AggregationRule()
    median = choose_rule("median", None, secure_aggregation=False, min_results=3)
    assert median.robust and median.config() == {"aggregator": "median"}
    trimmed = choose_rule("trimmed-mean", None, secure_aggregation=False, min_results=5)
    assert trimmed.config() == {"aggregator": "trimmed-mean", "trim_fraction": 0.2} and trimmed.trimmed_per_end(5) == 1
    assert AggregationRule.from_config({"aggregation": trimmed.config()}) == trimmed
    assert AggregationRule.from_config({}) == AggregationRule(Aggregator.FEDPROX)  # sessions from before
    for name, fraction, problem in [("mean", None, "no aggregator 'mean'"),
                                    ("median", 0.2, "a trim fraction is for --aggregator trimmed-mean"),
                                    ("trimmed-mean", 0.5, "above 0 and below 0.5")]:
        with pytest.raises(ConfigError, match=problem):
            choose_rule(name, fraction, secure_aggregation=False, min_results=5)


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    return cli_home(tmp_path, monkeypatch, columns=200)


def test_approval_refuses_a_robust_rule_it_cannot_run(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = Store.open(load_settings())
    try:
        store.ensure_initial_version(V0, metadata={"model": {"image_size": 32}})
        requests = []
        for site in ("north", "south", "east"):
            store.enrol_site(site)
            requests.append(str(store.submit_request(
                site, rounds=1, local_epochs=1, dp={"noise_multiplier": 1.1, "delta": 1e-5, "l2_norm_clip": 1.0},
                declaration=declaration(200)).id))

        def approve(*argv: str) -> str:
            code = main(["approve", *argv, "--join-timeout", "600"])
            out = " ".join(capsys.readouterr().out.split())
            assert code == 1, out
            return out

        out = approve(*requests, "--aggregator", "median")  # 3 sites: secure aggregation on by default
        assert "the median aggregator needs each site's update, but with secure aggregation the server sees only " \
               "their sum" in out and "--no-secure-aggregation" in out
        out = approve(*requests, "--aggregator", "trimmed-mean", "--no-secure-aggregation")
        assert "cutting 0.2 at each end of 3 results cuts nothing" in out and "--trim-fraction 0.34" in out
        out = approve(*requests[:2], "--aggregator", "median")
        assert "at least 3 results per round" in out
        assert store.list_sessions() == [] and store.privacy_charges() == []  # nothing created, nothing charged

        assert main(["approve", *requests, "--aggregator", "trimmed-mean", "--trim-fraction", "0.34",
                     "--no-secure-aggregation", "--max-update-norm", "80", "--join-timeout", "600"]) == 0
        out = " ".join(capsys.readouterr().out.split())
        assert "plain; coordinate-wise trimmed mean, 0.34 cut at each end (one vote per site)" in out
        config = store.get_session(1).config
        assert config["aggregation"] == {"aggregator": "trimmed-mean", "trim_fraction": 0.34}
        assert config["max_update_norm"] == 80 and config["secure_aggregation"] is False
        assert main(["stop", "1", "--reason", "test over"]) == 0
    finally:
        store.close()


@pytest.mark.parametrize(("answer", "expected"), [
    ("fedprox", {"aggregator": "fedprox", "secure_aggregation": None, "trim_fraction": None}),
    ("median", {"aggregator": "median", "secure_aggregation": False, "trim_fraction": None}),
    ("trimmed-mean", {"aggregator": "trimmed-mean", "secure_aggregation": False, "trim_fraction": 0.34}),
])
def test_the_approve_dialog_asks_for_the_aggregator(monkeypatch: pytest.MonkeyPatch, answer: str,
                                                   expected: dict) -> None:
    """The menu's choice, as ``fl-server approve --aggregator``: a robust one turns secure aggregation off."""
    from server.console import dialogs
    from server.sessions.manager import ApprovalOptions

    asked: list[str] = []

    def number(message, default, convert, **limits):  # type: ignore[no-untyped-def]
        asked.append(message)
        return 0.34 if message.startswith("Share cut") else default

    def choose(message, choices, **options):  # type: ignore[no-untyped-def]
        asked.append(message)
        assert [c.value for c in choices] == ["fedprox", "trimmed-mean", "median"]
        return answer

    monkeypatch.setattr(dialogs.prompts, "number", number)
    monkeypatch.setattr(dialogs.prompts, "choose", choose)
    options = dialogs._ask_options(ApprovalOptions(rounds=2, local_epochs=1, min_clients=3), 3)
    assert {key: getattr(options, key) for key in expected} == expected
    assert "How should the server combine the sites' updates?" in asked
    assert ("Share cut at each end of each coordinate" in asked) == (answer == "trimmed-mean")
