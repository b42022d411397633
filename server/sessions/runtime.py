"""Run one approved session: a Flower gRPC server with ``AdmittedFedProx``, then commit a version.

With the session option ``secure_aggregation`` the strategy is ``SecureFedProx``: the same
FedProx, but the server only ever sees the weighted sum of the sites' updates. Each site's rounds
carry its own approved DP schedule (``privacy_plan.fit_config``); the version's privacy summary
is the server's own ledger for the session, never what the sites report. The session's
``aggregation`` rule (``aggregation_rule``) says how a plain session combines the updates.

The result is committed by ``merge.commit_result``: on the session's base, or merged into the
head another session committed meanwhile; a secure session's last round already scored those
merged weights, so the version's validation metrics are its own or absent ("not evaluated").

This is the body of the per-session process (``server.sessions.process``); it is importable so
tests can run a session in-process against a real store and real Flower clients.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from flwr.server.server import Server, run_fl
from flwr.server.server_config import ServerConfig

from server.sessions.admission import AdmissionClientManager
from server.sessions.aggregation_rule import AggregationRule
from server.sessions.fedprox import AdmittedFedProx
from server.sessions.grpc_listener import message_cap, start_session_server
from server.sessions.merge import commit_result, rebase
from server.sessions.privacy_plan import fit_config, privacy_summary
from server.sessions.secure_fedprox import SecureFedProx
from server.store import Store
from server.store.lifecycle import SessionState
from shared import secagg_protocol
from shared.errors import SessionFailedError
from shared.secagg_identity import decode_public_key

log = logging.getLogger(__name__)

#: Keys of a session's config that are sent to every client every round (each site's own come from "sites").
ROUND_CONFIG_KEYS = ("batch_size", "learning_rate")


@dataclass(frozen=True)
class SessionOptions:
    """How long to wait, how far to trust, as chosen at approval (see ``SessionManager``)."""

    rounds: int
    proximal_mu: float
    min_clients: int
    join_timeout_s: float
    round_timeout_s: float
    #: None: each site's bound follows from its approved schedule (``server.sessions.update_bound``).
    max_update_norm: float | None
    secure_aggregation: bool = False
    secagg_threshold: int | None = None
    secagg_clip_range: float = secagg_protocol.DEFAULT_CLIP_RANGE
    rule: AggregationRule = field(default_factory=AggregationRule)

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> SessionOptions:
        """Sessions stored before secure aggregation existed (no key) run as they were approved."""
        threshold = config.get("secagg_threshold")
        return cls(
            rounds=int(config["rounds"]),
            proximal_mu=float(config["proximal_mu"]),
            min_clients=int(config["min_clients"]),
            join_timeout_s=float(config["join_timeout_s"]),
            round_timeout_s=float(config["round_timeout_s"]),
            max_update_norm=None if config.get("max_update_norm") is None else float(config["max_update_norm"]),
            secure_aggregation=bool(config.get("secure_aggregation", False)),
            secagg_threshold=None if threshold is None else int(threshold),
            secagg_clip_range=float(config.get("secagg_clip_range", secagg_protocol.DEFAULT_CLIP_RANGE)),
            rule=AggregationRule.from_config(config),
        )


def run_session(
    store: Store,
    session_id: int,
    *,
    port: int,
    host: str = "127.0.0.1",
    certificates: tuple[bytes, bytes, bytes] | None = None,
) -> int:
    """Serve the session's rounds, commit the result, and return the new version number.

    Raises ``SessionFailedError`` (after marking the session FAILED) when sites do not show
    up or too few valid updates arrive.
    """
    session = store.get_session(session_id)
    options = SessionOptions.from_config(session.config)
    strategy = _strategy(store, session_id, options)
    client_manager = AdmissionClientManager(
        participants=list(session.participants),
        verify_secret=strategy.verify_secret,
        min_clients=options.min_clients,
        join_timeout_s=options.join_timeout_s,
        on_reject=strategy.on_reject,
    )
    grpc_server = start_session_server(
        client_manager,
        f"{host}:{port}",
        max_message_length=message_cap(strategy.global_weights),
        certificates=certificates,
    )
    log.info("session %d: Flower server on %s:%d", session_id, host, port)
    try:
        run_fl(
            Server(client_manager=client_manager, strategy=strategy),
            ServerConfig(num_rounds=options.rounds, round_timeout=options.round_timeout_s),
        )
    except SessionFailedError as exc:
        store.finish_session(session_id, state=SessionState.FAILED, reason=str(exc))
        raise
    finally:
        grpc_server.stop(grace=1)
        client_manager.close()
    contributors = sorted(strategy.contributors)
    version = commit_result(
        store,
        session_id,
        strategy.global_weights,
        evaluated=strategy.evaluated,
        metrics=strategy.last_metrics,
        dp_summary=privacy_summary(store, session_id, contributors),
        participants=contributors,
        rounds=options.rounds,
    )
    log.info("session %d committed v%d", session_id, version.number)
    return version.number


def _strategy(store: Store, session_id: int, options: SessionOptions) -> AdmittedFedProx:
    session = store.get_session(session_id)
    actor = f"session-{session_id}"

    def record_round(round_number: int, phase: str, metrics: dict, per_site: dict) -> None:
        store.record_round(
            session_id, round_number=round_number, phase=phase, metrics=metrics, per_site=per_site
        )

    def record_rejection(round_number: int, phase: str, who: str, reason: str) -> None:
        store.audit(actor, "result_dropped", {"round": round_number, "phase": phase,
                                              "from": who, "reason": reason})

    common: dict[str, Any] = dict(
        participants=list(session.participants),
        verify_secret=lambda site, secret: store.verify_session_secret(session_id, site, secret),
        initial_weights=store.load_weights(session.base_version),
        proximal_mu=options.proximal_mu,
        round_config={
            "session_id": session_id,
            "num_rounds": options.rounds,
            **{k: session.config[k] for k in ROUND_CONFIG_KEYS if k in session.config},
        },
        site_configs={site: fit_config(plan) for site, plan in session.config.get("sites", {}).items()},
        min_results=options.min_clients,
        max_update_norm=options.max_update_norm,
        on_round=record_round,
        on_reject=record_rejection,
        rule=options.rule,
    )
    if not options.secure_aggregation:
        return AdmittedFedProx(**common)
    registered = store.identity_keys(session.participants)
    return SecureFedProx(
        **common,
        identity_keys={site: decode_public_key(key) for site, key in registered.items()},
        threshold=options.secagg_threshold,
        clip_range=options.secagg_clip_range,
        stage_timeout_s=options.round_timeout_s,
        rebase_final=lambda candidate: rebase(candidate, base=session.base_version, head=store.head().number,
                                              load=store.load_weights),
    )
