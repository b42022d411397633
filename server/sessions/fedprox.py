"""FedProx restricted to the sites an admin admitted to one session."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.common import (
    FitRes,
    Parameters,
    Scalar,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import FedProx
from flwr.server.strategy.aggregate import aggregate

from server.sessions.update_validation import update_problem, weighted_mean
from shared.errors import SessionFailedError
from shared.protocol import DP_ENGINES

log = logging.getLogger(__name__)

SITE_KEY = "site"
SECRET_KEY = "session_secret"
#: Metrics a site reports with every fit; averaged (weighted by examples) into the round record.
AVERAGED_METRICS = ("loss", "accuracy")
#: Privacy metrics a site reports with every fit; kept per site, never averaged across sites.
#: ``dp_engine`` is kept only when it names a known engine (it is shown to analysts).
PRIVACY_METRICS = ("epsilon", "delta", "noise_multiplier", "dp_engine")

RoundRecorder = Callable[[int, str, dict[str, Any], dict[str, dict[str, Any]]], None]
RejectionLogger = Callable[[int, str, str, str], None]


@dataclass
class _Admitted:
    """One result that passed admission: which site sent it, and its cleaned metrics."""

    proxy: ClientProxy
    result: Any
    site: str
    metrics: dict[str, Scalar] = field(default_factory=dict)


class AdmittedFedProx(FedProx):
    """FedProx (Li et al., 2020) over the results of admitted sites only.

    Each client trains on its local objective plus the proximal term ``mu/2 * ||w - w_global||^2``
    (the client adds its gradient ``mu * (w - w_global)`` after DP clipping and noise); the
    server takes the example-weighted average of the returned trainable weights, as FedAvg.

    On top of FedProx, every fit and evaluate result must name an admitted site and carry that
    site's per-session secret; results without it, duplicates, and updates with wrong shapes,
    NaN/Inf or a norm beyond ``max_update_norm`` are dropped and reported to ``on_reject``. A
    round with fewer than ``min_results`` admitted results raises ``SessionFailedError``.

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
        Sent to the clients every round (local epochs, batch size, learning rate, ...).
    min_results : int
        Admitted results a round needs to be aggregated.
    max_update_norm : float
        Largest accepted L2 distance between a site's weights and the round's global weights.
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
        min_results: int,
        max_update_norm: float,
        on_round: RoundRecorder,
        on_reject: RejectionLogger,
    ) -> None:
        count = len(participants)
        super().__init__(
            fraction_fit=1.0,  # every connected client is asked, so a stray one cannot take a slot
            fraction_evaluate=1.0,
            min_fit_clients=count,
            min_evaluate_clients=count,
            min_available_clients=count,
            initial_parameters=ndarrays_to_parameters(initial_weights),
            on_fit_config_fn=self._fit_config,
            on_evaluate_config_fn=self._fit_config,
            proximal_mu=proximal_mu,
        )
        self.participants = list(participants)
        self.verify_secret = verify_secret
        self.round_config = dict(round_config)
        self.min_results = min_results
        self.max_update_norm = max_update_norm
        self.on_round = on_round
        self.on_reject = on_reject
        self.global_weights = [np.asarray(w) for w in initial_weights]
        self.privacy_report: dict[str, dict[str, Any]] = {}
        self.last_metrics: dict[str, dict[str, Any]] = {}

    def _fit_config(self, server_round: int) -> dict[str, Scalar]:
        return {**self.round_config, "round": server_round}

    def aggregate_fit(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, FitRes]],
        failures: list[Any],
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        admitted = [
            entry
            for entry in self._admit(server_round, "fit", results)
            if self._update_is_sound(server_round, entry)
        ]
        self._require_enough(server_round, "fit", admitted, failures)
        self.global_weights = self._combine(server_round, admitted)
        parameters = ndarrays_to_parameters(self.global_weights)
        per_site = {a.site: {**a.metrics, "examples": a.result.num_examples} for a in admitted}
        for site, metrics in per_site.items():
            self.privacy_report[site] = {
                key: metrics[key] for key in (*PRIVACY_METRICS, "examples")
                if key in metrics and (key != "dp_engine" or metrics[key] in DP_ENGINES)
            }
        summary = self._summarise(admitted, lambda a: a.metrics.get("loss"))
        self.last_metrics["fit"] = summary
        self.on_round(server_round, "fit", summary, per_site)
        return parameters, summary

    def aggregate_evaluate(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, Any]],
        failures: list[Any],
    ) -> tuple[float | None, dict[str, Scalar]]:
        admitted = self._admit(server_round, "evaluate", results)
        self._require_enough(server_round, "evaluate", admitted, failures)
        per_site = {
            a.site: {**a.metrics, "loss": float(a.result.loss), "examples": a.result.num_examples}
            for a in admitted
        }
        summary = self._summarise(admitted, lambda a: a.result.loss)
        self.last_metrics["evaluate"] = summary
        self.on_round(server_round, "evaluate", summary, per_site)
        return summary["loss"], summary

    def _admit(
        self, server_round: int, phase: str, results: list[tuple[ClientProxy, Any]]
    ) -> list[_Admitted]:
        """Keep one result per admitted site that proves the session secret."""
        admitted: dict[str, _Admitted] = {}
        for proxy, result in results:
            metrics = dict(result.metrics or {})
            site = str(metrics.pop(SITE_KEY, ""))
            secret = str(metrics.pop(SECRET_KEY, ""))
            who = site or f"client {proxy.cid}"
            if site not in self.participants or not self.verify_secret(site, secret):
                self._reject(server_round, phase, who, "not admitted: missing or wrong session secret")
            elif site in admitted:
                self._reject(server_round, phase, who, "duplicate result for this site")
            else:
                admitted[site] = _Admitted(proxy, result, site, metrics)
        return list(admitted.values())

    def _update_is_sound(self, server_round: int, entry: _Admitted) -> bool:
        problem = update_problem(
            parameters_to_ndarrays(entry.result.parameters),
            self.global_weights,
            max_update_norm=self.max_update_norm,
        )
        if problem:
            self._reject(server_round, "fit", entry.site, f"update rejected: {problem}")
        return problem is None

    def _combine(self, server_round: int, admitted: list[_Admitted]) -> list[np.ndarray]:
        """The round's new global weights: the example-weighted mean of the admitted weights."""
        return aggregate(
            [(parameters_to_ndarrays(a.result.parameters), a.result.num_examples) for a in admitted]
        )

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

    @staticmethod
    def _summarise(
        admitted: list[_Admitted], loss_of: Callable[[_Admitted], Any]
    ) -> dict[str, Any]:
        """Example-weighted averages of loss and the shared metrics across admitted sites."""
        weighted = lambda value_of: weighted_mean(  # noqa: E731
            [(a.result.num_examples, float(value_of(a))) for a in admitted if value_of(a) is not None]
        )
        summary: dict[str, Any] = {
            "loss": weighted(loss_of),
            "examples": sum(a.result.num_examples for a in admitted),
            "sites": len(admitted),
        }
        for key in AVERAGED_METRICS:
            if key != "loss" and any(key in a.metrics for a in admitted):
                summary[key] = weighted(lambda a, k=key: a.metrics.get(k))
        return summary
