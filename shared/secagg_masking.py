"""The arithmetic of secure aggregation that sites and server must do identically.

Key agreement is X25519 (``cryptography``) followed by HKDF-SHA256 with a purpose label, so the
key that encrypts share messages and the seed of a pairwise mask never coincide. Masks are the
ChaCha20 keystream of a 256-bit seed (``cryptography``); Flower's ``pseudo_rand_gen`` is not used
because it folds the seed into 32 bits for numpy's Mersenne Twister, which a server could search
exhaustively. Quantisation is Flower's scheme (stochastic rounding, so the error is unbiased)
written as ``floor(x + U)`` with U uniform in [0, 1): in-place float64 operations straight into
the field, several times faster than Flower's ``quantize`` (legacy global RNG, int32 detour).
Shamir sharing is pycryptodome's (``shared.secagg_shamir``); Fernet comes from
``flwr.common.secure_aggregation``.

The update lives in Z_(2^32) (uint32, as Flower's SecAgg+ uses): a masked vector is as many
bytes as the float32 weights a plain round sends, and bytes on the wire are what a round costs
(a plain round that sends float64 takes as long as a secure one with 64-bit elements). The
price is precision: the sum must fit in 32 bits, so each site's weight is its example count
capped at the round's ``weight_cap`` ``W`` and the levels are ``L = floor((2^32 - 1) / (m W))``
for ``m`` sites (``shared.secagg_protocol.levels_for``). Encoding of one site's update ``d``
(new weights - global weights, float64) with weight ``w = min(n, W)``::

    q = floor((clip(d, -c, c) + c) * L / 2c + U)   # integers in [0, L], E[q] = the real value
    x = w * q  in Z_(2^32)                          # exact: sum of w_i * L stays below 2^32

and of the sum ``S = sum_i w_i q_i`` over ``w = sum_i w_i``::

    mean d = (S / w) * 2c / L - c

Per coordinate, when no |d_i| exceeds c, ``|mean_secure - mean_plain| <= 2c / L`` (each q_i is
within one step 2c/L of its real value; a weighted mean of such errors is too). At 5 sites and
``W = 2^14`` that is 1.5e-4 for ``c = 4``: well below the DP noise of an update.

Extra scalar sums (``shared.secagg_protocol.ExtraSum``) ride in one more array at the end of a
slot's vector, in Z_(2^64): ``round(value * scale)`` as a two's-complement integer, read back from
the sum as int64. The weight and the example count are the fit slot's first extras, so no site's
count travels alone.
"""

from __future__ import annotations

import base64
import functools
from collections.abc import Iterable, Sequence

import numpy as np
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import (
    X25519PrivateKey,
    X25519PublicKey,
)
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from shared import secagg_protocol as proto
from shared.secagg_protocol import FIELD_BITS, ExtraSum

#: The update's field, Z_(2^FIELD_BITS); numpy's unsigned arithmetic wraps exactly there.
FIELD = np.uint32
#: The extras' field, Z_(2^64): sums of counts and fixed-point values need the room.
EXTRAS_FIELD = np.uint64
_ALIGN = 8
ENCRYPTION_PURPOSE = b"fl-secagg share encryption"
MASK_PURPOSE = b"fl-secagg pairwise mask"
_ZERO_NONCE = bytes(16)  # every seed is fresh each round and expands exactly one mask


def private_bytes(key: X25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )


def public_bytes(key: X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def agree(private_key: X25519PrivateKey, peer_public: bytes, purpose: bytes) -> bytes:
    """A 32-byte secret both ends of an X25519 pair derive alike, bound to ``purpose``."""
    shared = private_key.exchange(X25519PublicKey.from_public_bytes(peer_public))
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=purpose).derive(shared)


def share_encryption_key(private_key: X25519PrivateKey, peer_public: bytes) -> bytes:
    """The Fernet key (url-safe base64 of 32 bytes) for share messages between two sites."""
    return base64.urlsafe_b64encode(agree(private_key, peer_public, ENCRYPTION_PURPOSE))


def pairwise_seed(private_key: X25519PrivateKey, peer_public: bytes) -> bytes:
    """The seed of two sites' pairwise mask; the server can rebuild it from a dropped site's key."""
    return agree(private_key, peer_public, MASK_PURPOSE)


