"""The site's side of an approved session: from a request id to a finished Flower client.

It asks the request socket for the session ticket (port, per-session secret, config and this
site's own plan: schedule, effective budget, the admin's no-DP grant), builds the classifier the
session's model spec describes, and runs the Flower client, which accepts only schedules that
match the site's own request, until the server ends the session.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from client.federation.socket_client import SiteConnection
from client.site_profile import SiteProfile
from shared import protocol
from shared.errors import ConfigError
from shared.listening import wait_until_listening

log = logging.getLogger(__name__)


def train_for_request(
    connection: SiteConnection,
    profile: SiteProfile,
    request: str | int,
    *,
    approval_timeout_s: float = 3600.0,
    listen_timeout_s: float = 60.0,
    progress=None,
    on_approved: Callable[[protocol.SessionTicket], None] | None = None,
) -> protocol.SessionTicket:
    """Wait for the request's approval, then take part in its session until it ends.

    ``on_approved(ticket)`` runs once the session is known (a display learns its rounds there).
    """
    view = connection.request_status(request)
    ticket = connection.wait_for_approval(request, timeout=approval_timeout_s)
    if on_approved is not None:
        on_approved(ticket)
    join_session(ticket, profile, request=view, listen_timeout_s=listen_timeout_s, progress=progress)
    return ticket


def join_session(
    ticket: protocol.SessionTicket,
    profile: SiteProfile,
    *,
    request: protocol.RequestView,
    listen_timeout_s: float = 60.0,
    progress=None,
) -> None:
    """Build the session's classifier with the site's ledger and request terms and run the Flower client."""
    # TensorFlow and Flower load only when a site actually trains: the menu stays quick.
    from flwr.client import start_client

    from client.federation.flower_client import build_site_client
    from client.federation.secure_aggregation import secure_client_for
    from client.training.dp_training import DPConfig
    from client.training.privacy_contract import RequestTerms, site_ledger

    # Flower sets its logger to DEBUG when imported; its chatter would break the live display.
    logging.getLogger("flwr").setLevel(max(logging.WARNING, logging.getLogger().level))

    if ticket.port is None:
        raise ConfigError(f"session {ticket.session_id} has no port yet", hint="Try again in a moment.")
    spec = dict(ticket.config.get("model", {}))
    client = build_site_client(
        profile.data_root,
        image_size=int(spec.get("image_size", 224)),
        trainable_blocks=int(spec.get("trainable_blocks", 0)),
        seed=int(spec.get("seed", 0)),
        weights=profile.backbone_weights,
        dp=DPConfig(**request.dp),
        ledger=site_ledger(profile, ticket.config.get("site")),
        terms=RequestTerms.of(request.rounds, request.local_epochs, request.dp, request.declaration),
        cache_dir=profile.cache_dir,
        extra_fit_metrics={"site": profile.site, "session_secret": ticket.secret},
        progress=progress,
    )
    expected = spec.get("backbone_fingerprint")
    if expected and expected != client.fingerprint:
        raise ConfigError(
            f"this site's ResNet50 backbone differs from the session's ({client.fingerprint[:12]} vs {expected[:12]})",
            hint="Use the same backbone weights file (or none) as the server's model spec.",
        )
    wait_until_listening(ticket.host, ticket.port, timeout_s=listen_timeout_s)
    log.info("%s joins session %d at %s:%d", profile.site, ticket.session_id, ticket.host, ticket.port)
    # A session approved with secure aggregation (or any session, if the profile requires it) never
    # gets plain weights or plain validation metrics from this site.
    secure = secure_client_for(client, profile, ticket)
    start_client(
        server_address=f"{ticket.host}:{ticket.port}",
        client=secure.to_client(),
        **({"root_certificates": profile.tls_ca.read_bytes()} if profile.tls_ca else {"insecure": True}),
    )
