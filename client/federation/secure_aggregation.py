"""The site's side of secure aggregation: keys, shares and masks, so the server sees only a sum.

``SecureAggregationClient`` wraps the site's Flower client. When the server runs a session
without secure aggregation it passes everything through unchanged; when it drives the stages of
``shared.secagg_protocol``, ``SecAggClientState`` answers them and ``fit`` returns the masked
update instead of the weights. Masking happens on what the wrapped client's ``fit`` returned,
i.e. after DP-SGD has clipped and noised it: the DP guarantee does not depend on the masks.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

import numpy as np
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from flwr.client import NumPyClient
from flwr.common import Scalar
from flwr.common.secure_aggregation.crypto.shamir import create_shares
from flwr.common.secure_aggregation.crypto.symmetric_encryption import decrypt, encrypt
from flwr.common.secure_aggregation.secaggplus_utils import (
    share_keys_plaintext_concat,
    share_keys_plaintext_separate,
)

from shared import secagg_masking as masking
from shared import secagg_protocol as proto
from shared.errors import ProtocolError

log = logging.getLogger(__name__)


@dataclass
class SecAggClientState:
    """One site's keys and received shares for one round; each stage runs once, in order.

    The site refuses what an honest server never sends: stages out of order or from another
    round, a threshold at or below half the sites, duplicate public keys, shares from unknown sites
    or addressed to someone else, and an unmask request that names a site both alive and
    dropped (revealing both secrets of one site would unmask it).
    """

    site: str
    round: int = 0
    stage: str = proto.UNMASK
    sites: list[str] = field(default_factory=list)
    threshold: int = 0
    clip_range: float = 0.0
    levels: int = 0
    encryption_key: X25519PrivateKey | None = None
    mask_key: X25519PrivateKey | None = None
    seed: bytes = b""
    public_keys: dict[str, tuple[bytes, bytes]] = field(default_factory=dict)  # site -> (enc, mask)
    seed_shares: dict[str, bytes] = field(default_factory=dict)  # owner -> my share of its seed
    key_shares: dict[str, bytes] = field(default_factory=dict)  # owner -> my share of its mask key
    neighbours: list[str] = field(default_factory=list)

    def setup(self, config: dict[str, Scalar]) -> dict[str, Scalar]:
        """Stage 0: take the round's parameters, answer two fresh X25519 public keys."""
        self._advance(proto.SETUP, config)
        self.sites = proto.split_sites(config[proto.SITES])
        if self.site not in self.sites or len(set(self.sites)) != len(self.sites):
            raise ProtocolError(f"secure aggregation: bad site list for {self.site}: {self.sites}")
        self.threshold = proto.check_threshold(int(config[proto.THRESHOLD]), len(self.sites))
        self.clip_range = float(config[proto.CLIP_RANGE])
        self.levels = int(config[proto.LEVELS])
        self.encryption_key, self.mask_key = X25519PrivateKey.generate(), X25519PrivateKey.generate()
        self.seed = os.urandom(32)
        self.public_keys, self.seed_shares, self.key_shares, self.neighbours = {}, {}, {}, []
        return {
            proto.PK_ENCRYPT: masking.public_bytes(self.encryption_key),
            proto.PK_MASK: masking.public_bytes(self.mask_key),
        }

    def share_keys(self, config: dict[str, Scalar]) -> dict[str, Scalar]:
        """Stage 1: Shamir-share the seed and mask key, encrypt each pair of shares to its site."""
        self._advance(proto.SHARE_KEYS, config)
        self.public_keys = self._public_keys(config)
        seed_shares = create_shares(self.seed, self.threshold, len(self.sites))
        key_shares = create_shares(masking.private_bytes(self.mask_key), self.threshold, len(self.sites))
        reply: dict[str, Scalar] = {}
        for index, peer in enumerate(self.sites):
            if peer == self.site:
                self.seed_shares[peer], self.key_shares[peer] = seed_shares[index], key_shares[index]
            elif peer in self.public_keys:
                plaintext = share_keys_plaintext_concat(
                    self._x(self.site), index + 1, seed_shares[index], key_shares[index]
                )
                reply[proto.field(proto.SHARE, peer)] = encrypt(self._encryption_key_with(peer), plaintext)
        return reply

    def receive_shares(self, config: dict[str, Scalar]) -> None:
        """Stage 2, before training: keep the shares other sites encrypted to this one."""
        self._advance(proto.MASK, config)
        for source, token in proto.fields_of(config, proto.SHARE).items():
            if source == self.site or source not in self.public_keys:
                raise ProtocolError(f"secure aggregation: shares from unexpected site {source!r}")
            sender, receiver, seed_share, key_share = share_keys_plaintext_separate(
                decrypt(self._encryption_key_with(source), bytes(token))
            )
            if (sender, receiver) != (self._x(source), self._x(self.site)):
                raise ProtocolError(f"secure aggregation: shares from {source} are not addressed to {self.site}")
            self.seed_shares[source], self.key_shares[source] = seed_share, key_share
            self.neighbours.append(source)
        if len(self.neighbours) + 1 < self.threshold:
            raise ProtocolError(
                f"secure aggregation: shares from {len(self.neighbours)} site(s) cannot meet "
                f"the threshold {self.threshold}"
            )

    def mask(
        self, global_weights: list[np.ndarray], new_weights: list[np.ndarray], examples: int
    ) -> list[np.ndarray]:
        """Stage 2, after training: the update, clipped, quantised, weighted and masked.

        The seed and mask key are dropped afterwards: two vectors under the same masks would
        reveal their difference, so each round masks exactly one.
        """
        if self.stage != proto.MASK or self.mask_key is None:
            raise ProtocolError("secure aggregation: this round has no unused masks")
        delta = [np.asarray(new, np.float64) - old for new, old in zip(new_weights, global_weights)]
        self._warn_if_clipped(delta)
        shapes = [d.shape for d in delta]
        masked = masking.encode(delta, examples, self.clip_range, self.levels)
        masking.accumulate(masked, masking.prg_mask(self.seed, shapes), +1)
        for peer in self.neighbours:
            seed = masking.pairwise_seed(self.mask_key, self.public_keys[peer][1])
            masking.accumulate(masked, masking.prg_mask(seed, shapes), self._sign_towards(peer))
        self.seed, self.mask_key = b"", None
        return masked

    def unmask(self, config: dict[str, Scalar]) -> dict[str, Scalar]:
        """Stage 3: reveal seed shares of the survivors and mask-key shares of the dropped sites."""
        self._advance(proto.UNMASK, config)
        survivors = set(proto.split_sites(config[proto.SURVIVORS]))
        dropped = set(proto.split_sites(config[proto.DROPPED]))
        known = set(self.neighbours) | {self.site}
        if survivors & dropped or not (survivors | dropped) <= known or self.site not in survivors:
            raise ProtocolError("secure aggregation: inconsistent survivor/dropped lists; refusing to unmask")
        if len(survivors) < self.threshold:
            raise ProtocolError(
                f"secure aggregation: {len(survivors)} survivor(s) are below the threshold {self.threshold}"
            )
        return {
            **{proto.field(proto.SEED_SHARE, s): self.seed_shares[s] for s in sorted(survivors)},
            **{proto.field(proto.KEY_SHARE, s): self.key_shares[s] for s in sorted(dropped)},
        }

    # -- helpers -------------------------------------------------------------------------
    def _advance(self, stage: str, config: dict[str, Scalar]) -> None:
        """Accept ``stage`` only as the next one of this round; ``setup`` opens a later round."""
        round_number = int(config[proto.ROUND])
        if stage == proto.SETUP:
            in_order = round_number > self.round
        else:
            next_stage = proto.STAGES.index(self.stage) + 1
            in_order = round_number == self.round and proto.STAGES.index(stage) == next_stage
        if not in_order:
            raise ProtocolError(
                f"secure aggregation: {stage} of round {round_number} after {self.stage} "
                f"of round {self.round}"
            )
        self.round, self.stage = round_number, stage

    def _public_keys(self, config: dict[str, Scalar]) -> dict[str, tuple[bytes, bytes]]:
        encryption = proto.fields_of(config, proto.PK_ENCRYPT)
        mask = proto.fields_of(config, proto.PK_MASK)
        keys = {s: (bytes(encryption[s]), bytes(mask[s])) for s in self.sites if s in encryption and s in mask}
        flat = [key for pair in keys.values() for key in pair]
        if len(set(flat)) != len(flat):
            raise ProtocolError("secure aggregation: two sites announced the same public key")
        mine = (masking.public_bytes(self.encryption_key), masking.public_bytes(self.mask_key))
        if keys.get(self.site) != mine:
            raise ProtocolError("secure aggregation: the server relayed a wrong key for this site")
        if len(keys) < self.threshold:
            raise ProtocolError(f"secure aggregation: {len(keys)} site(s) below the threshold {self.threshold}")
        return keys

    def _encryption_key_with(self, peer: str) -> bytes:
        return masking.share_encryption_key(self.encryption_key, self.public_keys[peer][0])

    def _x(self, site: str) -> int:
        """The site's Shamir x-coordinate: its position in the round's site list, from 1."""
        return self.sites.index(site) + 1

    def _sign_towards(self, peer: str) -> int:
        """The earlier of two sites adds their pairwise mask, the later subtracts it."""
        return +1 if self._x(self.site) < self._x(peer) else -1

    def _warn_if_clipped(self, delta: list[np.ndarray]) -> None:
        clipped = sum(int(np.count_nonzero(np.abs(d) > self.clip_range)) for d in delta)
        if clipped:
            log.warning("secure aggregation: %d coordinate(s) of the update exceed +-%g and are clipped",
                        clipped, self.clip_range)


