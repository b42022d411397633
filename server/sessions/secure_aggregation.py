"""The server's side of one secure-aggregation round: relay keys and shares, then unmask the sum.

The server only routes what sites encrypt to each other and, at the end, rebuilds the secrets
it needs to cancel the masks of the sum (self-mask seeds of the sites whose vector arrived,
mask keys of the sites that dropped after sharing them). Fields and stages are defined in
``shared.secagg_protocol``; see ``server.sessions.secure_fedprox.SecureFedProx`` for the whole protocol.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from flwr.common import GetPropertiesIns, Scalar
from flwr.common.secure_aggregation.crypto.shamir import combine_shares
from flwr.server.client_proxy import ClientProxy

from shared import secagg_masking as masking
from shared import secagg_protocol as proto
from shared.errors import SessionFailedError

log = logging.getLogger(__name__)

Properties = dict[str, Scalar]


class SecureAggregationRound:
    """Stages 0, 1 and 3 of one round, driven over the admitted sites' ``ClientProxy``.

    Parameters
    ----------
    server_round : int
        The Flower round; sites refuse stages of any other round.
    proxies : dict[str, ClientProxy]
        The round's sites (admitted, sampled) by name.
    threshold : int
        Shares that rebuild a secret; a stage that leaves fewer sites fails the round.
    clip_range, levels : float, int
        Quantisation sent to the sites (``shared.secagg_masking``).
    timeout_s : float
        How long each stage waits for a site before counting it as dropped.
    """

    def __init__(
        self,
        server_round: int,
        proxies: dict[str, ClientProxy],
        *,
        threshold: int,
        clip_range: float,
        levels: int,
        timeout_s: float,
    ) -> None:
        self.round = server_round
        self.proxies = dict(sorted(proxies.items()))
        self.threshold = threshold
        self.clip_range = clip_range
        self.levels = levels
        self.timeout_s = timeout_s
        self.public_keys: dict[str, tuple[bytes, bytes]] = {}  # site -> (encryption, mask)
        self.sharing: list[str] = []  # U2: sites whose shares reached the others

    @property
    def sites(self) -> list[str]:
        return list(self.proxies)

    def exchange_keys(self) -> dict[str, Properties]:
        """Stages 0 and 1; returns, per site that shared its secrets, the shares to pass in ``fit``."""
        setup = {proto.ROUND: self.round, proto.SITES: proto.join_sites(self.sites),
                 proto.THRESHOLD: self.threshold, proto.CLIP_RANGE: self.clip_range,
                 proto.LEVELS: self.levels}
        replies = self._ask(proto.SETUP, self.sites, setup)
        self.public_keys = {
            site: (reply[proto.PK_ENCRYPT], reply[proto.PK_MASK])
            for site, reply in replies.items()
            if self._has_keys(site, reply)
        }
        self._require(len(self.public_keys), "the key exchange")
        announced: Properties = {
            proto.ROUND: self.round,
            **{proto.field(proto.PK_ENCRYPT, s): k[0] for s, k in self.public_keys.items()},
            **{proto.field(proto.PK_MASK, s): k[1] for s, k in self.public_keys.items()},
        }
        shares = self._ask(proto.SHARE_KEYS, list(self.public_keys), announced)
        self.sharing = sorted(site for site, reply in shares.items() if self._shares_all(site, reply))
        self._require(len(self.sharing), "the share exchange")
        return {
            receiver: {
                proto.STAGE: proto.MASK,
                proto.ROUND: self.round,
                **{proto.field(proto.SHARE, sender): shares[sender][proto.field(proto.SHARE, receiver)]
                   for sender in self.sharing if sender != receiver},
            }
            for receiver in self.sharing
        }

    def unmask(self, masked: dict[str, list[np.ndarray]], examples: dict[str, int]) -> list[np.ndarray]:
        """Stage 3: the example-weighted mean of the survivors' updates, and nothing else."""
        survivors = sorted(s for s in masked if s in self.sharing)
        dropped = sorted(set(self.sharing) - set(survivors))
        self._require(len(survivors), "masking")
        request = {proto.ROUND: self.round, proto.SURVIVORS: proto.join_sites(survivors),
                   proto.DROPPED: proto.join_sites(dropped)}
        replies = self._ask(proto.UNMASK, survivors, request)
        self._require(len(replies), "unmasking")
        if dropped:
            log.info("round %d: secure aggregation recovers the masks of dropped site(s) %s",
                     self.round, ", ".join(dropped))
        shapes = [m.shape for m in masked[survivors[0]]]
        total = masking.zeros(shapes)
        for site in survivors:
            masking.accumulate(total, masked[site], +1)
            seed = self._rebuild(replies, proto.SEED_SHARE, site)
            masking.accumulate(total, masking.prg_mask(seed, shapes), -1)
        for site in dropped:
            key = X25519PrivateKey.from_private_bytes(self._rebuild(replies, proto.KEY_SHARE, site))
            for survivor in survivors:
                seed = masking.pairwise_seed(key, self.public_keys[survivor][1])
                # The survivor added the mask when it comes first, so take it off the same way.
                sign = -1 if self.sites.index(survivor) < self.sites.index(site) else +1
                masking.accumulate(total, masking.prg_mask(seed, shapes), sign)
        total_examples = sum(examples[s] for s in survivors)
        masking.check_capacity(total_examples, self.levels)
        return masking.decode_mean(total, total_examples, self.clip_range, self.levels)

    # -- helpers -------------------------------------------------------------------------
    def _ask(self, stage: str, sites: list[str], config: Properties) -> dict[str, Properties]:
        """Send one stage to ``sites`` at once; a site that fails or times out is dropped."""
        ins = GetPropertiesIns(config={proto.STAGE: stage, **config})

        def call(site: str) -> Properties:
            return self.proxies[site].get_properties(ins, timeout=self.timeout_s, group_id=self.round).properties

        replies: dict[str, Properties] = {}
        with ThreadPoolExecutor(max_workers=max(1, len(sites))) as pool:
            futures = {site: pool.submit(call, site) for site in sites}
            for site, future in futures.items():
                try:
                    replies[site] = future.result()
                except Exception as exc:  # a site that cannot answer has dropped out of the round
                    log.warning("round %d secure aggregation %s: %s dropped (%s: %s)",
                                self.round, stage, site, exc.__class__.__name__, exc)
        return replies

    def _has_keys(self, site: str, reply: Properties) -> bool:
        """A site enters the round only with two raw X25519 public keys (an old client has none)."""
        valid = all(isinstance(reply.get(k), bytes) and len(reply[k]) == 32
                    for k in (proto.PK_ENCRYPT, proto.PK_MASK))
        if not valid:
            log.warning("round %d secure aggregation: %s left out (no public keys)", self.round, site)
        return valid

    def _shares_all(self, sender: str, reply: Properties) -> bool:
        """A site enters the round only with a share message for every other site (bytes each)."""
        expected = [proto.field(proto.SHARE, s) for s in self.public_keys if s != sender]
        complete = all(isinstance(reply.get(key), bytes) for key in expected)
        if not complete:
            log.warning("round %d secure aggregation: %s left out (incomplete shares)", self.round, sender)
        return complete

    def _require(self, alive: int, stage: str) -> None:
        if alive < self.threshold:
            raise SessionFailedError(
                f"round {self.round}: secure aggregation: only {alive} of {len(self.sites)} sites "
                f"survived {stage}, threshold {self.threshold}"
            )

    def _rebuild(self, replies: dict[str, Properties], prefix: str, owner: str) -> bytes:
        """Combine ``threshold`` of the shares the sites revealed of ``owner``'s secret."""
        key = proto.field(prefix, owner)
        shares = [bytes(reply[key]) for reply in replies.values() if isinstance(reply.get(key), bytes)]
        self._require(len(shares), f"unmasking (shares of {owner})")
        return combine_shares(shares[: self.threshold])
