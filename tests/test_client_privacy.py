"""Privacy accounting and the site's side of it: PLD (RDP beside it), delta <= 1/(10 n), counts,
the hash-chained ledger, group privacy, and the schedules a site accepts."""

from __future__ import annotations

import math
import re
import sqlite3
from pathlib import Path

import pytest
from dp_accounting import DpEvent
from dp_accounting.pld import PLDAccountant
from dp_accounting.rdp import RdpAccountant

from client.menu.actions import planned_epsilon, privacy_status, setup_site
from client.training.ledger import LedgerTamperedError, PrivacyLedger
from client.training.privacy_contract import (
    RequestTerms,
    accepted_schedule,
    declaration,
    site_ledger,
)
from shared.dataset_layout import scan_dataset, training_size
from shared.errors import ConfigError, PrivacyBudgetExceeded
from shared.privacy_accounting import (
    SCHEDULE_PREFIX,
    DpSchedule,
    bucket_examples,
    calibrate_noise,
    check_delta,
    compose,
    declared_examples,
    epsilon_for,
    event_from_json,
    event_to_json,
    group_privacy,
    spend,
)
from shared.protocol import DataDeclaration
from shared.settings import load_settings

DELTA = 1e-5


def _run(noise: float, n: int, batch: int, epochs: int) -> DpEvent:
    """One DP-SGD run's event: ``epochs`` expected passes over ``n`` examples, expected batch ``batch``."""
    return DpSchedule.for_epochs(noise_multiplier=noise, l2_norm_clip=1.0, examples=n, batch_size=batch,
                                 epochs=epochs).event()


@pytest.mark.parametrize(
    ("target", "n", "batch", "epochs"), [(1.0, 400, 32, 5), (4.0, 500, 64, 20), (8.0, 2000, 128, 50)]
)
def test_calibrated_noise_lands_within_one_percent_of_the_target(
    target: float, n: int, batch: int, epochs: int
) -> None:
    noise = calibrate_noise(target, DELTA, lambda sigma: _run(sigma, n, batch, epochs))
    spent = epsilon_for(_run(noise, n, batch, epochs), DELTA)
    assert 0.99 * target <= spent <= target


def test_event_json_round_trip_is_faithful() -> None:
    event = compose([_run(1.3, 500, 64, 3), _run(0.9, 500, 32, 1)])
    assert event_from_json(event_to_json(event)) == event


def test_event_json_refuses_unknown_types() -> None:
    with pytest.raises(ValueError, match="unknown DpEvent type"):
        event_from_json('{"type": "os.system"}')


def test_ledger_composes_sessions_not_sums_them(tmp_path: Path) -> None:
    ledger = PrivacyLedger(tmp_path / "ledger.db", max_epsilon=100.0, delta=DELTA)
    first, second = _run(1.1, 500, 64, 10), _run(1.1, 500, 64, 10)
    ledger.charge("S-1", first)
    ledger.charge("S-2", second)

    spent = ledger.spent()
    each = epsilon_for(first, DELTA) + epsilon_for(second, DELTA)
    assert spent < each
    assert spent == pytest.approx(epsilon_for(compose([first, second]), DELTA), rel=1e-12)
    assert ledger.spent(session_id="S-1") == pytest.approx(epsilon_for(first, DELTA))
    assert [entry.session_id for entry in ledger.entries()] == ["S-1", "S-2"]


def test_ledger_refuses_over_budget_run_with_the_numbers(tmp_path: Path) -> None:
    run = _run(1.0, 500, 64, 10)
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
    PrivacyLedger(path, max_epsilon=10.0, delta=DELTA).charge("S-1", _run(2.0, 100, 10, 1))
    reopened = PrivacyLedger(path, max_epsilon=10.0, delta=DELTA)
    assert reopened.spent() == pytest.approx(epsilon_for(_run(2.0, 100, 10, 1), DELTA))


# ----------------------------------------------------------------- PLD accounting, RDP beside it