def apply_masks(vector: list[np.ndarray], masks: Iterable[tuple[bytes, int]]) -> None:
    """``vector += sign * PRG(seed)`` for each ``(seed, sign)``, in place, each array in its own field.

    PRG(seed) is the ChaCha20 keystream of the 32-byte seed, laid over the vector's arrays in
    order (each at an 8-byte boundary) and read in each array's dtype; one scratch buffer serves
    every seed (no allocation per mask).
    """
    offsets, size = [], 0
    for part in vector:
        offsets.append(size)
        size += -(-part.nbytes // _ALIGN) * _ALIGN
    scratch = np.empty(size, np.uint8)
    views = [scratch[start: start + part.nbytes].view(part.dtype).reshape(part.shape)
             for start, part in zip(offsets, vector)]
    for seed, sign in masks:
        stream = Cipher(algorithms.ChaCha20(seed, _ZERO_NONCE), mode=None).encryptor()
        stream.update_into(_zero_bytes(scratch.nbytes), scratch)  # no copies
        accumulate(vector, views, sign)


@functools.lru_cache(maxsize=4)
def _zero_bytes(size: int) -> bytes:
    """The keystream is the encryption of zeros; one model size reuses one zero buffer."""
    return bytes(size)


def accumulate(total: list[np.ndarray], mask: list[np.ndarray], sign: int) -> None:
    """``total += sign * mask`` in place, in each array's field (unsigned arrays wrap, without warnings)."""
    for t, m in zip(total, mask):
        (np.add if sign > 0 else np.subtract)(t, m, out=t)


def encode(delta: list[np.ndarray], weight: int, clip_range: float, levels: int) -> list[np.ndarray]:
    """Clip, quantise (stochastic rounding) and scale one site's update by its weight into Z_(2^32)."""
    check_capacity(weight, levels)
    rng = np.random.default_rng()  # rounding noise need not be secret, only unbiased
    step = levels / (2 * clip_range)
    encoded = []
    for d in delta:
        # float64: float32 cannot hold fractions of a step. d * L/2c + L/2 = (d + c) * L/2c.
        x = np.multiply(d, step, dtype=np.float64)
        x += levels / 2
        np.clip(x, 0, levels, out=x)
        # floor(x + U) for U uniform in [0, 1) (float32: biased by at most 2^-24 of a step); x >= 0,
        # so the cast's truncation is the floor, and x + U < L + 1 keeps q within [0, L].
        x += rng.random(x.shape, dtype=np.float32)
        q = x.astype(FIELD)
        q *= FIELD(weight)
        encoded.append(q)
    return encoded


def clipped_coordinates(delta: list[np.ndarray], clip_range: float) -> int:
    """How many coordinates of ``delta`` lie outside +-clip_range (two reductions when none do)."""
    return sum(int(np.count_nonzero(np.abs(d) > clip_range)) for d in delta
               if d.size and (d.max() > clip_range or d.min() < -clip_range))


def encode_extras(values: dict[str, float], spec: Sequence[ExtraSum]) -> np.ndarray:
    """The extras array of one site: each named value in fixed point, missing ones as 0."""
    fixed = [round(float(values.get(extra.name, 0)) * extra.scale) for extra in spec]
    return np.array(fixed, np.int64).view(EXTRAS_FIELD)


def decode_extras(total: np.ndarray, spec: Sequence[ExtraSum]) -> dict[str, float]:
    """The unmasked extras sum, by name (integers stay exact floats below 2^53)."""
    signed = np.asarray(total, EXTRAS_FIELD).view(np.int64)
    return {extra.name: float(value) / extra.scale for extra, value in zip(spec, signed.tolist())}


def decode_update(
    total: list[np.ndarray], clip_range: float, levels: int
) -> tuple[list[np.ndarray], dict[str, float]]:
    """The weighted mean update and the ``FIT_EXTRAS`` sums of an unmasked fit-slot sum."""
    sums = decode_extras(total[-1], proto.FIT_EXTRAS)
    weight = int(sums["weight"])
    if weight <= 0:
        raise ValueError(f"the summed weight is {weight}")
    check_capacity(weight, levels)
    return decode_mean(total[:-1], weight, clip_range, levels), sums


def decode_mean(total: list[np.ndarray], total_weight: int, clip_range: float, levels: int) -> list[np.ndarray]:
    """The weighted mean update from the unmasked sum ``sum_i w_i q_i``."""
    decoded = []
    for t in total:
        x = t.astype(np.float64)
        x *= 2 * clip_range / (levels * total_weight)
        x -= clip_range
        decoded.append(x)
    return decoded


def check_capacity(total_weight: int, levels: int) -> None:
    """The unmasked sum must not wrap around the field, or it cannot be told from noise."""
    if total_weight * levels >= 1 << FIELD_BITS:
        raise ValueError(f"a weight of {total_weight} x {levels} levels overflows the 2^{FIELD_BITS} field")


def zeros_like(vector: list[np.ndarray]) -> list[np.ndarray]:
    return [np.zeros(part.shape, part.dtype) for part in vector]
