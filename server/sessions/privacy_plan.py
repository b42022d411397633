"""At approval, decide each site's DP schedule from public inputs only, and what each site is sent.

For every approved request the server fixes, before anything trains:

- rounds: the session's, which may not exceed what *any* of its requests asked for (a joint
  session used to take the largest; now a site never trains more rounds than it requested);
- local epochs: the site's own request, capped by the admin's choice (never more);
- the sampling rate ``q = batch_size / n`` and ``steps = ceil(epochs / q)`` per round, with ``n``
  the count the site declared (exact if it declared it public, else rounded up to a bucket);
- sigma: the request's noise multiplier, or the one (PLD calibration) whose whole session
  (``rounds`` runs of the schedule) spends the request's target epsilon at its delta.

None of these reveal more about the site's data than the declared count. The plan goes into the
session config (``sites``), the server's privacy ledger charges it, each site's ticket carries
only its own entry, and every round's fit config carries it as ``dp_*`` keys (``fit_config``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from server.store import Store
from server.store.records import PlannedCharge, RequestInfo
from shared.errors import ConfigError
from shared.privacy_accounting import SCHEDULE_PREFIX, DpSchedule, calibrate_noise
from shared.protocol import DEFAULT_DP_ENGINE

if TYPE_CHECKING:  # flwr's package import pulls in TensorFlow; the admin's commands need neither
    from flwr.common import Scalar


@dataclass(frozen=True)
class SitePlan:
    """One site's part of an approved session."""

    site: str
    request_id: int
    rounds: int
    local_epochs: int
    examples: int
    batch_size: int
    schedule: DpSchedule
    budget_epsilon: float
    budget_delta: float
    allow_no_dp: bool

    def config(self) -> dict[str, Any]:
        """The entry of ``session.config["sites"]``: what this site's ticket and rounds carry."""
        return {"request_id": self.request_id, "rounds": self.rounds, "local_epochs": self.local_epochs,
                "examples": self.examples, "batch_size": self.batch_size, "schedule": self.schedule.to_dict(),
                "budget_epsilon": self.budget_epsilon, "budget_delta": self.budget_delta,
                "allow_no_dp": self.allow_no_dp}

    def charge(self) -> PlannedCharge:
        return PlannedCharge(self.site, self.request_id, self.schedule, self.rounds, self.examples)


def session_rounds(requests: list[RequestInfo], chosen: int | None) -> int:
    """The admin's rounds, or the fewest any request asked for; more than a request asked is refused."""
    fewest = min(requests, key=lambda r: r.rounds)
    if chosen is None:
        return fewest.rounds
    if chosen < 1 or chosen > fewest.rounds:
        raise ConfigError(
            f"a session cannot run {chosen} round(s): {fewest.label} ({fewest.site}) asked for {fewest.rounds}",
            hint=f"Approve at most {fewest.rounds} round(s), or approve {fewest.label} in a session of its own.",
        )
    return chosen


def plan_sites(
    store: Store, requests: list[RequestInfo], *, rounds: int, local_epochs: int | None, batch_size: int,
) -> list[SitePlan]:
    """Each request's site plan; a request without a data declaration cannot be planned."""
    return [_plan(store, request, rounds=rounds, local_epochs=local_epochs, batch_size=batch_size)
            for request in requests]


def _plan(store: Store, request: RequestInfo, *, rounds: int, local_epochs: int | None,
          batch_size: int) -> SitePlan:
    declaration = request.declaration
    if not declaration.get("examples"):
        raise ConfigError(f"{request.label} ({request.site}) declares no training-image count, so no DP "
                          "schedule can be planned for it",
                          hint="Reject it; the site sends it again with a current fl-client.")
    examples = int(declaration["examples"])
    epochs = min(local_epochs or request.local_epochs, request.local_epochs)
    dp = request.dp
    clip = float(dp["l2_norm_clip"])

    def schedule(noise: float) -> DpSchedule:
        return DpSchedule.for_epochs(noise_multiplier=noise, l2_norm_clip=clip, examples=examples,
                                     batch_size=batch_size, epochs=epochs)

    if dp.get("noise_multiplier") is not None:
        noise = float(dp["noise_multiplier"])
    else:
        noise = calibrate_noise(float(dp["target_epsilon"]), float(dp["delta"]),
                                lambda sigma: schedule(sigma).session_event(rounds))
    budget = store.site_budget(request.site, declaration)
    return SitePlan(site=request.site, request_id=request.id, rounds=rounds, local_epochs=epochs,
                    examples=examples, batch_size=batch_size, schedule=schedule(noise),
                    budget_epsilon=budget.epsilon, budget_delta=budget.delta,
                    allow_no_dp=store.get_site(request.site).allow_no_dp)


def fit_config(plan: dict[str, Any]) -> dict[str, Scalar]:
    """The per-site keys of every round's fit config, from a ``SitePlan.config()`` entry."""
    schedule = DpSchedule.from_dict(plan["schedule"])
    return {"local_epochs": int(plan["local_epochs"]), "examples": int(plan["examples"]),
            **schedule.to_dict(SCHEDULE_PREFIX)}


def privacy_summary(store: Store, session_id: int, sites: list[str]) -> dict[str, dict[str, Any]]:
    """A version's ``dp_summary``: per contributing site, what the server's ledger charged for the session.

    ``epsilon`` is the whole session's (all approved rounds, PLD at ``delta``; None: no DP),
    ``total_epsilon`` the site's ledger composed up to and including it; ``dp_engine`` the DP
    engine the site's request named (a declaration, checked against the known engines on arrival).
    """
    return {
        charge.site: {
            "epsilon": charge.epsilon, "epsilon_rdp": charge.epsilon_rdp, "delta": charge.delta,
            "total_epsilon": charge.total_epsilon, "rounds": charge.rounds, "examples": charge.examples,
            **charge.schedule, "slices_per_patient": charge.slices_per_patient,
            "dp_engine": store.get_request(charge.request_id).dp.get("engine", DEFAULT_DP_ENGINE),
        }
        for charge in store.privacy_charges(session_id=session_id)
        if charge.site in sites
    }
