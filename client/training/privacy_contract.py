"""The site's side of the privacy contract: what it declares, and which schedules it accepts.

Declared with every request (``protocol.DataDeclaration``): the training-image count, exact
only when the profile declares it public (``count_public``), otherwise rounded up to a bucket
(``shared.privacy_accounting.bucket_examples``); the site's own budget; the most slices per
patient. The server plans sampling rate, steps and noise from that count alone, so nothing it
sends back or shows reveals the exact count.

Accepted at every round (:func:`accepted_schedule`): the schedule must be exactly the one the
request and the public inputs determine (count, batch size, epochs, clip), for no more rounds or
epochs than requested, and its noise must be the requested multiplier or spend at most the
requested target epsilon over the session; the ledger then checks the budget. Anything else is
refused before a single step trains.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import dp_accounting

from client.site_profile import SiteProfile
from client.training.ledger import PrivacyLedger
from shared import training_defaults
from shared.dataset_layout import scan_dataset, training_size
from shared.errors import PrivacyBudgetExceeded
from shared.privacy_accounting import (
    SCHEDULE_PREFIX,
    DpSchedule,
    calibrate_noise,
    check_delta,
    declared_examples,
    epsilon_for,
)

#: Share of each class kept for local validation (``load_site_data``'s default).
VALIDATION_FRACTION = 0.2
#: Batch size assumed when a request's privacy cost is estimated before the admin decides: the
#: server's default, so the estimate is the schedule an approval with defaults sends.
PLANNING_BATCH_SIZE = training_defaults.BATCH_SIZE


def training_count(profile: SiteProfile) -> int:
    """The site's training images, counted the way the loader splits them."""
    return training_size(scan_dataset(profile.data_root).counts, VALIDATION_FRACTION)


def declaration(profile: SiteProfile, n_train: int | None = None) -> dict[str, Any]:
    """What a request declares: the count (exact or bucketed), the site's budget, slices per patient."""
    n = training_count(profile) if n_train is None else n_train
    return {"examples": declared_examples(n, public=profile.count_public), "exact": profile.count_public,
            "budget_epsilon": profile.budget_epsilon, "budget_delta": profile.budget_delta,
            **({"slices_per_patient": profile.max_slices_per_patient} if profile.max_slices_per_patient else {})}


def check_deltas(profile: SiteProfile, *, request_delta: float | None = None, n_train: int | None = None) -> int:
    """delta <= 1/(10 n) for the budget's delta (at setup) and a request's (at request); returns n.

    n is the count the site declares (its bucket is at least the real count, so the rule for it
    is the stricter one), the same figure the server checks.
    """
    n = declaration(profile, n_train)["examples"]
    check_delta(profile.budget_delta, n, what="the budget's delta")
    if request_delta is not None:
        check_delta(request_delta, n, what="the request's delta")
    return n


def planned_event(profile: SiteProfile, *, rounds: int, local_epochs: int, dp: Mapping[str, Any]) -> dp_accounting.DpEvent:
    """The session a request would cost, planned like the server would with ``PLANNING_BATCH_SIZE``."""
    examples = check_deltas(profile, request_delta=float(dp["delta"]))

    def schedule(noise: float) -> DpSchedule:
        return DpSchedule.for_epochs(noise_multiplier=noise, l2_norm_clip=float(dp["l2_norm_clip"]),
                                     examples=examples, batch_size=PLANNING_BATCH_SIZE, epochs=local_epochs)

    noise = dp.get("noise_multiplier")
    if noise is None:
        noise = calibrate_noise(float(dp["target_epsilon"]), float(dp["delta"]),
                                lambda sigma: schedule(sigma).session_event(rounds))
    return schedule(float(noise)).session_event(rounds)


