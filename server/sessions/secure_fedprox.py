"""FedProx over admitted sites where the server learns only the weighted sum of their updates."""

from __future__ import annotations

from typing import Any

import numpy as np
from flwr.common import FitIns, Parameters, parameters_to_ndarrays
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy

from server.sessions.admission import AdmissionClientManager
from server.sessions.fedprox import AdmittedFedProx, _Admitted
from server.sessions.secure_aggregation import SecureAggregationRound
from server.sessions.update_validation import update_problem
from shared import secagg_masking as masking
from shared import secagg_protocol as proto
from shared.errors import SessionFailedError


class SecureFedProx(AdmittedFedProx):
    """``AdmittedFedProx`` with secure aggregation (Bonawitz et al. 2017) of the fit results.

    Every round runs four stages over the session's own Flower connections (fields in
    ``shared.secagg_protocol``):

    0. *setup* (``get_properties``): each sampled site makes two fresh X25519 key pairs, one to
       encrypt messages to other sites, one to agree pairwise mask seeds, and a random
       self-mask seed ``b``; it answers the two public keys.
    1. *share keys* (``get_properties``): the server relays all public keys; each site splits
       ``b`` and its mask private key into ``n`` Shamir shares (``threshold`` rebuild them),
       and encrypts each other site's pair of shares to it (X25519 + HKDF -> Fernet).
    2. *mask* (``fit``): the server relays the encrypted shares with the round's fit config
       (weights, FedProx ``proximal_mu``, ...). The site trains with DP-SGD + FedProx as in a
       plain round, then sends ``x = n * quantize(clip(w_new - w_global)) + PRG(b)
       +- PRG(s_uv)`` in Z_(2^64): its example count ``n`` and metrics stay in the clear.
    3. *unmask* (``get_properties``): the server names the survivors (vectors received) and
       the dropped sites (shared keys, sent no vector); each survivor reveals its shares of
       the survivors' ``b`` and of the dropped sites' mask keys. The server removes all masks
       from the sum, divides by the total example count and dequantises: the new global weights
       are the example-weighted FedAvg mean, within ``2 * clip_range / levels`` per coordinate.

    A masked vector cannot be norm-checked on its own: what bounds one site's influence is the
    clipping of each coordinate of its update to ``+-clip_range`` before quantisation (done by
    honest sites), and the server checks the *aggregate* update (finite, norm within
    ``max_update_norm``); a rejected aggregate fails the round. A stage that leaves fewer than
    ``threshold`` sites fails the round with a ``SessionFailedError`` naming the stage.

    Trust model: a server that follows the stages but reads everything it relays, together with
    fewer than ``threshold`` colluding sites, learns of an honest site's update only what the
    sum reveals. Public keys are relayed unsigned, so a server that actively swaps them is not
    covered (that needs the signed-key variant of the paper and a PKI of the sites). Every pair
    of sites masks (SecAgg's complete graph; SecAgg+'s sparse neighbour graph pays off only at
    hundreds of sites).

    Parameters
    ----------
    threshold : int | None
        Shares needed to rebuild a secret; default ``ceil(2n/3)`` of the session's sites. It
        must exceed half of them, so two disjoint groups of sites can never be asked for the two
        different secrets of one site (which together would unmask it).
    clip_range : float
        Bound of each coordinate of a site's update (new weights - global weights).
    levels : int
        Quantisation levels over ``[-clip_range, clip_range]``.
    stage_timeout_s : float
        How long a stage waits for a site before counting it as dropped.
    **kwargs
        As ``AdmittedFedProx`` (participants, verify_secret, initial_weights, proximal_mu, ...).
    """

    def __init__(
        self,
        *,
        threshold: int | None = None,
        clip_range: float = proto.DEFAULT_CLIP_RANGE,
        levels: int = proto.DEFAULT_LEVELS,
        stage_timeout_s: float,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        count = len(self.participants)
        self.threshold = proto.check_threshold(threshold or proto.default_threshold(count), count)
        self.clip_range = clip_range
        self.levels = levels
        self.stage_timeout_s = stage_timeout_s
        self._round: SecureAggregationRound | None = None

    def configure_fit(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, FitIns]]:
        """Sample as FedProx, then run stages 0-1 and add each site's relayed shares to its fit."""
        if not isinstance(client_manager, AdmissionClientManager):
            raise TypeError("secure aggregation needs the AdmissionClientManager's site of each client")
        instructions = super().configure_fit(server_round, parameters, client_manager)
        site_of = client_manager.site_of
        self._round = SecureAggregationRound(
            server_round,
            {site_of[proxy.cid]: proxy for proxy, _ in instructions},
            threshold=self.threshold,
            clip_range=self.clip_range,
            levels=self.levels,
            timeout_s=self.stage_timeout_s,
        )
        relayed = self._round.exchange_keys()
        return [
            (proxy, FitIns(ins.parameters, {**ins.config, **relayed[site_of[proxy.cid]]}))
            for proxy, ins in instructions
            if site_of[proxy.cid] in relayed
        ]

    def _update_is_sound(self, server_round: int, entry: _Admitted) -> bool:
        """A masked vector can only be checked for its form: field elements in the right shapes."""
        vector = parameters_to_ndarrays(entry.result.parameters)
        sound = [v.shape for v in vector] == [w.shape for w in self.global_weights] and all(
            v.dtype == masking.FIELD for v in vector
        )
        if not sound:
            self._reject(server_round, "fit", entry.site, "update rejected: not a masked vector of the model's shapes")
        return sound

    def _combine(self, server_round: int, admitted: list[_Admitted]) -> list[np.ndarray]:
        """Unmask the sum, add the mean update to the global weights, check the aggregate."""
        if self._round is None or self._round.round != server_round:
            raise SessionFailedError(f"round {server_round}: secure aggregation: no key exchange for this round")
        mean_update = self._round.unmask(
            {a.site: parameters_to_ndarrays(a.result.parameters) for a in admitted},
            {a.site: a.result.num_examples for a in admitted},
        )
        combined = [(w + d).astype(w.dtype) for w, d in zip(self.global_weights, mean_update)]
        problem = update_problem(combined, self.global_weights, max_update_norm=self.max_update_norm)
        if problem:
            raise SessionFailedError(
                f"round {server_round}: secure aggregation: the aggregate update is rejected ({problem})"
            )
        return combined
