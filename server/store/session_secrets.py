"""Per-session secrets that the database never holds in usable form.

A site proves on the session's Flower port that the admin approved it, with a secret it fetched
over the authenticated request socket. The database keeps only a random nonce per member; the
secret is ``HMAC-SHA256(session key, "session|site|nonce")`` under a key derived from the
server key file (:mod:`server.store.server_key`). Whoever reads the database (an analyst, a
stolen backup) learns the nonces, which are useless without the key. Wiping the nonce, when the
session ends or the site is disabled, revokes the secret.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

NONCE_BYTES = 32


def new_nonce() -> str:
    return secrets.token_urlsafe(NONCE_BYTES)


def derive(key: bytes, session_id: int, site: str, nonce: str) -> str:
    """The secret of ``site`` in session ``session_id`` (URL-safe text, 256 bits)."""
    material = f"{session_id}|{site}|{nonce}".encode()
    digest = hmac.new(key, material, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def matches(key: bytes, session_id: int, site: str, nonce: str | None, offered: str) -> bool:
    """Constant-time check of ``offered``; a missing nonce (ended, revoked) never matches."""
    expected = derive(key, session_id, site, nonce if nonce is not None else new_nonce())
    return hmac.compare_digest(expected.encode(), offered.encode()) and nonce is not None
