"""The federation's certificates: a CA, the server's certificate, and one client certificate per site.

Keys are EC P-256, generated with ``cryptography``. The server certificate names localhost and
127.0.0.1 plus the hosts and addresses given. A site certificate carries the site's enrolled
name as its common name and is good for client authentication only: under mutual TLS the
request socket accepts a site's token only over a connection that presents it.

Every private key is written 0600 through a fresh file that replaces the old one, so
``--force`` can never leave a key with an old, wider mode behind.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from shared.errors import ConfigError, TargetNotEmptyError

CA_NAME = "Federated MRI CA"


@dataclass(frozen=True)
class CertificateFiles:
    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path


@dataclass(frozen=True)
class SiteCertificate:
    cert: Path
    key: Path


def make_certs(
    out: Path, *, hosts: list[str], ips: list[str], days: int = 825, force: bool = False
) -> CertificateFiles:
    """Create a CA and a server certificate signed by it, under ``out``."""
    files = CertificateFiles(out / "ca.pem", out / "ca.key", out / "server.pem", out / "server.key")
    _refuse_overwrite(out, list(vars(files).values()), force)
    now = dt.datetime.now(dt.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, CA_NAME)])
    ca_cert = (
        _builder(ca_name, ca_name, ca_key.public_key(), now, days)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    server_key = ec.generate_private_key(ec.SECP256R1())
    names = [x509.DNSName(h) for h in dict.fromkeys(["localhost", *hosts])]
    names += [x509.IPAddress(ipaddress.ip_address(a)) for a in dict.fromkeys(["127.0.0.1", *ips])]
    server_cert = (
        _builder(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, (hosts or ["localhost"])[0])]),
                 ca_name, server_key.public_key(), now, days)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    write_pem(files.ca_cert, ca_cert.public_bytes(serialization.Encoding.PEM), private=False)
    write_pem(files.server_cert, server_cert.public_bytes(serialization.Encoding.PEM), private=False)
    write_pem(files.ca_key, _key_pem(ca_key), private=True)
    write_pem(files.server_key, _key_pem(server_key), private=True)
    return files


def issue_site_certificate(
    ca_dir: Path, site: str, *, out: Path | None = None, days: int = 825, force: bool = False
) -> SiteCertificate:
    """A client certificate for ``site`` signed by the CA in ``ca_dir`` (``ca.pem``, ``ca.key``).

    Written to ``out`` (default ``ca_dir/sites``) as ``<site>.pem`` and ``<site>.key``; give both
    to that site only.
    """
    folder = out or ca_dir / "sites"
    files = SiteCertificate(folder / f"{site}.pem", folder / f"{site}.key")
    ca_cert, ca_key = _load_ca(ca_dir)
    _refuse_overwrite(folder, [files.cert, files.key], force)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        _builder(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, site)]), ca_cert.subject,
                 key.public_key(), dt.datetime.now(dt.timezone.utc), days)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    write_pem(files.cert, cert.public_bytes(serialization.Encoding.PEM), private=False)
    write_pem(files.key, _key_pem(key), private=True)
    return files


def write_pem(path: Path, data: bytes, *, private: bool) -> None:
    """Write ``data`` to a new file with the final mode (0600 private, 0644 public), then rename it
    over ``path``: an existing file's mode never survives."""
    temp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if private else 0o644)
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), 0o600 if private else 0o644)  # whatever the umask
            handle.write(data)
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)


def _refuse_overwrite(folder: Path, paths: list[Path], force: bool) -> None:
    existing = [p for p in paths if p.exists()]
    if existing and not force:
        raise TargetNotEmptyError(f"{folder} already holds {', '.join(p.name for p in existing)}")
    folder.mkdir(parents=True, exist_ok=True)


def _load_ca(ca_dir: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    try:
        cert = x509.load_pem_x509_certificate((ca_dir / "ca.pem").read_bytes())
        key = serialization.load_pem_private_key((ca_dir / "ca.key").read_bytes(), password=None)
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"cannot load the federation CA from {ca_dir} (ca.pem, ca.key): {exc}",
            hint="Point at the folder scripts/make_certs.py wrote; the CA key is needed to issue certificates.",
        ) from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ConfigError(f"{ca_dir / 'ca.key'} is not an EC private key")
    return cert, key


def _builder(subject: x509.Name, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey,
             now: dt.datetime, days: int) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
    )


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())
