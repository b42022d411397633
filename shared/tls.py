"""TLS for the request socket and the Flower sessions, from PEM files made by scripts/make_certs.py.

Plain TCP stays the zero-config default on loopback; a server that binds elsewhere without a
certificate logs a warning, since site tokens and session secrets would cross the network in
the clear.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import ssl
from pathlib import Path

from shared.errors import ConfigError, ConnectionProblem

log = logging.getLogger(__name__)


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    """A TLS 1.2+ server context presenting ``cert`` (PEM chain) with ``key``."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.num_tickets = 0  # an unasked ticket record would look like a server hang-up to the client
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load TLS certificate {cert} / key {key}: {exc}") from None
    return context


def client_context(ca: Path) -> ssl.SSLContext:
    """A client context that trusts only the federation's CA and checks the host name."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_verify_locations(cafile=str(ca))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load the CA certificate {ca}: {exc}") from None
    return context


def wrap_client_socket(raw: socket.socket, ca: Path, host: str, port: int) -> ssl.SSLSocket:
    """Handshake over ``raw``; a certificate the CA did not sign becomes a worded problem."""
    try:
        return client_context(ca).wrap_socket(raw, server_hostname=host)
    except ssl.SSLCertVerificationError as exc:
        raw.close()
        raise ConnectionProblem(
            f"TLS: the server at {host}:{port} presented a certificate that {ca} does not trust "
            f"({exc.verify_message})",
            hint="Ask the admin for the federation's CA file (ca.pem) and set it for this site.",
        ) from None
    except (ssl.SSLError, OSError) as exc:
        raw.close()
        raise ConnectionProblem(
            f"TLS handshake with {host}:{port} failed ({exc})",
            hint="Does the server use TLS? Plain and TLS endpoints cannot talk to each other.",
        ) from None


def flower_certificates(ca: Path, cert: Path, key: Path) -> tuple[bytes, bytes, bytes]:
    """The (CA, certificate, key) PEM bytes Flower's gRPC server takes."""
    return ca.read_bytes(), cert.read_bytes(), key.read_bytes()


def is_loopback(host: str) -> bool:
    """Whether ``host`` is reachable only from this machine ("" and 0.0.0.0 are not)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def warn_if_exposed(host: str, tls_enabled: bool, what: str) -> None:
    """Log a warning when ``what`` binds beyond loopback without TLS."""
    if not tls_enabled and not is_loopback(host):
        log.warning(
            "%s binds to %s without TLS: tokens and secrets travel in the clear. "
            "Run scripts/make_certs.py and set FL_TLS_CA, FL_TLS_CERT and FL_TLS_KEY.",
            what,
            host,
        )
