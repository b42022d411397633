"""The server's side of one secure-aggregation round: relay signed keys and shares, unmask sums.

The server only routes what sites sign and encrypt to each other and, at the end of each slot
(fit, evaluate), rebuilds the secrets it needs to cancel the masks of the sum: self-mask seeds of
the sites whose vector arrived, mask keys of the sites that dropped after sharing them. Each
site talks only to its neighbours (``shared.secagg_graph``), so a site's work and bytes grow
like log n. Fields and stages are defined in ``shared.secagg_protocol``; see
``server.sessions.secure_fedprox.SecureFedProx`` for the whole protocol.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import NoReturn

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from flwr.common import GetPropertiesIns, Scalar
from flwr.server.client_proxy import ClientProxy

from shared import secagg_masking as masking
from shared import secagg_protocol as proto
from shared import secagg_shamir
from shared.errors import SessionFailedError
from shared.secagg_graph import is_connected, neighbourhoods
from shared.secagg_identity import keys_are_signed

log = logging.getLogger(__name__)

Properties = dict[str, Scalar]
#: ``(site, reason)`` for every site left out of a round's secure aggregation.
LeaveLogger = Callable[[str, str], None]
_KEY_FIELDS = (proto.PK_ENCRYPT, *(proto.PK_MASK_OF[slot] for slot in proto.SLOTS))


class SecureAggregationRound:
    """Stages 0, 1, 3 and 5 of one round, driven over the admitted sites' ``ClientProxy``.

    Parameters
    ----------
    setup : RoundSetup
        Session, round, the round's sites (their order), threshold within a neighbourhood, quantisation.
    proxies : dict[str, ClientProxy]
        The round's sites (admitted, sampled) by name.
    identity_keys : Mapping[str, Ed25519PublicKey]
        Each site's registered identity key; a site whose keys it did not sign is left out.
    timeout_s : float
        How long each stage waits for a site before counting it as dropped.
    on_leave : LeaveLogger
        Told about every site left out, and why.
    """

    def __init__(
        self,
        setup: proto.RoundSetup,
        proxies: Mapping[str, ClientProxy],
        *,
        identity_keys: Mapping[str, Ed25519PublicKey],
        timeout_s: float,
        on_leave: LeaveLogger | None = None,
    ) -> None:
        self.setup = setup
        self.proxies = dict(proxies)
        self.identity_keys = identity_keys
        self.timeout_s = timeout_s
        self.on_leave = on_leave or (lambda site, reason: None)
        self.graph = neighbourhoods(setup.sites, setup.session_id, setup.round)
        self.public_keys: dict[str, tuple[bytes, ...]] = {}  # site -> (encrypt, mask fit, mask evaluate)
        self.signatures: dict[str, bytes] = {}
        self.sharing: list[str] = []  # sites whose shares reached all their sharing neighbours

    @property
    def round(self) -> int:
        return self.setup.round

    @property
    def threshold(self) -> int:
        return self.setup.threshold

    def exchange_keys(self) -> dict[str, Properties]:
        """Stages 0 and 1; returns, per site that shared its secrets, the shares to pass in ``fit``."""
        setup = self.setup.to_config()
        replies = self._ask(proto.SETUP, {site: setup for site in self.setup.sites})
        for site, reply in replies.items():
            self._accept_keys(site, reply)
        self._require(len(self.public_keys), "the key exchange")
        shares = self._ask(proto.SHARE_KEYS, {site: self._announce(site) for site in self.public_keys})
        sharing = {site for site, reply in shares.items() if self._shares_all(site, reply)}
        self.sharing = sorted(self._with_enough_neighbours(sharing))
        self._require(len(self.sharing), "the share exchange")
        return {
            receiver: {
                proto.STAGE: proto.MASK,
                proto.ROUND: self.round,
                **{proto.field(proto.SHARE, sender): shares[sender][proto.field(proto.SHARE, receiver)]
                   for sender in self.graph[receiver] & set(self.sharing)},
            }
            for receiver in self.sharing
        }

    def evaluate_config(self) -> Properties:
        """What an ``evaluate`` instruction carries to have its metrics masked in the evaluate slot."""
        return {proto.STAGE: proto.MASK_EVALUATE, proto.ROUND: self.round}

    def unmask(self, slot: str, masked: Mapping[str, list[np.ndarray]]) -> list[np.ndarray]:
        """Stage 3 (fit) or 5 (evaluate): the sum of the survivors' vectors in their fields, masks removed."""
        survivors = sorted(s for s in masked if s in self.sharing)
        dropped = sorted(set(self.sharing) - set(survivors))
        self._require(len(survivors), f"masking ({slot})" if slot != proto.FIT else "masking")
        self._check_recoverable(survivors, dropped, slot)
        requests = {
            site: {proto.ROUND: self.round,
                   proto.SURVIVORS: proto.join_sites(sorted((self.graph[site] & set(survivors)) | {site})),
                   proto.DROPPED: proto.join_sites(sorted(self.graph[site] & set(dropped)))}
            for site in survivors
        }
        replies = self._ask(proto.UNMASK_STAGE[slot], requests)
        self._require(len(replies), "unmasking" if slot == proto.FIT else f"unmasking ({slot})")
        if dropped:
            log.info("round %d %s: secure aggregation recovers the masks of dropped site(s) %s",
                     self.round, slot, ", ".join(dropped))
        total = masking.zeros_like(masked[survivors[0]])
        for site in survivors:
            masking.accumulate(total, masked[site], +1)
        masks = [(self._rebuild(replies, proto.SEED_SHARE, site), -1) for site in survivors]
        key_index = 1 + proto.SLOTS.index(slot)
        for site in dropped:
            key = X25519PrivateKey.from_private_bytes(self._rebuild(replies, proto.KEY_SHARE, site))
            # Each survivor added the pairwise mask when it comes first: take it off the same way.
            masks += [(masking.pairwise_seed(key, self.public_keys[survivor][key_index]),
                       -1 if self._position(survivor) < self._position(site) else +1)
                      for survivor in sorted(self.graph[site] & set(survivors))]
        masking.apply_masks(total, masks)
        return total

    # -- stages' checks ---------------------------------------------------------------------
    def _accept_keys(self, site: str, reply: Properties) -> None:
        """A site enters the round only with raw X25519 keys signed by its registered identity key."""
        keys = tuple(reply.get(name) for name in _KEY_FIELDS)
        if not all(isinstance(k, bytes) and len(k) == 32 for k in keys):
            self._leave(site, "no public keys for secure aggregation")
            return
        identity = self.identity_keys.get(site)
        signature = reply.get(proto.SIGNATURE)
        if identity is None:
            self._leave(site, "no registered identity key (the site must run setup to register one)")
        elif not keys_are_signed(identity, signature, self.setup, site, keys):  # type: ignore[arg-type]
            self._leave(site, "its keys are not signed by its registered identity key")
        else:
            self.public_keys[site] = keys  # type: ignore[assignment]
            self.signatures[site] = signature  # type: ignore[assignment]

    def _announce(self, site: str) -> Properties:
        """Stage 1 config for ``site``: its keyed neighbours' public keys and signatures."""
        config: Properties = {proto.ROUND: self.round}
        for peer in sorted(self.graph[site] & self.public_keys.keys()):
            for name, key in zip(_KEY_FIELDS, self.public_keys[peer]):
                config[proto.field(name, peer)] = key
            config[proto.field(proto.SIGNATURE, peer)] = self.signatures[peer]
        return config

    def _shares_all(self, sender: str, reply: Properties) -> bool:
        """A site goes on only with a share message for every keyed neighbour (bytes each)."""
        expected = [proto.field(proto.SHARE, s) for s in self.graph[sender] & self.public_keys.keys()]
        complete = all(isinstance(reply.get(key), bytes) for key in expected)
        if not complete:
            self._leave(sender, "incomplete shares")
        return complete

    def _with_enough_neighbours(self, sharing: set[str]) -> set[str]:
        """Leave out, until none is left, sites with fewer than ``threshold`` sharers in their neighbourhood:
        they would refuse to mask, and no one could rebuild their secrets."""
        sharing = set(sharing)
        while short := {s for s in sharing if len(self.graph[s] & sharing) + 1 < self.threshold}:
            for site in sorted(short):
                self._leave(site, f"fewer than {self.threshold} neighbours shared their secrets")
            sharing -= short
        return sharing

    def _check_recoverable(self, survivors: list[str], dropped: list[str], slot: str) -> None:
        """Before any share is revealed: every secret must be rebuildable, and no part of the
        survivors may be cut off from the rest (its sum could then be unmasked on its own)."""
        alive = set(survivors)
        for site in survivors:
            holders = len(self.graph[site] & alive) + 1
            if holders < self.threshold:
                self._fail(f"{slot}: {site} has {holders} surviving site(s) in its neighbourhood")
        for site in dropped:
            holders = len(self.graph[site] & alive)
            if holders < self.threshold:
                self._fail(f"{slot}: the secrets of dropped {site} are held by {holders} survivor(s)")
        if not is_connected(alive, self.graph):
            self._fail(f"{slot}: the surviving sites are split into groups with no masks between them")

    # -- helpers ----------------------------------------------------------------------------
    def _ask(self, stage: str, configs: Mapping[str, Properties]) -> dict[str, Properties]:
        """Send one stage to every site at once; a site that fails or times out is dropped."""
        def call(site: str) -> Properties:
            ins = GetPropertiesIns(config={proto.STAGE: stage, **configs[site]})
            return self.proxies[site].get_properties(ins, timeout=self.timeout_s, group_id=self.round).properties

        replies: dict[str, Properties] = {}
        with ThreadPoolExecutor(max_workers=max(1, len(configs))) as pool:
            futures = {site: pool.submit(call, site) for site in configs}
            for site, future in futures.items():
                try:
                    replies[site] = future.result()
                except Exception as exc:  # a site that cannot answer has dropped out of the round
                    log.warning("round %d secure aggregation %s: %s dropped (%s: %s)",
                                self.round, stage, site, exc.__class__.__name__, exc)
        return replies

    def _leave(self, site: str, reason: str) -> None:
        log.warning("round %d secure aggregation: %s left out (%s)", self.round, site, reason)
        self.on_leave(site, reason)

    def _require(self, alive: int, stage: str) -> None:
        if alive < self.threshold:
            self._fail(f"only {alive} of {len(self.setup.sites)} sites survived {stage}, threshold {self.threshold}")

    def _fail(self, problem: str) -> NoReturn:
        raise SessionFailedError(f"round {self.round}: secure aggregation: {problem}")

    def _rebuild(self, replies: dict[str, Properties], prefix: str, owner: str) -> bytes:
        """Combine ``threshold`` of the shares the sites revealed of ``owner``'s secret."""
        key = proto.field(prefix, owner)
        shares = [reply[key] for reply in replies.values()
                  if isinstance(reply.get(key), bytes) and len(reply[key]) == secagg_shamir.SHARE_BYTES]
        self._require(len(shares), f"unmasking (shares of {owner})")
        try:
            return secagg_shamir.combine(shares[: self.threshold])  # type: ignore[arg-type]
        except ValueError as exc:
            self._fail(f"unmasking: the shares of {owner} are unusable ({exc})")

    def _position(self, site: str) -> int:
        return self.setup.sites.index(site)
