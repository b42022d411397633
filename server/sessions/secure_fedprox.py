"""FedProx over admitted sites where the server learns only sums: of updates, and of validation metrics."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from flwr.common import EvaluateIns, FitIns, Parameters, Scalar, ndarrays_to_parameters
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import FedProx

from server.sessions.admission import AdmissionClientManager
from server.sessions.fedprox import AdmittedFedProx, _Admitted
from server.sessions.merge import Rebased
from server.sessions.secure_aggregation import SecureAggregationRound
from shared import secagg_masking as masking
from shared import secagg_protocol as proto
from shared.errors import SessionFailedError
from shared.secagg_graph import neighbourhood_size


class SecureFedProx(AdmittedFedProx):
    """``AdmittedFedProx`` with secure aggregation (SecAgg+: Bonawitz et al. 2017, Bell et al. 2020).

    Every round runs these stages over the session's own Flower connections (fields in
    ``shared.secagg_protocol``; who neighbours whom in ``shared.secagg_graph``):

    0. *setup* (``get_properties``): each sampled site checks the round's parameters against its
       ticket and local policy, makes fresh X25519 keys (one to encrypt messages to other sites,
       one mask key per slot) and a random self-mask seed per slot, and answers the public keys
       signed with its registered Ed25519 identity key.
    1. *share keys* (``get_properties``): the server relays to each site its neighbours' signed
       keys; each site checks the signatures, splits its seeds and mask keys into Shamir shares
       among its neighbourhood (``threshold`` of them rebuild a secret), and encrypts each
       neighbour's shares to it (X25519 + HKDF -> Fernet).
    2. *mask* (``fit``): the server relays the encrypted shares with the round's fit config
       (weights, FedProx ``proximal_mu``, ...). The site trains with DP-SGD + FedProx as in a
       plain round, then sends ``w * quantize(clip(w_new - w_global))`` in Z_(2^32), ``w`` its
       example count capped at ``weight_cap``, followed by the extras in Z_(2^64) (``w`` and the
       count first), each plus ``PRG(b) +- PRG(s_uv)`` over its neighbours.
    3. *unmask* (``get_properties``): the server names each survivor's surviving and dropped
       neighbours; it reveals its shares of the survivors' seeds and of the dropped sites' mask
       keys. The server removes every mask from the sum, divides by the summed weight and
       dequantises: the new global weights are the example-weighted FedAvg mean (counts capped
       at ``weight_cap``), within ``2 * clip_range / levels`` per coordinate, where
       ``levels = levels_for(sites, weight_cap)`` is the most that fits in 32 bits.
    4. *mask evaluate* (``evaluate``): each site evaluates the new weights and sends only
       ``EVALUATE_EXTRAS`` (validation count, correct predictions, loss sum), masked with the
       evaluate slot's secrets, shared in stage 1. In the last round the weights evaluated are
       the version-to-be: ``rebase_final`` merges the result into the head when another session
       committed since this one started (``server.sessions.merge``), so a merge version's
       validation metrics are its own; ``evaluated`` says what was scored.
    5. *unmask evaluate*: as 3, for the evaluate slot; the round's validation loss and accuracy
       come from these sums. No per-site validation metric is ever seen.

    A masked vector cannot be norm-checked on its own: what bounds one honest site's influence is
    the clipping of each coordinate of its update to ``+-clip_range`` before quantisation, and
    the server checks the *aggregate* update (finite, norm within the largest of the summed
    sites' bounds); a rejected aggregate fails the round. The weight and count summed inside the mask must equal
    the admitted sites' approved ones (capped), or the round fails: a site cannot claim a larger
    or negative weight. Sites that misreport by amounts that cancel out (colluders) are not
    caught by that, and a dishonest site can still send any vector (nothing proves its range,
    or that it scaled its update by the weight it declares): only the aggregate's norm bounds
    it. A stage that leaves fewer than ``threshold`` sites in a neighbourhood, or survivors cut
    into groups with no mask between them, fails the round with a ``SessionFailedError``
    naming it.

    Trust model: an honest-but-curious server, together with fewer than ``threshold`` colluding
    sites in any neighbourhood, learns of an honest site's update only what the sum reveals.
    Sites refuse peers their ticket does not name and keys their peers did not sign, so a server
    that relays faithfully cannot be bypassed by anyone on the path; a server that lies in the
    tickets themselves (it is the registry of identity keys) is not stopped (see README).

    Parameters
    ----------
    identity_keys : Mapping[str, Ed25519PublicKey]
        The registered identity key of each participant.
    threshold : int | None
        Shares needed to rebuild a secret; default ``ceil(2k/3)`` of a neighbourhood of ``k``. It
        must exceed half the neighbourhood, so two disjoint groups of sites can never be asked
        for the two different secrets of one site (which together would unmask it).
    clip_range : float
        Bound of each coordinate of a site's update (new weights - global weights).
    stage_timeout_s : float
        How long a stage waits for a site before counting it as dropped.
    rebase_final : Callable[[list[np.ndarray]], Rebased]
        The final global weights as the next version would hold them (merged into a moved head);
        what the last round evaluates.
    **kwargs
        As ``AdmittedFedProx`` (participants, verify_secret, initial_weights, proximal_mu, ...);
        ``round_config`` must hold ``session_id`` and ``num_rounds``. Its ``weight_cap`` (a
        site's weight in the mean is its approved count up to this) and the number of sites fix
        the quantisation levels of a round (``shared.secagg_protocol.levels_for``).
    """

    def __init__(
        self,
        *,
        identity_keys: Mapping[str, Ed25519PublicKey],
        threshold: int | None = None,
        clip_range: float = proto.DEFAULT_CLIP_RANGE,
        stage_timeout_s: float,
        rebase_final: Callable[[list[np.ndarray]], Rebased],
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if self.rule.robust:
            raise SessionFailedError(f"the {self.rule.aggregator.value} aggregator cannot run under secure "
                                     "aggregation: the server sees only the sum")
        self.fraction_evaluate = 1.0  # validation metrics leave the sites only inside the evaluate sum
        count = len(self.participants)
        self.identity_keys = dict(identity_keys)
        self.threshold = proto.check_threshold(threshold or proto.default_threshold(count), count)
        self.clip_range = clip_range
        self.stage_timeout_s = stage_timeout_s
        self.session_id = int(self.round_config["session_id"])
        self.num_rounds = int(self.round_config["num_rounds"])
        self.rebase_final = rebase_final
        self._round: SecureAggregationRound | None = None
        self._scoring: Rebased | None = None
        #: The extras' sums of the latest unmasked vector of each slot (``FIT_EXTRAS``, ``EVALUATE_EXTRAS``).
        self.last_sums: dict[str, dict[str, float]] = {}

    def configure_fit(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, FitIns]]:
        """Sample as FedProx, then run stages 0-1 and add each site's relayed shares to its fit."""
        site_of = self._sites(client_manager)
        instructions = super().configure_fit(server_round, parameters, client_manager)
        proxies = {site_of[proxy.cid]: proxy for proxy, _ in instructions}
        # A smaller round has a smaller (never larger) neighbourhood: the threshold shrinks with it
        # but stays above half of it, since the session's threshold was above half of a larger one.
        setup = proto.RoundSetup(self.session_id, server_round, tuple(sorted(proxies)),
                                 min(self.threshold, neighbourhood_size(len(proxies))), self.clip_range,
                                 proto.levels_for(len(proxies), self.weight_cap), self.weight_cap)
        self._round = SecureAggregationRound(
            setup, proxies, identity_keys=self.identity_keys, timeout_s=self.stage_timeout_s,
            on_leave=lambda site, reason: self._reject(server_round, "secure aggregation", site, reason),
        )
        relayed = self._round.exchange_keys()
        return [
            (proxy, FitIns(ins.parameters, {**ins.config, **relayed[site_of[proxy.cid]]}))
            for proxy, ins in instructions
            if site_of[proxy.cid] in relayed
        ]

    def configure_evaluate(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, EvaluateIns]]:
        """Evaluate on the sites that shared this round's secrets, metrics masked in the evaluate slot."""
        site_of = self._sites(client_manager)
        if self._round is None or self._round.round != server_round:
            return []
        extra = self._round.evaluate_config()
        if server_round == self.num_rounds:  # score what will be committed: merged if the head moved
            self._scoring = self.rebase_final(self.global_weights)
            parameters = ndarrays_to_parameters(self._scoring.weights)
        sampled = FedProx.configure_evaluate(self, server_round, parameters, client_manager)  # not the plain refusal
        return [
            (proxy, EvaluateIns(ins.parameters, {**ins.config, **extra}))
            for proxy, ins in sampled
            if site_of.get(proxy.cid) in self._round.sharing
        ]

    def aggregate_evaluate(
        self, server_round: int, results: list[tuple[ClientProxy, Any]], failures: list[Any]
    ) -> tuple[float | None, dict[str, Scalar]]:
        """The round's validation loss and accuracy from the unmasked sums; nothing per site."""
        masked: dict[str, list[np.ndarray]] = {}
        admitted: list[_Admitted] = []
        for entry in self._admit(server_round, "evaluate", results):
            vector = self._masked_metrics(server_round, entry)
            if vector is not None:
                masked[entry.site] = [vector]
                admitted.append(entry)
        self._require_enough(server_round, "evaluate", admitted, failures)
        total = self._unmask(server_round, proto.EVALUATE, masked)
        sums = self.last_sums[proto.EVALUATE] = masking.decode_extras(total[0], proto.EVALUATE_EXTRAS)
        examples = int(sums["examples"])
        summary: dict[str, Any] = {
            "loss": sums["loss_sum"] / examples if examples else None,
            "accuracy": sums["correct"] / examples if examples else None,
            "examples": examples,
            "sites": len(masked),
            "secure_aggregation": True,
        }
        if server_round == self.num_rounds and self._scoring is not None:
            self.evaluated = self._scoring
            if self._scoring.merge_weight is not None:
                summary["merged_into"] = self._scoring.head
        self.last_metrics["evaluate"] = summary
        self.on_round(server_round, "evaluate", summary, {})
        return summary["loss"], summary

    def _update_is_sound(self, server_round: int, entry: _Admitted) -> bool:
        """A masked vector can only be checked for its form: field elements in the right shapes."""
        vector = entry.weights
        shapes = [w.shape for w in self.global_weights] + [(len(proto.FIT_EXTRAS),)]
        dtypes = [masking.FIELD] * len(self.global_weights) + [masking.EXTRAS_FIELD]
        sound = [v.shape for v in vector] == shapes and [v.dtype for v in vector] == dtypes
        if not sound:
            self._reject(server_round, "fit", entry.site, "update rejected: not a masked vector of the model's shapes")
        return sound

    def _combine(self, server_round: int, admitted: list[_Admitted]) -> list[np.ndarray]:
        """Unmask the sum, check its weight and count, add the mean update to the global weights.

        ``aggregate_fit`` then checks the aggregate's norm as on the plain path."""
        masked = {a.site: a.weights for a in admitted}
        total = self._unmask(server_round, proto.FIT, masked)
        self._check_summed_weight(server_round, masking.decode_extras(total[-1], proto.FIT_EXTRAS),
                                  [site for site in masked if site in self._round.sharing])
        try:
            mean_update, self.last_sums[proto.FIT] = masking.decode_update(total, self.clip_range,
                                                                           self._round.setup.levels)
        except ValueError as exc:
            raise SessionFailedError(f"round {server_round}: secure aggregation: {exc}") from None
        return [(w + d).astype(w.dtype) for w, d in zip(self.global_weights, mean_update)]

    def _check_summed_weight(self, server_round: int, sums: dict[str, float], summed: list[str]) -> None:
        """The weight and count inside the sum must be the summed sites' approved (capped) ones."""
        weight = sum(self.weight(site) for site in summed)
        examples = sum(int(self.site_configs[site]["examples"]) for site in summed)
        if (sums["weight"], sums["examples"]) != (weight, examples):
            raise SessionFailedError(
                f"round {server_round}: secure aggregation: the masked sum carries weight {sums['weight']:.0f} "
                f"and {sums['examples']:.0f} examples, but the {len(summed)} summed site(s) were admitted with "
                f"weight {weight} and {examples} examples (a site misreported its weight inside the mask)"
            )

    # -- helpers ----------------------------------------------------------------------------
    def _unmask(self, server_round: int, slot: str, masked: dict[str, list[np.ndarray]]) -> list[np.ndarray]:
        if self._round is None or self._round.round != server_round:
            raise SessionFailedError(f"round {server_round}: secure aggregation: no key exchange for this round")
        return self._round.unmask(slot, masked)

    def _masked_metrics(self, server_round: int, entry: _Admitted) -> np.ndarray | None:
        """The masked evaluate vector a site sent (uint64 bytes of the extras' length), else rejected."""
        raw = (entry.result.metrics or {}).get(proto.MASKED)
        if isinstance(raw, bytes) and len(raw) == 8 * len(proto.EVALUATE_EXTRAS):
            return np.frombuffer(raw, masking.EXTRAS_FIELD).copy()
        self._reject(server_round, "evaluate", entry.site, "result rejected: no masked validation metrics")
        return None

    @staticmethod
    def _sites(client_manager: ClientManager) -> dict[str, str]:
        if not isinstance(client_manager, AdmissionClientManager):
            raise TypeError("secure aggregation needs the AdmissionClientManager's site of each client")
        return client_manager.site_of
