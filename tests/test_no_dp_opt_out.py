"""Training without DP (noise 0) exists only for sites that explicitly opt out of a budget."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from pydantic import ValidationError

from client.menu.actions import planned_epsilon, setup_site
from client.training.ledger import PrivacyLedger
from shared.errors import PrivacyBudgetExceeded
from shared.privacy_accounting import dp_sgd_event
from shared.protocol import DpSpec
from shared.settings import load_settings

NO_NOISE = dp_sgd_event(0.0, 100, 16, 1)


def test_the_wire_accepts_noise_zero_but_not_negative_noise() -> None:
    assert DpSpec(noise_multiplier=0, delta=1e-5, l2_norm_clip=1.0).noise_multiplier == 0
    with pytest.raises(ValidationError):
        DpSpec(noise_multiplier=-0.1, delta=1e-5, l2_norm_clip=1.0)


def test_a_default_ledger_refuses_a_run_without_noise(tmp_path: Path) -> None:
    ledger = PrivacyLedger(tmp_path / "l.sqlite", max_epsilon=1e6, delta=1e-5)
    with pytest.raises(PrivacyBudgetExceeded):
        ledger.charge("s1", NO_NOISE)
    assert ledger.entries() == []


def test_an_opted_out_ledger_records_it_and_has_no_finite_guarantee_afterwards(tmp_path: Path) -> None:
    ledger = PrivacyLedger(tmp_path / "l.sqlite", max_epsilon=10, delta=1e-5, allow_no_dp=True)
    assert math.isinf(ledger.charge("s1", NO_NOISE))
    assert math.isinf(ledger.spent()) and ledger.remaining() == 0
    with pytest.raises(PrivacyBudgetExceeded):  # no DP run fits a budget after a non-private one
        ledger.charge("s2", dp_sgd_event(5.0, 100, 16, 1))


@pytest.mark.parametrize("opted_out", [False, True])
def test_a_request_without_noise_needs_the_profile_opt_out(tiny_dataset: Path, tmp_path: Path,
                                                           opted_out: bool) -> None:
    profile = setup_site(load_settings(home=tmp_path / "home"), site="lab", token="t", data_root=tiny_dataset,
                         allow_no_dp=opted_out)
    dp = {"noise_multiplier": 0.0, "delta": 1e-5, "l2_norm_clip": 1.0}
    if opted_out:
        assert math.isinf(planned_epsilon(profile, rounds=1, local_epochs=1, dp=dp))
    else:
        with pytest.raises(PrivacyBudgetExceeded, match="without noise"):
            planned_epsilon(profile, rounds=1, local_epochs=1, dp=dp)