class SecureAggregationClient(NumPyClient):
    """Runs the secure-aggregation stages around any ``NumPyClient`` (the site's ``FLClient``).

    ``get_properties`` answers a stage when the config names one and is the wrapped client's
    otherwise. ``fit`` of a masked round takes the shares first (a round that cannot be masked
    fails before any privacy budget is spent), then lets the wrapped client train with DP, then
    masks what it returned. With ``required`` (the session was approved with secure aggregation)
    a request for plain weights is refused instead of answered.
    """

    def __init__(self, inner: NumPyClient, *, site: str, required: bool = False) -> None:
        self.inner = inner
        self.required = required
        self.state = SecAggClientState(site=site)

    def get_properties(self, config: dict[str, Scalar]) -> dict[str, Scalar]:
        if proto.STAGE not in config:
            return self.inner.get_properties(config)
        stages = {proto.SETUP: self.state.setup, proto.SHARE_KEYS: self.state.share_keys,
                  proto.UNMASK: self.state.unmask}
        if config[proto.STAGE] not in stages:
            raise ProtocolError(f"secure aggregation: no stage {config[proto.STAGE]!r} in get_properties")
        return stages[str(config[proto.STAGE])](config)

    def get_parameters(self, config: dict[str, Scalar]) -> list[np.ndarray]:
        return self.inner.get_parameters(config)

    def fit(
        self, parameters: list[np.ndarray], config: dict[str, Scalar]
    ) -> tuple[list[np.ndarray], int, dict[str, Scalar]]:
        if config.get(proto.STAGE) != proto.MASK:
            if self.required:
                raise ProtocolError("this session uses secure aggregation; refusing to send plain weights")
            return self.inner.fit(parameters, config)
        self.state.receive_shares(config)
        weights, examples, metrics = self.inner.fit(parameters, config)
        return self.state.mask(parameters, weights, examples), examples, metrics

    def evaluate(
        self, parameters: list[np.ndarray], config: dict[str, Scalar]
    ) -> tuple[float, int, dict[str, Scalar]]:
        return self.inner.evaluate(parameters, config)
