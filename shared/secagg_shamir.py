"""Shamir secret sharing of secure aggregation's 32-byte secrets (seeds, X25519 private keys).

The field arithmetic is pycryptodome's ``Shamir`` (GF(2^128), 16-byte secrets), as in Flower's
``flwr.common.secure_aggregation.crypto.shamir``; this module only cuts a 32-byte secret into two
16-byte chunks and back, without Flower's padding and per-call thread pool (a third of the cost
when a server rebuilds dozens of secrets a round). A share is a 4-byte index followed by one
16-byte share per chunk.
"""

from __future__ import annotations

from collections.abc import Sequence

from Crypto.Protocol.SecretSharing import Shamir

CHUNK = 16
SECRET_BYTES = 32
SHARE_BYTES = 4 + SECRET_BYTES


def split(secret: bytes, threshold: int, count: int) -> list[bytes]:
    """``count`` shares of ``secret``; any ``threshold`` of them rebuild it, fewer reveal nothing."""
    if len(secret) != SECRET_BYTES:
        raise ValueError(f"a secret is {SECRET_BYTES} bytes, not {len(secret)}")
    chunks = [Shamir.split(threshold, count, secret[i: i + CHUNK], ssss=False)
              for i in range(0, SECRET_BYTES, CHUNK)]
    return [index.to_bytes(4, "little") + b"".join(chunk[j][1] for chunk in chunks)
            for j, (index, _) in enumerate(chunks[0])]


def combine(shares: Sequence[bytes]) -> bytes:
    """The secret from ``threshold`` well-formed shares with distinct indices (``ValueError`` otherwise)."""
    if any(len(share) != SHARE_BYTES for share in shares) or len({s[:4] for s in shares}) != len(shares):
        raise ValueError("malformed or repeated shares")
    pairs = [(int.from_bytes(share[:4], "little"), share[4:]) for share in shares]
    return b"".join(
        Shamir.combine([(index, body[i: i + CHUNK]) for index, body in pairs], ssss=False)
        for i in range(0, SECRET_BYTES, CHUNK)
    )
