"""Enrolment tokens: generated once, shown once, kept only as a salted scrypt hash.

A stolen database then yields no usable token, and equal tokens never share a hash. The stored
form ``scrypt$n$r$p$salt$digest`` carries its own parameters so they can be raised later
without breaking tokens already issued.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

TOKEN_BYTES = 32
SALT_BYTES = 16
SCRYPT_N = 2**14
SCRYPT_R = 8
SCRYPT_P = 1
DIGEST_BYTES = 32


def new_token() -> str:
    """A fresh URL-safe token with 256 bits of entropy that never starts with '-'.

    A leading dash would make ``--token TOKEN`` on a command line read as an option.
    """
    while (token := secrets.token_urlsafe(TOKEN_BYTES)).startswith("-"):
        pass
    return token


def hash_token(token: str) -> str:
    """Salted scrypt hash of ``token`` in self-describing form."""
    salt = secrets.token_bytes(SALT_BYTES)
    digest = _scrypt(token, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P)
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${salt.hex()}${digest.hex()}"


def verify_token(token: str, stored: str) -> bool:
    """Whether ``token`` matches ``stored``; the final comparison takes constant time."""
    try:
        scheme, n, r, p, salt_hex, digest_hex = stored.split("$")
        if scheme != "scrypt":
            return False
        expected = bytes.fromhex(digest_hex)
        actual = _scrypt(token, bytes.fromhex(salt_hex), int(n), int(r), int(p))
    except ValueError:
        return False
    return hmac.compare_digest(actual, expected)


#: A stored form no token matches (random digest), with the parameters real hashes use.
_DUMMY_HASH = (
    f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}"
    f"${secrets.token_bytes(SALT_BYTES).hex()}${secrets.token_bytes(DIGEST_BYTES).hex()}"
)


def burn_like_verify(token: str) -> None:
    """Spend what :func:`verify_token` spends, for a site that does not exist.

    "Unknown site" and "wrong token" then take the same time, so response timing does not
    tell an outsider which site names are enrolled.
    """
    verify_token(token, _DUMMY_HASH)


def _scrypt(token: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(
        token.encode("utf-8"), salt=salt, n=n, r=r, p=p, dklen=DIGEST_BYTES, maxmem=64 << 20
    )
