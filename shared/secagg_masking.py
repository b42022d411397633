"""The arithmetic of secure aggregation that sites and server must do identically.

Key agreement is X25519 (``cryptography``) followed by HKDF-SHA256 with a purpose label, so the
key that encrypts share messages and the seed of a pairwise mask never coincide. Masks are the
ChaCha20 keystream of a 256-bit seed read as uint64 (``cryptography``); Flower's
``pseudo_rand_gen`` is not used because it folds the seed into 32 bits for numpy's Mersenne
Twister, which a server could search exhaustively. Quantisation is Flower's (stochastic
rounding, so the error is unbiased); Shamir sharing and Fernet come from
``flwr.common.secure_aggregation`` where they are used.

Encoding of one site's update ``d`` (new weights - global weights, float64) with ``n`` examples::

    q = quantize(clip(d, -c, c))           # integers in [0, L]
    x = n * q  in Z_(2^64)                 # exact: sum of n_i * L stays below 2^64

and of the sum ``S = sum_i n_i q_i`` over ``N = sum_i n_i`` examples::

    mean d = dequantize(S / N) = (S / N) * 2c / L - c

Per coordinate, when no |d_i| exceeds c, ``|mean_secure - mean_plain| <= 2c / L`` (each q_i is
within one step 2c/L of its real value; a weighted mean of such errors is too).

Extra scalar sums (``shared.secagg_protocol.ExtraSum``) ride in one more uint64 array at the
end of a slot's vector: ``round(value * scale)`` as a two's-complement integer, read back from
the sum as int64. ``N`` itself is the fit slot's first extra, so no site's count travels alone.
"""

from __future__ import annotations

import base64
import functools
from collections.abc import Sequence

import numpy as np
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import (
    X25519PrivateKey,
    X25519PublicKey,
)
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from flwr.common.secure_aggregation.quantization import dequantize, quantize

from shared import secagg_protocol as proto
from shared.secagg_protocol import FIELD_BITS, ExtraSum

FIELD = np.uint64
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


def prg_mask(seed: bytes, shapes: Sequence[tuple[int, ...]]) -> list[np.ndarray]:
    """Uniform elements of Z_(2^64) in ``shapes``, expanded from a 32-byte seed."""
    sizes = [int(np.prod(shape)) for shape in shapes]
    flat = np.empty(sum(sizes), FIELD)
    stream = Cipher(algorithms.ChaCha20(seed, _ZERO_NONCE), mode=None).encryptor()
    stream.update_into(_zero_bytes(flat.nbytes), memoryview(flat).cast("B"))  # no copies
    offsets = np.cumsum([0, *sizes])
    return [flat[start:end].reshape(shape) for start, end, shape in zip(offsets, offsets[1:], shapes)]


@functools.lru_cache(maxsize=4)
def _zero_bytes(size: int) -> bytes:
    """The keystream is the encryption of zeros; one model size reuses one zero buffer."""
    return bytes(size)


def accumulate(total: list[np.ndarray], mask: list[np.ndarray], sign: int) -> None:
    """``total += sign * mask`` in place, in Z_(2^64) (uint64 wraps; arrays raise no overflow warning)."""
    for t, m in zip(total, mask):
        (np.add if sign > 0 else np.subtract)(t, m, out=t)


def encode(delta: list[np.ndarray], examples: int, clip_range: float, levels: int) -> list[np.ndarray]:
    """Clip, quantise and scale one site's update by its example count into Z_(2^64)."""
    check_capacity(examples, levels)
    # float64 before quantising: float32 cannot hold fractions of a step near 2^30.
    quantized = quantize([np.asarray(d, np.float64) for d in delta], clip_range, levels)
    return [q.astype(FIELD) * FIELD(examples) for q in quantized]


def encode_extras(values: dict[str, float], spec: Sequence[ExtraSum]) -> np.ndarray:
    """The extras array of one site: each named value in fixed point, missing ones as 0."""
    fixed = [round(float(values.get(extra.name, 0)) * extra.scale) for extra in spec]
    return np.array(fixed, np.int64).view(FIELD)


def decode_extras(total: np.ndarray, spec: Sequence[ExtraSum]) -> dict[str, float]:
    """The unmasked extras sum, by name (integers stay exact floats below 2^53)."""
    signed = np.asarray(total, FIELD).view(np.int64)
    return {extra.name: float(value) / extra.scale for extra, value in zip(spec, signed.tolist())}


def decode_update(
    total: list[np.ndarray], clip_range: float, levels: int
) -> tuple[list[np.ndarray], dict[str, float]]:
    """The example-weighted mean update and the ``FIT_EXTRAS`` sums of an unmasked fit-slot sum."""
    sums = decode_extras(total[-1], proto.FIT_EXTRAS)
    examples = int(sums["examples"])
    if examples <= 0:
        raise ValueError(f"the summed example count is {examples}")
    check_capacity(examples, levels)
    return decode_mean(total[:-1], examples, clip_range, levels), sums


def decode_mean(
    total: list[np.ndarray], total_examples: int, clip_range: float, levels: int
) -> list[np.ndarray]:
    """The example-weighted mean update from the unmasked sum ``sum_i n_i q_i``."""
    return dequantize([t.astype(np.float64) / total_examples for t in total], clip_range, levels)


def check_capacity(total_examples: int, levels: int) -> None:
    """The unmasked sum must not wrap around the field, or it cannot be told from noise."""
    if total_examples * levels >= 1 << FIELD_BITS:
        raise ValueError(
            f"{total_examples} examples x {levels} levels overflow the 2^{FIELD_BITS} field"
        )


def zeros(shapes: Sequence[tuple[int, ...]]) -> list[np.ndarray]:
    return [np.zeros(shape, FIELD) for shape in shapes]
