"""FedProx restricted to the sites an admin admitted to one session, each on its own approved DP schedule.

What the server keeps of a round is only what is outside the sites' data: which sites sent an
admitted update and the example counts approved for them (declared public or bucketed). Whatever
else a site puts in its fit metrics (training loss or accuracy, an older client's epsilon) is
dropped unread, and there is no evaluate round: validation metrics would leave the sites in the
clear, outside the DP accountant, so a session is shown as "not evaluated". ``SecureFedProx``
adds one, whose metrics leave the sites only inside a masked sum.

No site steers the combination by what it claims: a site weighs in with the count approved for
it (capped at ``weight_cap``, as in a secure round), a robust rule gives each site one vote
(``aggregation_rule``), and the combined update must pass the same norm bound as each site's.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from flwr.common import (
    EvaluateIns,
    FitIns,
    FitRes,
    Parameters,
    Scalar,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import FedProx
from flwr.server.strategy.aggregate import aggregate, aggregate_median, aggregate_trimmed_avg

from server.sessions.admission import AdmissionClientManager
from server.sessions.aggregation_rule import AggregationRule, Aggregator
from server.sessions.merge import Rebased
from server.sessions.update_bound import honest_update_bound
from server.sessions.update_validation import update_problem
from shared import secagg_protocol
from shared.errors import SessionFailedError
from shared.privacy_accounting import SCHEDULE_PREFIX, DpSchedule

log = logging.getLogger(__name__)

SITE_KEY = "site"
SECRET_KEY = "session_secret"

RoundRecorder = Callable[[int, str, dict[str, Any], dict[str, dict[str, Any]]], None]
RejectionLogger = Callable[[int, str, str, str], None]


@dataclass
class _Admitted:
    """One result that passed admission: which site sent it."""

    proxy: ClientProxy
    result: Any
    site: str
    _weights: list[np.ndarray] | None = None

    @property
    def weights(self) -> list[np.ndarray]:
        """The result's arrays, deserialised once: validation and aggregation both read them."""
        if self._weights is None:
            self._weights = parameters_to_ndarrays(self.result.parameters)
        return self._weights


