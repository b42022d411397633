"""Stand-ins for secure-aggregation tests that need neither gRPC nor training."""

from __future__ import annotations

import numpy as np
from flwr.client import NumPyClient
from flwr.common import Code, GetPropertiesRes, Status

from client.federation.secure_aggregation import SecureAggregationClient
from shared import secagg_protocol as proto


class FixedUpdate(NumPyClient):
    """A site whose training moves the global weights by a fixed ``delta``."""

    def __init__(self, delta: list[np.ndarray], examples: int) -> None:
        self.delta, self.examples, self.fits = delta, examples, 0

    def fit(self, parameters, config):
        self.fits += 1
        return [(p + d).astype(np.float32) for p, d in zip(parameters, self.delta)], self.examples, {}


class LoopbackProxy:
    """What Flower's ``ClientProxy`` does for ``get_properties``, minus gRPC; ``silent_in`` stages time out."""

    def __init__(self, client: SecureAggregationClient, silent_in: tuple[str, ...] = ()) -> None:
        self.client, self.silent_in = client, silent_in

    def get_properties(self, ins, timeout, group_id):
        if ins.config[proto.STAGE] in self.silent_in:
            raise TimeoutError("site went away")
        return GetPropertiesRes(Status(Code.OK, ""), self.client.get_properties(ins.config))
