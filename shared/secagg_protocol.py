"""Stages, message fields and parameters of secure aggregation, the one place both sides read.

The server drives the stages of SecAgg+ (Bonawitz et al. 2017; Bell et al. 2020) over the
session's own Flower transport. Each round has two *slots*, one masked vector each: ``fit`` (the
weight update plus ``FIT_EXTRAS``) and ``evaluate`` (``EVALUATE_EXTRAS`` only: validation
counts and loss, which so never leave a site in clear). Every slot has its own self-mask seed and
mask key pair, so unmasking one slot never helps to unmask the other.

==================  ===================================  ==========================================
stage               server -> site (config)              site -> server (properties / result)
==================  ===================================  ==========================================
``setup``           ROUND, SESSION, SITES, THRESHOLD,     PK_ENCRYPT, PK_MASK, PK_MASK_EVALUATE (raw
                    CLIP_RANGE, LEVELS, WEIGHT_CAP        X25519, 32 B), SIGNATURE (Ed25519, by the
                                                          site's registered identity key)
``share_keys``      ROUND, and for each neighbour ``u``:  ``SHARE:<u>``: a Fernet token holding its
                    ``PK_ENCRYPT:<u>``, ``PK_MASK:<u>``,   Shamir shares of both slots' seeds and
                    ``PK_MASK_EVALUATE:<u>``,             mask keys meant for neighbour ``u``
                    ``SIGNATURE:<u>``
``mask`` (fit)      ROUND, ``SHARE:<u>`` from each        FitRes.parameters: the masked update in
                    neighbour that shared                 Z_(2^32) (uint32) and ``FIT_EXTRAS`` in
                                                          Z_(2^64) (uint64)
``unmask``          ROUND, SURVIVORS, DROPPED (of this    ``SEED_SHARE:<u>`` per survivor,
                    site's neighbourhood, comma-joined)   ``KEY_SHARE:<u>`` per dropped neighbour
``mask_evaluate``   ROUND (on ``evaluate``)               EvaluateRes.metrics[MASKED]: masked
                                                          ``EVALUATE_EXTRAS`` (uint64 bytes)
``unmask_evaluate`` as ``unmask``, for the evaluate slot  as ``unmask``
==================  ===================================  ==========================================

SITES fixes the order of the round's sites; a site's position + 1 is its identity in share
messages, and of two neighbours the earlier one adds their pairwise mask, the later subtracts
it. Who neighbours whom is ``shared.secagg_graph``. Site names match
``[A-Za-z0-9][A-Za-z0-9_.-]*`` (the store's rule), so ``:`` and ``,`` are free to build field
names and lists.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from shared.errors import ConfigError, ProtocolError
from shared.secagg_graph import neighbourhood_size

STAGE = "secagg_stage"
SETUP = "setup"
SHARE_KEYS = "share_keys"
MASK = "mask"
UNMASK = "unmask"
MASK_EVALUATE = "mask_evaluate"
UNMASK_EVALUATE = "unmask_evaluate"
#: The order a site accepts the stages of one round in (it may skip ahead, never go back).
STAGES = (SETUP, SHARE_KEYS, MASK, UNMASK, MASK_EVALUATE, UNMASK_EVALUATE)

FIT = "fit"
EVALUATE = "evaluate"
SLOTS = (FIT, EVALUATE)
MASK_STAGE = {FIT: MASK, EVALUATE: MASK_EVALUATE}
UNMASK_STAGE = {FIT: UNMASK, EVALUATE: UNMASK_EVALUATE}

ROUND = "secagg_round"
SESSION = "secagg_session"
SITES = "secagg_sites"
THRESHOLD = "secagg_threshold"
CLIP_RANGE = "secagg_clip_range"
LEVELS = "secagg_levels"
WEIGHT_CAP = "secagg_weight_cap"
PK_ENCRYPT = "secagg_pk_encrypt"
PK_MASK = "secagg_pk_mask"
PK_MASK_EVALUATE = "secagg_pk_mask_evaluate"
PK_MASK_OF = {FIT: PK_MASK, EVALUATE: PK_MASK_EVALUATE}
SIGNATURE = "secagg_signature"
SHARE = "secagg_share"
SURVIVORS = "secagg_survivors"
DROPPED = "secagg_dropped"
SEED_SHARE = "secagg_seed_share"
KEY_SHARE = "secagg_key_share"
MASKED = "secagg_masked"

#: Each coordinate of a site's update (new weights - global weights) is clipped to +-this range.
DEFAULT_CLIP_RANGE = 4.0
#: A site's weight in the mean is its example count, capped here: the cap and the number of
#: sites fix how many quantisation levels fit in the field (``levels_for``).
DEFAULT_WEIGHT_CAP = 1 << 14
#: What a site accepts from the server unless its profile narrows it: a clip range that keeps
#: updates meaningful, and levels fine enough to matter.
ACCEPTED_CLIP_RANGE = (1e-3, 1e3)
ACCEPTED_LEVELS = (1 << 8, 1 << 30)
#: Masked updates live in Z_(2^32) (uint32: as many bytes as float32 weights).
FIELD_BITS = 32
#: A site refuses a masked round with fewer sites: the "sum" of one site is its update.
MIN_ROUND_SITES = 2
#: Sessions with at least this many sites use secure aggregation unless the admin says otherwise.
DEFAULT_MIN_SITES = 3
#: The only clear metrics of a masked evaluate result: the proof of admission, nothing about data.
CLEAR_EVALUATE_METRICS = ("site", "session_secret")


@dataclass(frozen=True)
class ExtraSum:
    """A scalar summed over the sites inside the secure sum: ``round(value * scale)`` in Z_(2^64).

    Integers (counts) are exact with ``scale`` 1; a float is kept to 1/scale per site. The sum
    must stay below 2^63 / scale in magnitude (it is read back as a signed integer).
    """

    name: str
    scale: float = 1.0


#: Appended to the fit slot's vector. ``weight`` (the site's example count, capped) is always
#: first: the server divides the weighted sum by its total, never learning one site's count;
#: ``examples`` is the uncapped count. A metric the site's training returns under another name
#: listed here leaves only in the sum.
FIT_EXTRAS = (ExtraSum("weight"), ExtraSum("examples"))
#: The evaluate slot's vector: validation count, correct predictions, loss summed over examples.
EVALUATE_EXTRAS = (ExtraSum("examples"), ExtraSum("correct"), ExtraSum("loss_sum", float(1 << 20)))


@dataclass(frozen=True)
class RoundSetup:
    """What the server fixes for one round at ``setup``; every site signs its keys together with it,
    so a peer that verifies the signature also knows both were given the same round."""

    session_id: int
    round: int
    sites: tuple[str, ...]
    threshold: int
    clip_range: float
    levels: int
    weight_cap: int

    def to_config(self) -> dict[str, int | float | str]:
        return {ROUND: self.round, SESSION: self.session_id, SITES: join_sites(self.sites),
                THRESHOLD: self.threshold, CLIP_RANGE: self.clip_range, LEVELS: self.levels,
                WEIGHT_CAP: self.weight_cap}

    def fits_the_field(self) -> bool:
        """Whether every site at the weight cap, all at the top level, still sums below 2^32."""
        return len(self.sites) * self.weight_cap * self.levels < 1 << FIELD_BITS

    @classmethod
    def from_config(cls, config: dict[str, object]) -> RoundSetup:
        try:
            return cls(session_id=int(config[SESSION]), round=int(config[ROUND]),  # type: ignore[call-overload]
                       sites=tuple(split_sites(config[SITES])), threshold=int(config[THRESHOLD]),  # type: ignore[call-overload]
                       clip_range=float(config[CLIP_RANGE]), levels=int(config[LEVELS]),  # type: ignore[arg-type, call-overload]
                       weight_cap=int(config[WEIGHT_CAP]))  # type: ignore[call-overload]
        except (KeyError, TypeError, ValueError) as exc:
            raise ProtocolError(f"secure aggregation: incomplete setup ({exc.__class__.__name__}: {exc})") from None


def field(prefix: str, site: str) -> str:
    """The config/properties key of ``prefix`` about one site (``secagg_share:beta``)."""
    return f"{prefix}:{site}"


def fields_of(message: dict[str, object], prefix: str) -> dict[str, object]:
    """``{site: value}`` of every ``prefix:<site>`` key in a config or properties dict."""
    head = f"{prefix}:"
    return {key[len(head):]: value for key, value in message.items() if key.startswith(head)}


def join_sites(sites: Iterable[str]) -> str:
    return ",".join(sites)


def split_sites(text: object) -> list[str]:
    return [site for site in str(text).split(",") if site]


def levels_for(site_count: int, weight_cap: int = DEFAULT_WEIGHT_CAP) -> int:
    """The most quantisation levels with which ``site_count`` sites at ``weight_cap`` fit in 2^32."""
    return min(ACCEPTED_LEVELS[1], ((1 << FIELD_BITS) - 1) // (max(1, site_count) * weight_cap))


def enabled_by_default(site_count: int) -> bool:
    """Secure aggregation is on for sessions of three or more sites (with two, each learns the other's)."""
    return site_count >= DEFAULT_MIN_SITES


def default_threshold(site_count: int) -> int:
    """ceil(2k/3) of a neighbourhood of k: tolerates k/3 drop-outs, needs a strict majority of it."""
    size = neighbourhood_size(site_count)
    return min(size, max(2, math.ceil(2 * size / 3)))


def check_threshold(threshold: int, site_count: int) -> int:
    """Refuse thresholds at or below half a neighbourhood: two disjoint halves could then reveal
    both secrets of one site. Shares live within a neighbourhood of ``neighbourhood_size(n)``."""
    size = neighbourhood_size(site_count)
    if not size / 2 < threshold <= size:
        raise ConfigError(
            f"secure aggregation threshold {threshold} must be above half of the {size} site(s) of a "
            f"neighbourhood ({site_count} site(s) in all) and at most {size}",
            hint=f"Leave it unset for the default ({default_threshold(site_count)}).",
        )
    return threshold


def pack_shares(sender: int, receiver: int, shares: Sequence[bytes]) -> bytes:
    """The plaintext of one share message: sender and receiver positions, then each share."""
    return struct.pack("<QQ", sender, receiver) + b"".join(struct.pack("<I", len(s)) + s for s in shares)


def unpack_shares(plaintext: bytes) -> tuple[int, int, list[bytes]]:
    """Inverse of ``pack_shares``; a malformed message is a ``ProtocolError``."""
    try:
        sender, receiver = struct.unpack_from("<QQ", plaintext)
        shares, offset = [], 16
        while offset < len(plaintext):
            (size,) = struct.unpack_from("<I", plaintext, offset)
            share = plaintext[offset + 4: offset + 4 + size]
            if len(share) != size:
                raise struct.error("truncated share")
            shares.append(share)
            offset += 4 + size
    except struct.error as exc:
        raise ProtocolError(f"secure aggregation: malformed share message ({exc})") from None
    return sender, receiver, shares
