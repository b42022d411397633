"""Site plans and data declarations for tests that create sessions without the session manager."""

from __future__ import annotations

from typing import Any

from server.store import Store
from server.store.records import PlannedCharge, SessionInfo
from shared.privacy_accounting import DpSchedule

DELTA = 1e-5


def declaration(examples: int, *, budget_epsilon: float = 10.0, **extra: Any) -> dict[str, Any]:
    """A site's request declaration (``protocol.DataDeclaration``) as the store keeps it."""
    return {"examples": examples, "exact": True, "budget_epsilon": budget_epsilon, "budget_delta": DELTA, **extra}


def schedule(examples: int, *, sigma: float = 1.1, batch_size: int = 4, epochs: int = 1) -> DpSchedule:
    return DpSchedule.for_epochs(noise_multiplier=sigma, l2_norm_clip=1.0, examples=examples,
                                 batch_size=batch_size, epochs=epochs)


def site_plan(request_id: int, examples: int, *, rounds: int, sigma: float = 1.1, batch_size: int = 4,
              epochs: int = 1) -> dict[str, Any]:
    """An entry of ``session.config["sites"]`` as ``privacy_plan.SitePlan.config`` writes it."""
    return {"request_id": request_id, "rounds": rounds, "local_epochs": epochs, "examples": examples,
            "batch_size": batch_size, "budget_epsilon": 10.0, "budget_delta": DELTA, "allow_no_dp": False,
            "schedule": schedule(examples, sigma=sigma, batch_size=batch_size, epochs=epochs).to_dict()}


def charged_session(store: Store, examples: dict[str, int], *, rounds: int, config: dict[str, Any] | None = None,
                    sigma: float = 1.1, batch_size: int = 4, engines: dict[str, str] | None = None) -> SessionInfo:
    """One request per site (with its declaration), approved into one session the ledger charged."""
    engines = engines or {}
    requests = {site: store.submit_request(site, rounds=rounds, local_epochs=1, note=site,
                                           dp={"noise_multiplier": sigma, "delta": DELTA, "l2_norm_clip": 1.0,
                                               "engine": engines.get(site, "dp-model")},
                                           declaration=declaration(n)).id
                for site, n in examples.items()}
    plans = {site: site_plan(requests[site], n, rounds=rounds, sigma=sigma, batch_size=batch_size)
             for site, n in examples.items()}
    charges = [PlannedCharge(site, requests[site], DpSchedule.from_dict(plans[site]["schedule"]), rounds, n)
               for site, n in examples.items()]
    full = {"rounds": rounds, "local_epochs": 1, "batch_size": batch_size, "sites": plans, **(config or {})}
    return store.create_session_charged(list(requests.values()), charges, config=full)
