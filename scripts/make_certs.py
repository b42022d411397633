"""Make a federation CA and a server certificate for TLS on the request socket and Flower sessions.

    python -m scripts.make_certs --out var/certs --host fl.hospital-net.example --ip 10.0.0.5

Writes ``ca.pem`` (give it to every site), ``ca.key`` (keep offline), ``server.pem`` and
``server.key`` (the server's; set FL_TLS_CA, FL_TLS_CERT, FL_TLS_KEY). Keys are EC P-256,
generated with ``cryptography``; the server certificate names localhost and 127.0.0.1 plus
the hosts and addresses given.
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import os
import sys
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cryptography import x509  # noqa: E402
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID  # noqa: E402

from shared.errors import FLError, TargetNotEmptyError  # noqa: E402


@dataclass(frozen=True)
class CertificateFiles:
    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path


def make_certs(
    out: Path, *, hosts: list[str], ips: list[str], days: int = 825, force: bool = False
) -> CertificateFiles:
    """Create a CA and a server certificate signed by it, under ``out``."""
    files = CertificateFiles(out / "ca.pem", out / "ca.key", out / "server.pem", out / "server.key")
    existing = [p for p in vars(files).values() if p.exists()]
    if existing and not force:
        raise TargetNotEmptyError(f"{out} already holds {', '.join(p.name for p in existing)}")
    out.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Federated MRI CA")])
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
    _write(files.ca_cert, ca_cert.public_bytes(serialization.Encoding.PEM), private=False)
    _write(files.server_cert, server_cert.public_bytes(serialization.Encoding.PEM), private=False)
    _write(files.ca_key, _key_pem(ca_key), private=True)
    _write(files.server_key, _key_pem(server_key), private=True)
    return files


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


def _write(path: Path, data: bytes, *, private: bool) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as out:
        out.write(data)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Make a federation CA and server certificate.")
    parser.add_argument("--out", type=Path, default=Path("var/certs"))
    parser.add_argument("--host", action="append", default=[], help="DNS name of the server (repeatable)")
    parser.add_argument("--ip", action="append", default=[], help="IP address of the server (repeatable)")
    parser.add_argument("--days", type=int, default=825)
    parser.add_argument("--force", action="store_true")
    args = parser.parse_args(argv)
    try:
        files = make_certs(args.out, hosts=args.host, ips=args.ip, days=args.days, force=args.force)
    except (FLError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"CA certificate {files.ca_cert} (give to every site), CA key {files.ca_key} (keep offline)")
    print(f"server certificate {files.server_cert} and key {files.server_key}")
    print(f"set FL_TLS_CA={files.ca_cert} FL_TLS_CERT={files.server_cert} FL_TLS_KEY={files.server_key}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