def test_epsilon_is_the_pld_accountants_and_rdp_is_the_looser_cross_check() -> None:
    event = DpSchedule.for_epochs(noise_multiplier=1.0, l2_norm_clip=1.0, examples=125, batch_size=16,
                                  epochs=5).event()
    pld = PLDAccountant(value_discretization_interval=1e-4).compose(event).get_epsilon(DELTA)
    both = spend(event, DELTA)
    assert both.epsilon == epsilon_for(event, DELTA)
    assert pld <= both.epsilon <= pld + 1e-2  # a coarser, pessimistic grid: never below the fine one
    assert both.epsilon_rdp == pytest.approx(RdpAccountant().compose(event).get_epsilon(DELTA))
    assert both.epsilon < 0.95 * both.epsilon_rdp  # 5.92 vs 6.73: the figure used to be RDP's


def test_ledger_spends_are_pld(tmp_path: Path) -> None:
    ledger = PrivacyLedger(tmp_path / "ledger.db", max_epsilon=100.0, delta=DELTA)
    run = _run(1.0, 500, 64, 10)
    ledger.charge("S-1", run)
    assert ledger.spent() == pytest.approx(spend(run, DELTA).epsilon)
    assert ledger.spent_both().epsilon_rdp == pytest.approx(spend(run, DELTA).epsilon_rdp)
    assert ledger.spent() < ledger.spent_both().epsilon_rdp


def test_group_privacy_is_the_standard_conversion() -> None:
    assert group_privacy(0.5, 1e-6, 1) == (0.5, 1e-6)
    eps, delta = group_privacy(0.5, 1e-6, 4)
    assert eps == 2.0 and delta == pytest.approx(4 * math.exp(1.5) * 1e-6)
    spent = spend(_run(2.0, 500, 64, 3), DELTA)
    assert spent.for_patients(None) is None
    assert spent.for_patients(3) == group_privacy(spent.epsilon, DELTA, 3)


# ----------------------------------------------------------------- delta <= 1/(10 n), counts


def test_delta_above_one_tenth_over_n_is_refused_with_the_numbers() -> None:
    assert check_delta(8e-4, 125) == 8e-4
    with pytest.raises(PrivacyBudgetExceeded) as refused:
        check_delta(1e-3, 125)
    assert "0.001" in str(refused.value) and "1/(10 n) = 0.0008" in str(refused.value)
    assert "n = 125" in str(refused.value) and "0.0008" in refused.value.hint


@pytest.mark.parametrize(("n", "bucket"), [(1, 1), (7, 8), (75, 80), (100, 100), (101, 120), (125, 150),
                                           (320, 400), (1001, 1200)])
def test_counts_round_up_to_a_bucket(n: int, bucket: int) -> None:
    assert bucket_examples(n) == bucket
    assert declared_examples(n, public=True) == n and declared_examples(n, public=False) == bucket


def test_every_bucket_is_at_least_the_count_and_at_most_a_third_above() -> None:
    for n in range(1, 5000):
        assert n <= bucket_examples(n) <= max(n + 1, math.ceil(n * 4 / 3))


def test_setup_and_request_refuse_a_delta_above_one_tenth_over_n(tiny_dataset: Path, tmp_path: Path) -> None:
    settings = load_settings(home=tmp_path / "home")
    n = declared_examples(training_size(scan_dataset(tiny_dataset).counts, 0.2), public=False)
    with pytest.raises(PrivacyBudgetExceeded, match=rf"budget's delta 0.01 is above 1/\(10 n\).*n = {n}"):
        setup_site(settings, site="lab", token="t", data_root=tiny_dataset, budget_delta=0.01)
    profile = setup_site(settings, site="lab", token="t", data_root=tiny_dataset)
    dp = {"noise_multiplier": 1.0, "delta": 1.0 / (5 * n), "l2_norm_clip": 1.0}
    with pytest.raises(PrivacyBudgetExceeded, match="request's delta"):
        planned_epsilon(profile, rounds=1, local_epochs=1, dp=dp)


