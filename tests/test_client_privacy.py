"""Privacy accounting and the site ledger: calibration, composition, budget refusals."""

from __future__ import annotations

from pathlib import Path

import pytest

from client.training.ledger import PrivacyLedger
from shared.errors import PrivacyBudgetExceeded
from shared.privacy_accounting import (
    compose,
    dp_sgd_event,
    epsilon_for,
    event_from_json,
    event_to_json,
    noise_for_target_epsilon,
)

DELTA = 1e-5


@pytest.mark.parametrize(
    ("target", "n", "batch", "epochs"), [(1.0, 400, 32, 5), (4.0, 500, 64, 20), (8.0, 2000, 128, 50)]
)
def test_noise_for_target_epsilon_lands_within_one_percent(
    target: float, n: int, batch: int, epochs: int
) -> None:
    noise = noise_for_target_epsilon(target, DELTA, n, batch, epochs)
    spent = epsilon_for(dp_sgd_event(noise, n, batch, epochs), DELTA)
    assert 0.99 * target <= spent <= target


def test_event_json_round_trip_is_faithful() -> None:
    event = compose([dp_sgd_event(1.3, 500, 64, 3), dp_sgd_event(0.9, 500, 32, 1)])
    assert event_from_json(event_to_json(event)) == event


def test_event_json_refuses_unknown_types() -> None:
    with pytest.raises(ValueError, match="unknown DpEvent type"):
        event_from_json('{"type": "os.system"}')


def test_ledger_composes_sessions_not_sums_them(tmp_path: Path) -> None:
    ledger = PrivacyLedger(tmp_path / "ledger.db", max_epsilon=100.0, delta=DELTA)
    first, second = dp_sgd_event(1.1, 500, 64, 10), dp_sgd_event(1.1, 500, 64, 10)
    ledger.charge("S-1", first)
    ledger.charge("S-2", second)

    spent = ledger.spent()
    each = epsilon_for(first, DELTA) + epsilon_for(second, DELTA)
    assert spent < each
    assert spent == pytest.approx(epsilon_for(compose([first, second]), DELTA), rel=1e-12)
    assert ledger.spent(session_id="S-1") == pytest.approx(epsilon_for(first, DELTA))
    assert [entry.session_id for entry in ledger.entries()] == ["S-1", "S-2"]


def test_ledger_refuses_over_budget_run_with_the_numbers(tmp_path: Path) -> None:
    run = dp_sgd_event(1.0, 500, 64, 10)
    one_run = epsilon_for(run, DELTA)
    ledger = PrivacyLedger(tmp_path / "ledger.db", max_epsilon=1.2 * one_run, delta=DELTA)
    ledger.charge("S-1", run)
    spent = ledger.spent()

    with pytest.raises(PrivacyBudgetExceeded) as refused:
        ledger.charge("S-2", run)
    message = str(refused.value)
    for number in (spent, one_run, ledger.max_epsilon - spent):
        assert f"{number:.4g}" in message
    assert len(ledger.entries()) == 1  # the refused run was not recorded
    with pytest.raises(PrivacyBudgetExceeded):
        ledger.check_run(run)


def test_ledger_survives_reopening(tmp_path: Path) -> None:
    path = tmp_path / "site" / "ledger.db"
    PrivacyLedger(path, max_epsilon=10.0, delta=DELTA).charge("S-1", dp_sgd_event(2.0, 100, 10, 1))
    reopened = PrivacyLedger(path, max_epsilon=10.0, delta=DELTA)
    assert reopened.spent() == pytest.approx(epsilon_for(dp_sgd_event(2.0, 100, 10, 1), DELTA))
