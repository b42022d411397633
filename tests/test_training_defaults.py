"""One set of default hyperparameters (``shared.training_defaults``) on both sides of the contract.

A site estimates what a request will cost before the admin decides; that estimate is only
the real cost if both sides assume the same batch size, and the command lines must offer the
same defaults as the code paths they call.
"""

from __future__ import annotations

from pathlib import Path

from client.menu import cli as site_cli
from client.menu.actions import setup_site
from client.training.privacy_contract import declaration, planned_event
from server.console import cli as admin_cli
from server.sessions.manager import ApprovalOptions
from server.sessions.privacy_plan import plan_sites
from server.store import Store
from shared import training_defaults
from shared.settings import load_settings

DELTA = 1e-5


def test_a_site_estimates_the_very_schedule_a_default_approval_sends(
    store: Store, sites: dict, v0, tiny_dataset: Path, tmp_path: Path
) -> None:
    profile = setup_site(load_settings(home=tmp_path / "site"), site="alpha", token=sites["alpha"],
                         data_root=tiny_dataset)
    rounds, epochs = training_defaults.ROUNDS, training_defaults.LOCAL_EPOCHS
    for dp in ({"noise_multiplier": 1.1, "delta": DELTA, "l2_norm_clip": training_defaults.L2_NORM_CLIP},
               {"target_epsilon": 3.0, "delta": DELTA, "l2_norm_clip": training_defaults.L2_NORM_CLIP}):
        estimate = planned_event(profile, rounds=rounds, local_epochs=epochs, dp=dp)
        request = store.submit_request("alpha", rounds=rounds, local_epochs=epochs, dp=dp,
                                       declaration=declaration(profile))
        [plan] = plan_sites(store, [request], rounds=rounds, local_epochs=None,
                            batch_size=ApprovalOptions().batch_size)
        assert plan.schedule.session_event(rounds) == estimate


def test_the_command_lines_offer_the_defaults_the_code_uses() -> None:
    approve = admin_cli._parser().parse_args(["approve", "REQ-1"])
    assert (approve.batch_size, approve.lr) == (ApprovalOptions().batch_size, ApprovalOptions().learning_rate)
    assert (approve.batch_size, approve.lr) == (training_defaults.BATCH_SIZE, training_defaults.LEARNING_RATE)
    request = site_cli._parser().parse_args(["--site", "alpha", "request"])
    assert (request.rounds, request.local_epochs, request.clip) == (
        training_defaults.ROUNDS, training_defaults.LOCAL_EPOCHS, training_defaults.L2_NORM_CLIP)
