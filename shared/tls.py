"""TLS for the request socket and the Flower sessions, from PEM files made by scripts/make_certs.py.

One setting serves both listeners (:func:`server_tls`): a certificate and key turn TLS on for
the request socket *and* every session's gRPC port, so a partial set-up can no longer leave one
of them plain. Plain TCP stays the zero-config default on loopback only: a listener that binds
anywhere else without TLS is refused (:func:`require_tls_beyond_loopback`) unless the admin
passes ``--insecure``, since site tokens, session secrets and weights would cross the network
in the clear. Mutual TLS (``tls_client_auth``) makes the request socket demand a certificate
the federation's CA issued for the site named in each message.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared.errors import ConfigError, ConnectionProblem
from shared.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServerTLS:
    """The server's TLS material, shared by the request socket and the Flower sessions."""

    cert: Path
    key: Path
    ca: Path | None = None
    client_auth: bool = False

    def ssl_context(self) -> ssl.SSLContext:
        """The request socket's context; with ``client_auth`` it requires a CA-signed client cert."""
        context = server_context(self.cert, self.key)
        if self.client_auth:
            assert self.ca is not None  # Settings refuses client_auth without a CA
            context.verify_mode = ssl.CERT_REQUIRED
            _load_ca(context, self.ca)
        return context

    def flower_certificates(self) -> tuple[bytes, bytes, bytes]:
        """The (root, certificate, key) PEM bytes Flower's gRPC server takes.

        Flower uses the root only to check client certificates, which its legacy client cannot
        send; without a CA file the server's own chain stands in, so TLS needs no more than the
        certificate and key.
        """
        try:
            root = (self.ca or self.cert).read_bytes()
            return root, self.cert.read_bytes(), self.key.read_bytes()
        except OSError as exc:
            raise ConfigError(f"cannot read the TLS files for the session server: {exc}") from None


def server_tls(settings: Settings) -> ServerTLS | None:
    """TLS for both listeners when the settings name a certificate and key; None for plain TCP."""
    if settings.tls_cert is None or settings.tls_key is None:
        return None
    return ServerTLS(settings.tls_cert, settings.tls_key, settings.tls_ca, settings.tls_client_auth)


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


def client_context(ca: Path, cert: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
    """A client context that trusts only the federation's CA, checks the host name, and presents
    the site's own certificate when the server wants mutual TLS."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    _load_ca(context, ca)
    if cert is not None:
        try:
            context.load_cert_chain(cert, key)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"cannot load this site's certificate {cert} / key {key}: {exc}") from None
    return context


def _load_ca(context: ssl.SSLContext, ca: Path) -> None:
    try:
        context.load_verify_locations(cafile=str(ca))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load the CA certificate {ca}: {exc}") from None


def wrap_client_socket(
    raw: socket.socket, ca: Path, host: str, port: int, *, cert: Path | None = None, key: Path | None = None
) -> ssl.SSLSocket:
    """Handshake over ``raw``; a certificate the CA did not sign becomes a worded problem."""
    try:
        return client_context(ca, cert, key).wrap_socket(raw, server_hostname=host)
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
            hint="Does the server use TLS (and mutual TLS: does this site have its certificate)? "
            "Plain and TLS endpoints cannot talk to each other.",
        ) from None


def certificate_names(peercert: dict[str, Any] | None) -> set[str]:
    """The common names and DNS names of a verified peer certificate (``getpeercert()``)."""
    if not peercert:
        return set()
    names = {value for rdn in peercert.get("subject", ()) for key, value in rdn if key == "commonName"}
    names |= {value for kind, value in peercert.get("subjectAltName", ()) if kind == "DNS"}
    return names


def is_loopback(host: str) -> bool:
    """Whether ``host`` is reachable only from this machine ("" and 0.0.0.0 are not)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def require_tls_beyond_loopback(host: str, tls: ServerTLS | None, insecure: bool, what: str) -> None:
    """Refuse to serve ``what`` in clear beyond loopback; with ``insecure`` only warn."""
    if tls is not None or is_loopback(host):
        return
    if not insecure:
        raise ConfigError(
            f"{what} would listen on {host} without TLS: site tokens, session secrets and weights "
            "would cross the network in the clear",
            hint="Run scripts/make_certs.py and set FL_TLS_CERT and FL_TLS_KEY (and FL_TLS_CA), "
            "or bind to 127.0.0.1; --insecure (FL_INSECURE=1) overrides this on a trusted network.",
        )
    log.warning("%s binds to %s without TLS (--insecure): tokens and secrets travel in the clear", what, host)


def require_tls_for_listeners(settings: Settings) -> None:
    """Both listeners, checked at once before the server starts anything (see above)."""
    tls = server_tls(settings)
    require_tls_beyond_loopback(settings.request_host, tls, settings.insecure, "the request socket")
    require_tls_beyond_loopback(settings.session_host, tls, settings.insecure, "the session servers")
