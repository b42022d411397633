"""Stages, message fields and parameters of secure aggregation, the one place both sides read.

The server drives the stages of Bonawitz et al. (2017) over the session's own Flower transport:
stages 0, 1 and 3 are ``get_properties`` calls whose config carries the fields below (Flower
``Scalar`` values: str, int, float, bytes), stage 2 rides on the round's ``fit``.

=============  ==========================================  =========================================
stage          server -> site (config)                     site -> server (properties / FitRes)
=============  ==========================================  =========================================
``setup``      ROUND, SITES, THRESHOLD, CLIP_RANGE, LEVELS  PK_ENCRYPT, PK_MASK (raw X25519, 32 B)
``share_keys`` ROUND, ``PK_ENCRYPT:<site>``,               ``SHARE:<dst>``: Fernet token holding the
               ``PK_MASK:<site>`` for every site           Shamir shares of its self-mask seed and
                                                           mask private key meant for ``dst``
``mask`` (fit) ROUND, ``SHARE:<src>`` for every other      FitRes.parameters: the masked update in
               site that finished ``share_keys``           Z_(2^64) (uint64), num_examples, metrics
``unmask``     ROUND, SURVIVORS, DROPPED (comma-joined)    ``SEED_SHARE:<site>`` per survivor,
                                                           ``KEY_SHARE:<site>`` per dropped site
=============  ==========================================  =========================================

SITES fixes the order of the round's sites; a site's position + 1 is its Shamir x-coordinate,
and of two sites the earlier one adds their pairwise mask, the later one subtracts it. Site
names match ``[A-Za-z0-9][A-Za-z0-9_.-]*`` (the store's rule), so ``:`` and ``,`` are free to
build field names and lists.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from shared.errors import ConfigError

STAGE = "secagg_stage"
SETUP = "setup"
SHARE_KEYS = "share_keys"
MASK = "mask"
UNMASK = "unmask"
#: The order a site accepts the stages of one round in.
STAGES = (SETUP, SHARE_KEYS, MASK, UNMASK)

ROUND = "secagg_round"
SITES = "secagg_sites"
THRESHOLD = "secagg_threshold"
CLIP_RANGE = "secagg_clip_range"
LEVELS = "secagg_levels"
PK_ENCRYPT = "secagg_pk_encrypt"
PK_MASK = "secagg_pk_mask"
SHARE = "secagg_share"
SURVIVORS = "secagg_survivors"
DROPPED = "secagg_dropped"
SEED_SHARE = "secagg_seed_share"
KEY_SHARE = "secagg_key_share"

#: Each coordinate of a site's update (new weights - global weights) is clipped to +-this range.
DEFAULT_CLIP_RANGE = 4.0
#: Quantisation levels over [-clip, clip]: one step is 2*clip/LEVELS (Flower's quantize is int32).
DEFAULT_LEVELS = 1 << 30
#: Masked vectors live in Z_(2^64): numpy uint64 arithmetic wraps exactly there.
FIELD_BITS = 64
#: Sessions with at least this many sites use secure aggregation unless the admin says otherwise.
DEFAULT_MIN_SITES = 3


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


def enabled_by_default(site_count: int) -> bool:
    """Secure aggregation is on for sessions of three or more sites (with two, each learns the other's)."""
    return site_count >= DEFAULT_MIN_SITES


def default_threshold(site_count: int) -> int:
    """ceil(2n/3) shares rebuild a secret: tolerates n/3 drop-outs, needs a strict majority."""
    return min(site_count, max(2, math.ceil(2 * site_count / 3)))


def check_threshold(threshold: int, site_count: int) -> int:
    """Refuse thresholds at or below n/2: two disjoint halves could then reveal both secrets of a site."""
    if not site_count / 2 < threshold <= site_count:
        raise ConfigError(
            f"secure aggregation threshold {threshold} must be above half of the {site_count} site(s) "
            f"and at most {site_count}",
            hint=f"Leave it unset for the default ({default_threshold(site_count)}).",
        )
    return threshold