def site_ledger(profile: SiteProfile, plan: Mapping[str, Any] | None = None) -> PrivacyLedger:
    """The site's ledger under its effective budget: the lower of its own and what the server enforces.

    ``plan`` is the site's entry of a session ticket (``budget_*``, ``allow_no_dp``, granted by
    the admin at enrolment); without one the site's own budget applies and no-DP is refused.
    """
    plan = plan or {}
    return PrivacyLedger(
        profile.ledger_path,
        max_epsilon=min(profile.budget_epsilon, float(plan.get("budget_epsilon", math.inf))),
        delta=min(profile.budget_delta, float(plan.get("budget_delta", 1.0))),
        allow_no_dp=bool(plan.get("allow_no_dp", False)),
    )


@dataclass(frozen=True)
class RequestTerms:
    """What the site asked for in the request a session was approved from."""

    rounds: int
    local_epochs: int
    dp: Mapping[str, Any]
    examples: int

    @classmethod
    def of(cls, rounds: int, local_epochs: int, dp: Mapping[str, Any], declared: Mapping[str, Any]) -> RequestTerms:
        return cls(rounds, local_epochs, dict(dp), int(declared.get("examples", 0)))


def accepted_schedule(config: Mapping[str, Any], terms: RequestTerms) -> DpSchedule:
    """The round's schedule if it is the one ``terms`` allow; ``PrivacyBudgetExceeded`` otherwise."""
    schedule = DpSchedule.from_dict(config, SCHEDULE_PREFIX)
    rounds, epochs = int(config["num_rounds"]), int(config["local_epochs"])
    examples, batch = int(config["examples"]), int(config["batch_size"])
    problems = [
        f"{rounds} rounds (requested {terms.rounds})" if rounds > terms.rounds else "",
        f"round {config['round']} of {rounds}" if int(config["round"]) > rounds else "",
        f"{epochs} local epochs (requested {terms.local_epochs})" if epochs > terms.local_epochs else "",
        f"{examples} images (this site declared {terms.examples})" if examples != terms.examples else "",
        _derivation_problem(schedule, examples=examples, batch=batch, epochs=epochs),
        _noise_problem(schedule, terms, rounds),
    ]
    problems = [p for p in problems if p]
    if problems:
        raise PrivacyBudgetExceeded(f"refusing the server's DP schedule: {'; '.join(problems)}",
                                    hint="The schedule does not match this site's request; ask the admin.")
    return schedule


def _derivation_problem(schedule: DpSchedule, *, examples: int, batch: int, epochs: int) -> str:
    """The sampling rate and steps must follow from the public inputs (nothing hidden in them)."""
    expected = DpSchedule.for_epochs(noise_multiplier=schedule.noise_multiplier, l2_norm_clip=schedule.l2_norm_clip,
                                     examples=examples, batch_size=batch, epochs=epochs)
    if (schedule.steps, schedule.sampling_rate) != (expected.steps, expected.sampling_rate):
        return (f"q {schedule.sampling_rate:.5g} and {schedule.steps} steps instead of q "
                f"{expected.sampling_rate:.5g} and {expected.steps} steps for {epochs} epochs")
    return ""


def _noise_problem(schedule: DpSchedule, terms: RequestTerms, rounds: int) -> str:
    dp = terms.dp
    if not math.isclose(schedule.l2_norm_clip, float(dp["l2_norm_clip"]), rel_tol=1e-9):
        return f"clip {schedule.l2_norm_clip:g} (requested {float(dp['l2_norm_clip']):g})"
    if dp.get("noise_multiplier") is not None:
        if not math.isclose(schedule.noise_multiplier, float(dp["noise_multiplier"]), rel_tol=1e-9, abs_tol=1e-12):
            return f"noise multiplier {schedule.noise_multiplier:g} (requested {float(dp['noise_multiplier']):g})"
        return ""
    target, delta = float(dp["target_epsilon"]), float(dp["delta"])
    spent = epsilon_for(schedule.session_event(rounds), delta)
    if spent > target * (1 + 1e-9):
        return f"epsilon {spent:.4g} over the session (requested at most {target:g} at delta {delta:g})"
    return ""
