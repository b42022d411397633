"""The site's side of secure aggregation: only masked vectors leave the site, the server sees sums.

``SecureAggregationClient`` wraps the site's Flower client. It answers the stages of
``shared.secagg_protocol`` with a ``SecAggClientState`` (all the checks live there) and turns
the wrapped client's results into masked vectors:

* ``fit``: the update (new - global weights, clipped and quantised) weighted by the example
  count (capped at the round's weight cap), plus ``FIT_EXTRAS`` (the weight and the count, and
  any fit metric listed there, which is then removed from the clear metrics);
* ``evaluate``: only ``EVALUATE_EXTRAS`` (validation count, correct predictions, loss sum) in
  the masked vector; the clear metrics keep nothing but the proof of admission.

Masking happens on what the wrapped client returned, i.e. after DP-SGD has clipped and noised
it: the DP guarantee does not depend on the masks. With ``policy.required`` (the site's profile
demands it, or the session was approved with it) a request for plain weights or plain
validation metrics is refused before any training or evaluation runs.
"""

from __future__ import annotations

import logging

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flwr.client import NumPyClient
from flwr.common import Scalar

from client.federation.secagg_state import SecAggClientState, SecAggPolicy
from client.federation.site_identity import PeerPins, SessionPeers, load_identity
from client.site_profile import SiteProfile
from shared import protocol
from shared import secagg_masking as masking
from shared import secagg_protocol as proto
from shared.errors import ConfigError, ProtocolError

log = logging.getLogger(__name__)


class SecureAggregationClient(NumPyClient):
    """Runs the secure-aggregation stages around any ``NumPyClient`` (the site's ``FLClient``).

    ``get_properties`` answers a stage when the config names one and is the wrapped client's
    otherwise. ``fit`` of a masked round takes the shares first (a round that cannot be masked
    fails before any privacy budget is spent), then lets the wrapped client train with DP, then
    masks what it returned.
    """

    def __init__(self, inner: NumPyClient, *, site: str, identity: Ed25519PrivateKey, peers: SessionPeers,
                 policy: SecAggPolicy | None = None) -> None:
        self.inner = inner
        self.policy = policy or SecAggPolicy()
        self.state = SecAggClientState(site, identity, peers, self.policy)

    def get_properties(self, config: dict[str, Scalar]) -> dict[str, Scalar]:
        stage = config.get(proto.STAGE)
        if stage is None:
            return self.inner.get_properties(config)
        if stage == proto.SETUP:
            return self.state.setup(config)
        if stage == proto.SHARE_KEYS:
            return self.state.share_keys(config)
        if stage in (proto.UNMASK, proto.UNMASK_EVALUATE):
            return self.state.unmask(proto.FIT if stage == proto.UNMASK else proto.EVALUATE, config)
        raise ProtocolError(f"secure aggregation: no stage {stage!r} in get_properties")

    def get_parameters(self, config: dict[str, Scalar]) -> list[np.ndarray]:
        return self.inner.get_parameters(config)

    def fit(
        self, parameters: list[np.ndarray], config: dict[str, Scalar]
    ) -> tuple[list[np.ndarray], int, dict[str, Scalar]]:
        if config.get(proto.STAGE) != proto.MASK:
            self._refuse_plain_if_required("weights")
            return self.inner.fit(parameters, config)
        self.state.receive_shares(config)
        setup = self.state.round_setup
        weights, examples, metrics = self.inner.fit(parameters, config)
        delta = [np.subtract(new, old, dtype=np.float64) for new, old in zip(weights, parameters)]
        clipped = masking.clipped_coordinates(delta, setup.clip_range)
        if clipped:
            log.warning("secure aggregation: %d coordinate(s) of the update exceed +-%g and are clipped",
                        clipped, setup.clip_range)
        weight = min(examples, setup.weight_cap)
        if weight < examples:
            log.warning("secure aggregation: this site's weight is capped at %d of its %d examples",
                        weight, examples)
        extras, clear = _split_extras({**metrics, "examples": examples, "weight": weight}, proto.FIT_EXTRAS)
        encoded = [*masking.encode(delta, weight, setup.clip_range, setup.levels),
                   masking.encode_extras(extras, proto.FIT_EXTRAS)]
        return self.state.mask(proto.FIT, encoded), examples, clear

    def evaluate(
        self, parameters: list[np.ndarray], config: dict[str, Scalar]
    ) -> tuple[float, int, dict[str, Scalar]]:
        if config.get(proto.STAGE) != proto.MASK_EVALUATE:
            self._refuse_plain_if_required("validation metrics")
            return self.inner.evaluate(parameters, config)
        self.state.begin_evaluate(config)
        loss, examples, metrics = self.inner.validate(parameters)  # stays here: only its sums leave, masked
        sums = {"examples": examples, "loss_sum": float(loss) * examples,
                "correct": round(float(metrics.get("accuracy", 0.0)) * examples)}
        masked = self.state.mask(proto.EVALUATE, [masking.encode_extras(sums, proto.EVALUATE_EXTRAS)])
        clear: dict[str, Scalar] = {k: metrics[k] for k in proto.CLEAR_EVALUATE_METRICS if k in metrics}
        return 0.0, 0, {**clear, proto.MASKED: masked[0].tobytes()}

    def _refuse_plain_if_required(self, what: str) -> None:
        if self.policy.required:
            raise ProtocolError(f"this site requires secure aggregation; refusing to send plain {what}")


def secure_client_for(inner: NumPyClient, profile: SiteProfile, ticket: protocol.SessionTicket) -> NumPyClient:
    """The site's client for the session of ``ticket``: wrapped for secure aggregation when it uses it.

    Refuses (before any training) a session approved without secure aggregation when the profile
    requires it, a ticket whose key for this site is not this site's, and a ticket that names a
    known peer with another key than before (``PeerPins``). A plain session the site accepts
    gets the client as it is.
    """
    if not ticket.config.get("secure_aggregation"):
        if profile.require_secure_aggregation:
            raise ConfigError(
                f"session {ticket.session_id} runs without secure aggregation, which this site requires",
                hint="Ask the admin to approve it with --secure-aggregation, or set require_secure_aggregation "
                     "to false in the site profile.",
            )
        return inner
    identity = load_identity(profile.identity_key_path)
    peers = SessionPeers.from_ticket(ticket)
    peers.require_own(profile.site, identity)
    PeerPins(profile.peer_keys_path).check_and_pin(peers, own_site=profile.site)
    policy = SecAggPolicy(required=True, clip_range=profile.secagg_clip_range, levels=profile.secagg_levels)
    return SecureAggregationClient(inner, site=profile.site, identity=identity, peers=peers, policy=policy)


def _split_extras(metrics: dict[str, Scalar], spec: tuple[proto.ExtraSum, ...]) -> tuple[dict, dict[str, Scalar]]:
    """(values that go into the secure sum, metrics that stay in clear)."""
    names = {extra.name for extra in spec}
    inside = {k: float(v) for k, v in metrics.items() if k in names}  # type: ignore[arg-type]
    return inside, {k: v for k, v in metrics.items() if k not in names}
