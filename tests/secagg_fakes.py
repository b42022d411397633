"""Stand-ins for secure-aggregation tests that need neither gRPC nor training."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flwr.client import NumPyClient
from flwr.common import Code, GetPropertiesRes, Status

from client.federation.secagg_state import SecAggPolicy
from client.federation.secure_aggregation import SecureAggregationClient
from client.federation.site_identity import SessionPeers
from server.sessions.secure_aggregation import SecureAggregationRound
from shared import secagg_protocol as proto


class FixedUpdate(NumPyClient):
    """A site whose training moves the global weights by a fixed ``delta``; it evaluates to fixed numbers."""

    def __init__(self, delta: list[np.ndarray], examples: int, *, val: tuple[float, int, float] = (0.5, 10, 0.6),
                 metrics: dict | None = None) -> None:
        self.delta, self.examples, self.fits, self.evaluations = delta, examples, 0, 0
        self.val_loss, self.val_examples, self.val_accuracy = val
        self.metrics = dict(metrics or {})

    def fit(self, parameters, config):
        self.fits += 1
        return [(p + d).astype(np.float32) for p, d in zip(parameters, self.delta)], self.examples, dict(self.metrics)

    def validate(self, parameters):
        self.evaluations += 1
        return self.val_loss, self.val_examples, {"accuracy": self.val_accuracy, **self.metrics}


class LoopbackProxy:
    """What Flower's ``ClientProxy`` does for ``get_properties``, minus gRPC; ``silent_in`` stages time out."""

    def __init__(self, client: NumPyClient, silent_in: tuple[str, ...] = ()) -> None:
        self.client, self.silent_in = client, silent_in

    def get_properties(self, ins, timeout, group_id):
        if ins.config[proto.STAGE] in self.silent_in:
            raise TimeoutError("site went away")
        return GetPropertiesRes(Status(Code.OK, ""), self.client.get_properties(ins.config))


class Federation:
    """Sites with identity keys, and the ticket of one session naming them all (what the store hands out)."""

    def __init__(self, sites: Iterable[str], session_id: int = 1) -> None:
        self.identities = {site: Ed25519PrivateKey.generate() for site in sites}
        self.session_id = session_id

    @property
    def identity_keys(self) -> dict:
        return {site: key.public_key() for site, key in self.identities.items()}

    def peers(self) -> SessionPeers:
        return SessionPeers(self.session_id, self.identity_keys)

    def client(self, site: str, inner: NumPyClient, policy: SecAggPolicy | None = None) -> SecureAggregationClient:
        return SecureAggregationClient(inner, site=site, identity=self.identities[site], peers=self.peers(),
                                       policy=policy)

    def server_round(self, round_number: int, proxies: dict, *, threshold: int, levels: int | None = None,
                     clip_range: float = proto.DEFAULT_CLIP_RANGE, weight_cap: int = proto.DEFAULT_WEIGHT_CAP,
                     on_leave=None) -> SecureAggregationRound:
        """The server's side of one round, quantising with the most levels that fit unless told otherwise."""
        levels = levels or proto.levels_for(len(proxies), weight_cap)
        setup = proto.RoundSetup(self.session_id, round_number, tuple(sorted(proxies)), threshold, clip_range, levels,
                                 weight_cap)
        return SecureAggregationRound(setup, proxies, identity_keys=self.identity_keys, timeout_s=5,
                                      on_leave=on_leave)
