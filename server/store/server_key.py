"""The server's own key: 32 random bytes in a 0600 file outside the database.

Analysts may read the database, and a backup of it may travel; neither must let anyone forge an
audit row or join a live session. So the two things that need a secret derive it from this key
with HKDF (``cryptography``), one sub-key per purpose: the audit chain's HMAC key and the key
that turns a session member's stored nonce into its session secret. The database holds neither.

The file is created once, atomically (two processes starting together agree on one key), and a
key file that others can read is refused rather than used: it may already be copied.
"""

from __future__ import annotations

import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from shared.errors import ConfigError

KEY_BYTES = 32
_AUDIT_INFO = b"fl-brain-mri audit chain v1"
_SESSION_INFO = b"fl-brain-mri session secrets v1"


@dataclass(frozen=True)
class ServerKeys:
    """Sub-keys derived from the server key file, one per purpose."""

    audit: bytes
    session: bytes

    @classmethod
    def from_master(cls, master: bytes) -> ServerKeys:
        return cls(audit=_derive(master, _AUDIT_INFO), session=_derive(master, _SESSION_INFO))

    @classmethod
    def load_or_create(cls, path: Path) -> ServerKeys:
        """The keys from ``path``, creating the file (0600, folder 0700) on first use."""
        if not path.exists():
            _create(path)
        return cls.from_master(_read(path))


def _derive(master: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=info).derive(master)


def _create(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    temp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(secrets.token_bytes(KEY_BYTES))
            out.flush()
            os.fsync(out.fileno())
        try:
            os.link(temp, path)  # fails if another process created the key first: use theirs
        except FileExistsError:
            pass
    finally:
        temp.unlink(missing_ok=True)


def _read(path: Path) -> bytes:
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(
            f"the server key {path} is readable by others (mode {stat.filemode(mode)})",
            hint=f"Run: chmod 600 {path}. If someone else may have read it, move it away and restart: "
            "a new key is made, live sessions must be re-approved and `fl-server audit` will report "
            "the old rows as not matching the new key.",
        )
    key = path.read_bytes()
    if len(key) < KEY_BYTES:
        raise ConfigError(
            f"the server key {path} is {len(key)} bytes; it needs {KEY_BYTES}",
            hint="Restore it from a backup; a truncated key cannot verify the audit chain.",
        )
    return key
