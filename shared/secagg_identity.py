"""Identity keys: each site signs its per-round key-exchange keys with a long-lived Ed25519 key.

A site makes its identity key once (``client.federation.site_identity``) and registers the
public half with the server over the authenticated request socket; session tickets carry the
registered keys of the session's participants. At ``setup`` a site signs its fresh X25519 keys
together with the round's parameters (``RoundSetup``: session, round, site list, threshold,
quantisation), and a peer accepts relayed keys only with a valid signature by the key in its own
ticket. So whoever relays keys (the session process, the network) cannot swap a peer's keys for
its own, nor give two sites different site lists or thresholds, without the site noticing.

What it does not defend against: the server hands out the identity keys itself (at enrolment
time it is the only authority), so a server that lies in the tickets from the start, or an
admin who enrols fake sites, is not stopped by signatures; sites pin peers' keys after first use
(``client.federation.site_identity``) and can compare fingerprints out of band. Ed25519 comes
from ``cryptography``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Sequence

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from shared.errors import ProtocolError
from shared.secagg_protocol import RoundSetup

SIGNING_PURPOSE = b"fl-secagg setup keys v1\n"
PUBLIC_KEY_BYTES = 32
SIGNATURE_BYTES = 64


def setup_transcript(setup: RoundSetup, site: str, public_keys: Sequence[bytes]) -> bytes:
    """The exact bytes a site signs: the round's parameters, its name and its public keys."""
    body = [setup.session_id, setup.round, list(setup.sites), setup.threshold, setup.clip_range,
            setup.levels, setup.weight_cap, site, [key.hex() for key in public_keys]]
    return SIGNING_PURPOSE + json.dumps(body, separators=(",", ":")).encode()


def sign_keys(identity: Ed25519PrivateKey, setup: RoundSetup, site: str, public_keys: Sequence[bytes]) -> bytes:
    return identity.sign(setup_transcript(setup, site, public_keys))


def keys_are_signed(
    identity: Ed25519PublicKey, signature: object, setup: RoundSetup, site: str, public_keys: Sequence[bytes]
) -> bool:
    """Whether ``signature`` is ``site``'s signature of these keys for this very round."""
    if not isinstance(signature, bytes) or len(signature) != SIGNATURE_BYTES:
        return False
    try:
        identity.verify(signature, setup_transcript(setup, site, public_keys))
    except InvalidSignature:
        return False
    return True


def raw_public_key(key: Ed25519PrivateKey | Ed25519PublicKey) -> bytes:
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def encode_public_key(key: Ed25519PrivateKey | Ed25519PublicKey | bytes) -> str:
    """Base64 of the raw 32-byte key: how identity keys travel in JSON (socket, tickets)."""
    raw = key if isinstance(key, bytes) else raw_public_key(key)
    return base64.b64encode(raw).decode("ascii")


def decode_public_key(text: str) -> Ed25519PublicKey:
    """The Ed25519 public key in ``text`` (base64 of 32 bytes); anything else is a ``ProtocolError``."""
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
        if len(raw) != PUBLIC_KEY_BYTES:
            raise ValueError(f"{len(raw)} bytes, not {PUBLIC_KEY_BYTES}")
        return Ed25519PublicKey.from_public_bytes(raw)
    except (ValueError, UnicodeEncodeError, binascii.Error) as exc:
        raise ProtocolError(f"not an Ed25519 public key ({exc})",
                            hint="Send the base64 of the raw 32-byte public key.") from None


def fingerprint(key: Ed25519PrivateKey | Ed25519PublicKey | bytes) -> str:
    """A short, comparable name of a public key (sha256, 16 bytes in hex groups) to check out of band."""
    raw = key if isinstance(key, bytes) else raw_public_key(key)
    digest = hashlib.sha256(raw).hexdigest()[:32]
    return ":".join(digest[i: i + 4] for i in range(0, len(digest), 4))