def test_the_declaration_sends_a_bucket_unless_the_count_is_declared_public(tiny_dataset: Path,
                                                                          tmp_path: Path) -> None:
    settings = load_settings(home=tmp_path / "home")
    n = training_size(scan_dataset(tiny_dataset).counts, 0.2)
    bucketed = setup_site(settings, site="a", token="t", data_root=tiny_dataset, max_slices_per_patient=4)
    public = setup_site(settings, site="b", token="t", data_root=tiny_dataset, count_public=True)
    assert declaration(bucketed) == {"examples": bucket_examples(n), "exact": False, "budget_epsilon": 10.0,
                                     "budget_delta": 1e-5, "slices_per_patient": 4}
    assert declaration(public)["examples"] == n and declaration(public)["exact"] is True
    assert DataDeclaration(**declaration(bucketed)).examples == bucket_examples(n)


def test_the_privacy_view_states_pld_rdp_the_unit_and_the_patient_level(tiny_dataset: Path,
                                                                       tmp_path: Path) -> None:
    settings = load_settings(home=tmp_path / "home")
    profile = setup_site(settings, site="lab", token="t", data_root=tiny_dataset, max_slices_per_patient=3)
    run = _run(2.0, 100, 16, 2)
    site_ledger(profile).charge("S-1", run)
    status = privacy_status(profile)
    assert status["spent"] == pytest.approx(spend(run, 1e-5).epsilon)
    assert status["spent_rdp"] == pytest.approx(spend(run, 1e-5).epsilon_rdp)
    assert status["unit"] == "Poisson sampling, add/remove one image"
    assert (status["patient_epsilon"], status["patient_delta"]) == group_privacy(status["spent"], 1e-5, 3)
    assert "group privacy over 3 slices" in status["patient_unit"]


def test_the_site_ledger_budget_is_the_lower_of_its_own_and_the_servers(tiny_dataset: Path,
                                                                       tmp_path: Path) -> None:
    profile = setup_site(load_settings(home=tmp_path / "home"), site="lab", token="t", data_root=tiny_dataset,
                         budget_epsilon=50.0)
    assert site_ledger(profile).max_epsilon == 50.0
    assert site_ledger(profile, {"budget_epsilon": 4.0, "budget_delta": 1e-6}).max_epsilon == 4.0
    assert site_ledger(profile, {"budget_epsilon": 4.0, "budget_delta": 1e-6}).delta == 1e-6
    assert site_ledger(profile, {"budget_epsilon": 80.0}).max_epsilon == 50.0


# ----------------------------------------------------------------- the hash-chained ledger


def _filled(tmp_path: Path) -> PrivacyLedger:
    ledger = PrivacyLedger(tmp_path / "ledger.db", max_epsilon=100.0, delta=DELTA)
    for session in ("S-1", "S-2", "S-3"):
        ledger.charge(session, _run(2.0, 500, 64, 2))
    return ledger


def test_an_edited_run_is_detected_and_nothing_more_is_charged(tmp_path: Path) -> None:
    ledger = _filled(tmp_path)
    with sqlite3.connect(ledger.path) as db:  # make the first run look cheaper
        db.execute("UPDATE privacy_events SET event_json = ? WHERE id = 1",
                   (event_to_json(_run(50.0, 500, 64, 1)),))
    with pytest.raises(LedgerTamperedError, match="altered at run 1"):
        ledger.spent()
    with pytest.raises(LedgerTamperedError):
        ledger.charge("S-4", _run(2.0, 500, 64, 1))
    with pytest.raises(LedgerTamperedError):
        PrivacyLedger(ledger.path, max_epsilon=100.0, delta=DELTA)


@pytest.mark.parametrize("where", ["first", "last"])
def test_a_removed_run_is_detected(tmp_path: Path, where: str) -> None:
    ledger = _filled(tmp_path)
    with sqlite3.connect(ledger.path) as db:
        db.execute(f"DELETE FROM privacy_events WHERE id = (SELECT {'MIN' if where == 'first' else 'MAX'}(id) "
                   "FROM privacy_events)")
    with pytest.raises(LedgerTamperedError):
        ledger.verify()


def test_a_deleted_ledger_file_is_detected(tmp_path: Path) -> None:
    ledger = _filled(tmp_path)
    for suffix in ("", "-wal", "-shm"):
        Path(f"{ledger.path}{suffix}").unlink(missing_ok=True)
    with pytest.raises(LedgerTamperedError, match=r"is gone but its anchor ledger.db.anchor records 3 run"):
        PrivacyLedger(ledger.path, max_epsilon=100.0, delta=DELTA)