class AdmittedFedProx(FedProx):
    """FedProx (Li et al., 2020) over the results of admitted sites only.

    Each client trains on its local objective plus the proximal term ``mu/2 * ||w - w_global||^2``
    (the client adds its gradient ``mu * (w - w_global)`` after DP clipping and noise); the
    server takes the example-weighted average of the returned trainable weights, as FedAvg, with
    each site's approved count (capped at ``weight_cap``) as its weight; or, with a robust
    ``rule``, the coordinate-wise median or trimmed mean, one vote per site.

    On top of FedProx, every fit result must name an admitted site and carry that site's
    per-session secret; results without it, duplicates, results whose example count is not the
    one approved for the site, and updates with wrong shapes, NaN/Inf or a norm beyond the
    site's bound (``norm_bound``) are dropped and reported to ``on_reject``. A round with fewer
    than ``min_results`` admitted results, or whose combined update is beyond the largest of the
    admitted sites' bounds, raises ``SessionFailedError``. Each site's fit config adds its own entry of
    ``site_configs`` (local epochs, approved count, DP schedule) to the round's.

    Parameters
    ----------
    participants : list[str]
        Sites admitted to the session.
    verify_secret : Callable[[str, str], bool]
        ``(site, secret) -> bool``, checked in constant time by the store.
    initial_weights : list[np.ndarray]
        The trainable weights of the head version the session starts from.
    proximal_mu : float
        Weight of the proximal term; 0 makes this FedAvg.
    round_config : dict
        Sent to the clients every round (batch size, learning rate, ...).
    site_configs : dict[str, dict]
        Per site, added to its fit config: ``local_epochs``, ``examples`` (approved count) and the
        ``dp_*`` schedule keys (``server.sessions.privacy_plan.fit_config``).
    min_results : int
        Admitted results a round needs to be aggregated.
    max_update_norm : float | None
        Largest accepted L2 distance between a site's weights (and the combined weights) and the
        round's global weights; None: per site, how far its approved schedule lets an honest
        round go (``server.sessions.update_bound``, with ``round_config["learning_rate"]``).
    rule : AggregationRule
        How the admitted weights are combined (default: the FedProx weighted mean).
    weight_cap : int
        A site's weight is its approved count up to this (the secure rounds' cap, so both agree).
    on_round : RoundRecorder
        ``(round, phase, aggregated_metrics, per_site_metrics)``, called as rounds complete.
    on_reject : RejectionLogger
        ``(round, phase, who, reason)`` for every dropped result.
    """

    def __init__(
        self,
        *,
        participants: list[str],
        verify_secret: Callable[[str, str], bool],
        initial_weights: list[np.ndarray],
        proximal_mu: float,
        round_config: dict[str, Scalar],
        site_configs: dict[str, dict[str, Scalar]],
        min_results: int,
        max_update_norm: float | None,
        on_round: RoundRecorder,
        on_reject: RejectionLogger,
        rule: AggregationRule | None = None,
        weight_cap: int = secagg_protocol.DEFAULT_WEIGHT_CAP,
    ) -> None:
        count = len(participants)
        super().__init__(
            fraction_fit=1.0,  # every connected client is asked, so a stray one cannot take a slot
            fraction_evaluate=0.0,  # see configure_evaluate
            min_fit_clients=count,
            min_available_clients=count,
            initial_parameters=ndarrays_to_parameters(initial_weights),
            on_fit_config_fn=self._fit_config,
            proximal_mu=proximal_mu,
        )
        self.participants = list(participants)
        self.verify_secret = verify_secret
        self.round_config = dict(round_config)
        self.site_configs = {site: dict(config) for site, config in site_configs.items()}
        missing = sorted(set(participants) - set(self.site_configs))
        if missing:
            raise SessionFailedError(f"no approved DP schedule for site(s) {', '.join(missing)}")
        self.min_results = min_results
        self.max_update_norm = max_update_norm
        self.rule = rule or AggregationRule()
        self.weight_cap = weight_cap
        self.on_round = on_round
        self.on_reject = on_reject
        self.global_weights = [np.asarray(w) for w in initial_weights]
        self.contributors: set[str] = set()
        self.last_metrics: dict[str, dict[str, Any]] = {}
        #: The weights ``last_metrics["evaluate"]`` scored in the last round; a plain session scores none.
        self.evaluated: Rebased | None = None

    def _fit_config(self, server_round: int) -> dict[str, Scalar]:
        return {**self.round_config, "round": server_round}

    def configure_fit(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, FitIns]]:
        """FedProx's instructions, each with its own site's epochs, count and DP schedule."""
        if not isinstance(client_manager, AdmissionClientManager):
            raise TypeError("per-site configs need the AdmissionClientManager's site of each client")
        site_of = client_manager.site_of
        return [
            (proxy, FitIns(ins.parameters, {**ins.config, **self.site_configs[site_of[proxy.cid]]}))
            for proxy, ins in super().configure_fit(server_round, parameters, client_manager)
            if site_of.get(proxy.cid) in self.site_configs
        ]

    def configure_evaluate(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, EvaluateIns]]:
        """No evaluate round: validation metrics would leave the sites in the clear."""
        return []

    def aggregate_fit(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, FitRes]],
        failures: list[Any],
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        admitted = [
            entry
            for entry in self._admit(server_round, "fit", results)
            if self._count_is_approved(server_round, entry) and self._update_is_sound(server_round, entry)
        ]
        self._require_enough(server_round, "fit", admitted, failures)
        combined = self._combine(server_round, admitted)
        self._check_aggregate(server_round, combined, [a.site for a in admitted])
        self.global_weights = combined
        parameters = ndarrays_to_parameters(self.global_weights)
        per_site = {a.site: {"examples": a.result.num_examples} for a in admitted}
        self.contributors.update(per_site)
        summary = {"examples": sum(a.result.num_examples for a in admitted), "sites": len(admitted)}
        self.last_metrics["fit"] = summary
        self.on_round(server_round, "fit", summary, per_site)
        return parameters, dict(summary)

    def _admit(
        self, server_round: int, phase: str, results: list[tuple[ClientProxy, Any]]
    ) -> list[_Admitted]:
        """Keep one result per admitted site that proves the session secret."""
        admitted: dict[str, _Admitted] = {}
        for proxy, result in results:
            metrics = result.metrics or {}
            site = str(metrics.get(SITE_KEY, ""))
            secret = str(metrics.get(SECRET_KEY, ""))
            who = site or f"client {proxy.cid}"
            if site not in self.participants or not self.verify_secret(site, secret):
                self._reject(server_round, phase, who, "not admitted: missing or wrong session secret")
            elif site in admitted:
                self._reject(server_round, phase, who, "duplicate result for this site")
            else:
                admitted[site] = _Admitted(proxy, result, site)
        return list(admitted.values())

    def _count_is_approved(self, server_round: int, entry: _Admitted) -> bool:
        """A site weighs in with the count approved for it (declared or bucketed), nothing else."""
        approved = int(self.site_configs[entry.site]["examples"])
        if entry.result.num_examples != approved:
            self._reject(server_round, "fit", entry.site,
                         f"example count {entry.result.num_examples} is not the approved {approved}")
        return entry.result.num_examples == approved

    def _update_is_sound(self, server_round: int, entry: _Admitted) -> bool:
        problem = update_problem(
            entry.weights,
            self.global_weights,
            max_update_norm=self.norm_bound(entry.site),
        )
        if problem:
            self._reject(server_round, "fit", entry.site, f"update rejected: {problem}")
        return problem is None

    def norm_bound(self, site: str) -> float:
        """The admin's fixed bound, else how far ``site``'s approved schedule lets an honest update go.

        A mean of updates within their bounds is within the largest, so that bounds the aggregate."""
        if self.max_update_norm is not None:
            return self.max_update_norm
        config = self.site_configs[site]
        return honest_update_bound(DpSchedule.from_dict(config, SCHEDULE_PREFIX), examples=int(config["examples"]),
                                   learning_rate=float(self.round_config["learning_rate"]),
                                   trainable_values=sum(w.size for w in self.global_weights))

    def weight(self, site: str) -> int:
        """A site's weight in the mean: its approved count, capped (never a count it claims)."""
        return min(int(self.site_configs[site]["examples"]), self.weight_cap)

    def _combine(self, server_round: int, admitted: list[_Admitted]) -> list[np.ndarray]:
        """The round's new global weights: the session's rule over the admitted weights."""
        results = [(a.weights, self.weight(a.site)) for a in admitted]
        if self.rule.aggregator is Aggregator.MEDIAN:
            combined = aggregate_median(results)
        elif self.rule.aggregator is Aggregator.TRIMMED_MEAN:
            combined = aggregate_trimmed_avg(results, self.rule.trim_fraction or 0.0)
        else:
            combined = aggregate(results)
        return [np.asarray(c).astype(g.dtype) for c, g in zip(combined, self.global_weights)]

    def _check_aggregate(self, server_round: int, combined: list[np.ndarray], sites: list[str]) -> None:
        """The combined update is bounded like each site's: a round that moves further fails."""
        bound = max(self.norm_bound(site) for site in sites)
        problem = update_problem(combined, self.global_weights, max_update_norm=bound)
        if problem:
            raise SessionFailedError(f"round {server_round}: the aggregate update is rejected ({problem})")

    def _reject(self, server_round: int, phase: str, who: str, reason: str) -> None:
        log.warning("round %d %s: dropped result from %s (%s)", server_round, phase, who, reason)
        self.on_reject(server_round, phase, who, reason)

    def _require_enough(
        self, server_round: int, phase: str, admitted: list[_Admitted], failures: list[Any]
    ) -> None:
        if len(admitted) >= self.min_results:
            return
        missing = sorted(set(self.participants) - {a.site for a in admitted})
        raise SessionFailedError(
            f"round {server_round} {phase}: {len(admitted)} valid result(s) from admitted sites, "
            f"{self.min_results} needed (missing: {', '.join(missing) or 'none'}; "
            f"{len(failures)} client failure(s))"
        )
