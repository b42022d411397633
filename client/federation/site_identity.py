"""A site's long-lived identity key, the peers its session ticket names, and the peer keys it has seen.

The identity key (Ed25519, ``cryptography``) is made once per site, kept beside the site profile
(owner-only), and its public half is registered with the server (``SiteConnection.
register_identity_key``). It signs each round's key-exchange keys (``shared.secagg_identity``).
Peers' identity keys come in the session ticket; ``PeerPins`` remembers the first key seen for
each peer site and refuses a session whose ticket later names a different one, so a server that
swaps a known peer's key is caught (trust on first use, as SSH does with host keys).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from shared import protocol
from shared.errors import ConfigError, ProtocolError
from shared.secagg_identity import decode_public_key, encode_public_key, fingerprint


def load_or_create_identity(path: Path) -> Ed25519PrivateKey:
    """The site's identity key at ``path``, made (owner-only, atomically) if there is none yet."""
    if path.is_file():
        return load_identity(path)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    _write_private(path, pem)
    return key


def load_identity(path: Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except FileNotFoundError:
        raise ConfigError(f"this site has no identity key ({path} is missing)",
                          hint="Run fl-client --site NAME setup again: it makes and registers one.") from None
    except ValueError as exc:
        raise ConfigError(f"{path} is not a readable private key ({exc})",
                          hint="Restore it from a backup, or ask the admin to reset the site's identity key "
                               "and run setup again.") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"{path} holds a {type(key).__name__}, not an Ed25519 identity key")
    return key


@dataclass(frozen=True)
class SessionPeers:
    """The sites a session ticket admits, with the identity key the server registered for each."""

    session_id: int
    keys: Mapping[str, Ed25519PublicKey]

    @classmethod
    def from_ticket(cls, ticket: protocol.SessionTicket) -> SessionPeers:
        try:
            keys = {site: decode_public_key(text) for site, text in ticket.peers.items()}
        except ProtocolError as exc:
            raise ProtocolError(f"session {ticket.session_id}: the ticket's peer keys are unusable: {exc}") from None
        return cls(ticket.session_id, keys)

    def require_own(self, site: str, identity: Ed25519PrivateKey) -> None:
        """Refuse to join when the server holds no key, or another key, for this very site."""
        registered = self.keys.get(site)
        if registered is None or encode_public_key(registered) != encode_public_key(identity):
            raise ConfigError(
                f"session {self.session_id}: the server has {'no' if registered is None else 'another'} "
                f"identity key for site '{site}' (this site's is {fingerprint(identity)})",
                hint="Run fl-client setup again to register it; if the server keeps another key, ask the admin "
                     "to reset this site's identity key.",
            )


class PeerPins:
    """The first identity key seen for each peer site; a different one later is refused."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def check_and_pin(self, peers: SessionPeers, *, own_site: str) -> None:
        pinned = self._load()
        offered = {site: encode_public_key(key) for site, key in peers.keys.items() if site != own_site}
        changed = sorted(site for site, key in offered.items() if pinned.get(site, key) != key)
        if changed:
            raise ProtocolError(
                f"session {peers.session_id}: the identity key of {', '.join(changed)} differs from the one "
                "this site saw before; refusing to mask with an unverified peer",
                hint="Compare the peer's key fingerprint out of band; if the peer really replaced its key, "
                     f"remove its entry from {self.path}.",
            )
        if offered.keys() - pinned.keys():
            _write_private(self.path, json.dumps({**pinned, **offered}, indent=1, sort_keys=True).encode())

    def _load(self) -> dict[str, str]:
        if not self.path.is_file():
            return {}
        try:
            pins = json.loads(self.path.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise ConfigError(f"{self.path} is not valid JSON ({exc})", hint="Restore or remove it.") from None
        if not isinstance(pins, dict) or not all(isinstance(v, str) for v in pins.values()):
            raise ConfigError(f"{self.path} is not a map of site names to keys", hint="Restore or remove it.")
        return pins


def _write_private(path: Path, data: bytes) -> None:
    """Owner-only file, written whole or not at all."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)