def test_an_intact_ledger_verifies_and_a_legacy_one_is_chained_once(tmp_path: Path) -> None:
    assert _filled(tmp_path).verify() == 3
    legacy = tmp_path / "legacy.db"
    with sqlite3.connect(legacy) as db:  # the schema before the chain
        db.execute("CREATE TABLE privacy_events (id INTEGER PRIMARY KEY AUTOINCREMENT, session_id TEXT NOT NULL,"
                   " created_at TEXT NOT NULL, event_json TEXT NOT NULL, delta REAL NOT NULL, epsilon REAL NOT NULL)")
        db.execute("INSERT INTO privacy_events (session_id, created_at, event_json, delta, epsilon) "
                   "VALUES ('old', '2024-01-01T00:00:00+00:00', ?, 1e-5, 1.0)",
                   (event_to_json(_run(2.0, 500, 64, 2)),))
    chained = PrivacyLedger(legacy, max_epsilon=100.0, delta=DELTA)
    assert chained.verify() == 1 and [e.session_id for e in chained.entries()] == ["old"]


# ----------------------------------------------------------------- the schedule a site accepts


def _terms(**dp: object) -> RequestTerms:
    return RequestTerms.of(2, 2, {"delta": DELTA, "l2_norm_clip": 1.0, **(dp or {"noise_multiplier": 1.1})},
                           {"examples": 150})


def _round_config(schedule: DpSchedule, **overrides: object) -> dict:
    config = {"round": 1, "num_rounds": 2, "local_epochs": 2, "examples": 150, "batch_size": 16,
              **schedule.to_dict(SCHEDULE_PREFIX)}
    return {**config, **overrides}


APPROVED = DpSchedule.for_epochs(noise_multiplier=1.1, l2_norm_clip=1.0, examples=150, batch_size=16, epochs=2)


def test_the_schedule_of_the_request_is_accepted() -> None:
    assert accepted_schedule(_round_config(APPROVED), _terms()) == APPROVED


@pytest.mark.parametrize(("change", "complaint"), [
    ({"num_rounds": 3}, "3 rounds (requested 2)"),
    ({"round": 3}, "round 3 of 2"),
    ({"local_epochs": 3}, "3 local epochs (requested 2)"),
    ({"examples": 120}, "120 images (this site declared 150)"),
    ({"dp_steps": APPROVED.steps + 5}, "steps instead of"),
    ({"dp_sampling_rate": 0.5}, "steps instead of"),
    ({"dp_noise_multiplier": 0.9}, "noise multiplier 0.9 (requested 1.1)"),
    ({"dp_l2_norm_clip": 5.0}, "clip 5 (requested 1)"),
])
def test_any_other_schedule_is_refused(change: dict, complaint: str) -> None:
    with pytest.raises(PrivacyBudgetExceeded, match=re.escape(complaint)):
        accepted_schedule(_round_config(APPROVED, **change), _terms())


def test_a_target_epsilon_accepts_the_calibrated_noise_and_refuses_less() -> None:
    terms = _terms(target_epsilon=3.0)

    def schedule(noise: float) -> DpSchedule:
        return DpSchedule.for_epochs(noise_multiplier=noise, l2_norm_clip=1.0, examples=150, batch_size=16, epochs=2)

    noise = calibrate_noise(3.0, DELTA, lambda sigma: schedule(sigma).session_event(2))
    assert 0.99 * 3.0 <= epsilon_for(schedule(noise).session_event(2), DELTA) <= 3.0
    assert accepted_schedule(_round_config(schedule(noise)), terms) == schedule(noise)
    with pytest.raises(PrivacyBudgetExceeded, match="over the session"):
        accepted_schedule(_round_config(schedule(0.9 * noise)), terms)


def test_a_malformed_schedule_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="no valid DP schedule"):
        DpSchedule.from_dict({"dp_noise_multiplier": "x"}, SCHEDULE_PREFIX)
    assert DpSchedule.from_dict(APPROVED.to_dict(SCHEDULE_PREFIX), SCHEDULE_PREFIX) == APPROVED
