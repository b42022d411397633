"""One site's secrets and checks for one secure-aggregation round (stages: ``shared.secagg_protocol``).

The site trusts nothing the server sends it. It refuses: a round of another session, site lists
naming anyone its ticket does not admit, thresholds at or below half a neighbourhood, a clip
range or quantisation outside what its own policy accepts, keys of a neighbour that the
neighbour did not sign (with the identity key in the ticket) for this very round, shares from
non-neighbours or addressed to someone else, stages out of order or repeated, and unmask
requests that name a neighbour both alive and dropped (both secrets of one site unmask it).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from flwr.common import Scalar
from flwr.common.secure_aggregation.crypto.symmetric_encryption import decrypt, encrypt

from client.federation.site_identity import SessionPeers
from shared import secagg_masking as masking
from shared import secagg_protocol as proto
from shared import secagg_shamir
from shared.errors import ProtocolError
from shared.secagg_graph import neighbourhoods
from shared.secagg_identity import keys_are_signed, sign_keys

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SecAggPolicy:
    """What this site accepts, whatever the server says: from its profile and its ticket."""

    required: bool = False
    clip_range: tuple[float, float] = proto.ACCEPTED_CLIP_RANGE
    levels: tuple[int, int] = proto.ACCEPTED_LEVELS

    def check(self, setup: proto.RoundSetup) -> None:
        low, high = self.clip_range
        if not low <= setup.clip_range <= high:
            raise ProtocolError(f"secure aggregation: clip range {setup.clip_range:g} is outside the "
                                f"[{low:g}, {high:g}] this site accepts")
        low_levels, high_levels = self.levels
        if not low_levels <= setup.levels <= high_levels:
            raise ProtocolError(f"secure aggregation: {setup.levels} quantisation levels are outside the "
                                f"[{low_levels}, {high_levels}] this site accepts")


@dataclass
class _Slot:
    """One masked vector's secrets: a self-mask seed, a mask key pair, and others' shares of theirs."""

    mask_key: X25519PrivateKey = field(default_factory=X25519PrivateKey.generate)
    seed: bytes = field(default_factory=lambda: os.urandom(32))
    seed_shares: dict[str, bytes] = field(default_factory=dict)  # owner -> my share of its seed
    key_shares: dict[str, bytes] = field(default_factory=dict)  # owner -> my share of its mask key
    masked: bool = False


class SecAggClientState:
    """One site's keys and received shares for the current round; each stage runs once, in order."""

    def __init__(self, site: str, identity: Ed25519PrivateKey, peers: SessionPeers,
                 policy: SecAggPolicy | None = None) -> None:
        self.site = site
        self.identity = identity
        self.peers = peers
        self.policy = policy or SecAggPolicy()
        self.round = 0
        self.stage = proto.UNMASK_EVALUATE
        self.setup_params: proto.RoundSetup | None = None
        self.neighbours: frozenset[str] = frozenset()
        self.encryption_key: X25519PrivateKey | None = None
        self.slots: dict[str, _Slot] = {}
        self.public_keys: dict[str, tuple[bytes, ...]] = {}  # neighbour -> (encrypt, mask fit, mask evaluate)
        self.partners: list[str] = []  # neighbours whose shares arrived: the ones this site masks with

    # -- stages ---------------------------------------------------------------------------
    def setup(self, config: dict[str, Scalar]) -> dict[str, Scalar]:
        """Stage 0: check the round's parameters, answer fresh public keys signed by the identity key."""
        setup = proto.RoundSetup.from_config(config)
        self._advance(proto.SETUP, setup.round)
        # Nothing of an earlier round survives, even when this setup is refused.
        self.setup_params, self.encryption_key, self.slots = None, None, {}
        self.neighbours, self.public_keys, self.partners = frozenset(), {}, []
        self._check_setup(setup)
        self.setup_params = setup
        self.neighbours = neighbourhoods(setup.sites, setup.session_id, setup.round)[self.site]
        self.encryption_key = X25519PrivateKey.generate()
        self.slots = {slot: _Slot() for slot in proto.SLOTS}
        keys = self._own_public_keys()
        return {
            proto.PK_ENCRYPT: keys[0],
            **{proto.PK_MASK_OF[slot]: key for slot, key in zip(proto.SLOTS, keys[1:])},
            proto.SIGNATURE: sign_keys(self.identity, setup, self.site, keys),
        }

    def share_keys(self, config: dict[str, Scalar]) -> dict[str, Scalar]:
        """Stage 1: verify the neighbours' signed keys; Shamir-share both slots' secrets among them."""
        self._advance(proto.SHARE_KEYS, int(config[proto.ROUND]))
        setup = self.round_setup  # refuses when this round's setup was refused
        self.public_keys = self._verified_neighbour_keys(config)
        group = [s for s in setup.sites if s == self.site or s in self.public_keys]
        self._require_threshold(len(group), "neighbours with verified keys")
        secrets = [secret for slot in self.slots.values()
                   for secret in (slot.seed, masking.private_bytes(slot.mask_key))]
        shares = [secagg_shamir.split(secret, setup.threshold, len(group)) for secret in secrets]
        reply: dict[str, Scalar] = {}
        for index, holder in enumerate(group):
            mine = [per_secret[index] for per_secret in shares]
            if holder == self.site:
                self._keep_shares(self.site, mine)
            else:
                plaintext = proto.pack_shares(self._x(self.site), self._x(holder), mine)
                reply[proto.field(proto.SHARE, holder)] = encrypt(self._encryption_key_with(holder), plaintext)
        return reply

    def receive_shares(self, config: dict[str, Scalar]) -> None:
        """Stage 2, before training: keep the shares neighbours encrypted to this site."""
        self._advance(proto.MASK, int(config[proto.ROUND]))
        if not self.slots or self.site not in self.slots[proto.FIT].seed_shares:
            raise ProtocolError("secure aggregation: no key exchange before masking")
        for source, token in proto.fields_of(config, proto.SHARE).items():
            if source not in self.public_keys:
                raise ProtocolError(f"secure aggregation: shares from unexpected site {source!r}")
            sender, receiver, shares = proto.unpack_shares(decrypt(self._encryption_key_with(source), bytes(token)))
            well_formed = len(shares) == 2 * len(proto.SLOTS) and all(len(s) == secagg_shamir.SHARE_BYTES for s in shares)
            if (sender, receiver) != (self._x(source), self._x(self.site)) or not well_formed:
                raise ProtocolError(f"secure aggregation: shares from {source} are not addressed to {self.site}")
            self._keep_shares(source, shares)
            self.partners.append(source)
        self._require_threshold(len(self.partners) + 1, "neighbours that shared their secrets")

    def begin_evaluate(self, config: dict[str, Scalar]) -> None:
        """Stage 4: the evaluate slot is about to be masked (its shares came with the fit's)."""
        self._advance(proto.MASK_EVALUATE, int(config[proto.ROUND]))
        if not self.partners:
            raise ProtocolError("secure aggregation: no shares for the evaluate slot of this round")

    def mask(self, slot: str, encoded: list[np.ndarray]) -> list[np.ndarray]:
        """Add the slot's self mask and pairwise masks to field elements; each slot masks once.

        Two vectors under the same masks would reveal their difference, so the slot's seed and
        mask key are no longer usable for masking afterwards (their shares stay for unmasking).
        """
        secrets = self.slots.get(slot)
        if self.stage != proto.MASK_STAGE[slot] or secrets is None or secrets.masked:
            raise ProtocolError(f"secure aggregation: the {slot} slot of this round has no unused masks")
        secrets.masked = True
        key_index = 1 + proto.SLOTS.index(slot)
        pairwise = [(masking.pairwise_seed(secrets.mask_key, self.public_keys[peer][key_index]),
                     self._sign_towards(peer)) for peer in self.partners]
        masking.apply_masks(encoded, [(secrets.seed, +1), *pairwise])
        return encoded

    def unmask(self, slot: str, config: dict[str, Scalar]) -> dict[str, Scalar]:
        """Stage 3 / 5: reveal seed shares of the surviving neighbours, key shares of the dropped ones."""
        self._advance(proto.UNMASK_STAGE[slot], int(config[proto.ROUND]))
        survivors = set(proto.split_sites(config[proto.SURVIVORS]))
        dropped = set(proto.split_sites(config[proto.DROPPED]))
        known = set(self.partners) | {self.site}
        if survivors & dropped or not (survivors | dropped) <= known or self.site not in survivors:
            raise ProtocolError("secure aggregation: inconsistent survivor/dropped lists; refusing to unmask")
        if slot not in self.slots or not self.slots[slot].masked:
            raise ProtocolError(f"secure aggregation: this site sent no {slot} vector; nothing to unmask")
        self._require_threshold(len(survivors), "surviving neighbours")
        secrets = self.slots[slot]
        return {
            **{proto.field(proto.SEED_SHARE, s): secrets.seed_shares[s] for s in sorted(survivors)},
            **{proto.field(proto.KEY_SHARE, s): secrets.key_shares[s] for s in sorted(dropped)},
        }

    # -- checks ---------------------------------------------------------------------------
    def _advance(self, stage: str, round_number: int) -> None:
        """Accept ``stage`` only after the previous ones of this round; ``setup`` opens a later round."""
        if stage == proto.SETUP:
            in_order = round_number > self.round
        else:
            in_order = round_number == self.round and proto.STAGES.index(stage) > proto.STAGES.index(self.stage)
        if not in_order:
            raise ProtocolError(
                f"secure aggregation: {stage} of round {round_number} after {self.stage} of round {self.round}"
            )
        self.round, self.stage = round_number, stage

    def _check_setup(self, setup: proto.RoundSetup) -> None:
        if setup.session_id != self.peers.session_id:
            raise ProtocolError(f"secure aggregation: setup for session {setup.session_id}, but this site "
                                f"joined session {self.peers.session_id}")
        if self.site not in setup.sites or len(set(setup.sites)) != len(setup.sites):
            raise ProtocolError(f"secure aggregation: bad site list for {self.site}: {list(setup.sites)}")
        if len(setup.sites) < proto.MIN_ROUND_SITES:
            raise ProtocolError("secure aggregation: a round of this site alone would reveal its update; refusing")
        strangers = sorted(set(setup.sites) - set(self.peers.keys))
        if strangers:
            raise ProtocolError(f"secure aggregation: the server named site(s) {', '.join(strangers)} that this "
                                f"site's ticket for session {setup.session_id} does not admit; refusing the round")
        proto.check_threshold(setup.threshold, len(setup.sites))
        self.policy.check(setup)
        if setup.weight_cap < 1 or not setup.fits_the_field():
            raise ProtocolError(f"secure aggregation: {len(setup.sites)} sites x weight cap {setup.weight_cap} x "
                                f"{setup.levels} levels overflow the 2^{proto.FIELD_BITS} field; refusing the round")

    def _verified_neighbour_keys(self, config: dict[str, Scalar]) -> dict[str, tuple[bytes, ...]]:
        """The relayed keys of this site's neighbours, each pair checked against its signature."""
        names = [proto.PK_ENCRYPT, *(proto.PK_MASK_OF[slot] for slot in proto.SLOTS)]
        offered = {name: proto.fields_of(config, name) for name in (*names, proto.SIGNATURE)}
        strangers = set().union(*(o.keys() for o in offered.values())) - self.neighbours
        if strangers:
            raise ProtocolError(f"secure aggregation: keys of non-neighbour(s) {', '.join(sorted(strangers))}")
        keys: dict[str, tuple[bytes, ...]] = {}
        for peer in sorted(self.neighbours):
            values = [offered[name].get(peer) for name in names]
            if any(value is None for value in values):
                continue  # the peer dropped out at setup
            pair = tuple(bytes(v) for v in values)  # type: ignore[arg-type]
            signature = offered[proto.SIGNATURE].get(peer)
            if not keys_are_signed(self.peers.keys[peer], signature, self.round_setup, peer, pair):
                raise ProtocolError(f"secure aggregation: the keys relayed for {peer} are not signed by {peer}'s "
                                    "identity key for this round; refusing to share secrets with them")
            keys[peer] = pair
        flat = [key for pair in keys.values() for key in pair] + list(self._own_public_keys())
        if len(set(flat)) != len(flat):
            raise ProtocolError("secure aggregation: two sites announced the same public key")
        return keys

    def _require_threshold(self, count: int, what: str) -> None:
        if count < self.round_setup.threshold:
            raise ProtocolError(
                f"secure aggregation: {count} {what} (this site included) are below the threshold "
                f"{self.round_setup.threshold}"
            )

    # -- helpers --------------------------------------------------------------------------
    @property
    def round_setup(self) -> proto.RoundSetup:
        """The current round's parameters, as checked at ``setup``."""
        if self.setup_params is None:
            raise ProtocolError("secure aggregation: no setup for this round")
        return self.setup_params

    def _own_public_keys(self) -> tuple[bytes, ...]:
        assert self.encryption_key is not None
        return (masking.public_bytes(self.encryption_key),
                *(masking.public_bytes(self.slots[slot].mask_key) for slot in proto.SLOTS))

    def _keep_shares(self, owner: str, shares: list[bytes]) -> None:
        """``shares`` holds (seed, mask key) per slot, in ``proto.SLOTS`` order."""
        for index, slot in enumerate(proto.SLOTS):
            self.slots[slot].seed_shares[owner] = shares[2 * index]
            self.slots[slot].key_shares[owner] = shares[2 * index + 1]

    def _encryption_key_with(self, peer: str) -> bytes:
        assert self.encryption_key is not None
        return masking.share_encryption_key(self.encryption_key, self.public_keys[peer][0])

    def _x(self, site: str) -> int:
        """The site's identity in share messages: its position in the round's site list, from 1."""
        return self.round_setup.sites.index(site) + 1

    def _sign_towards(self, peer: str) -> int:
        """The earlier of two sites adds their pairwise mask, the later subtracts it."""
        return +1 if self._x(self.site) < self._x(peer) else -1
