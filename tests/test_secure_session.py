"""Secure aggregation in real Flower sessions (gRPC on loopback, real store, numpy sites in threads)."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from flwr.client import start_client

from client.federation.secagg_state import SecAggPolicy
from server.sessions.runtime import run_session
from server.sessions.secure_aggregation import SecureAggregationRound
from server.store import Store
from server.store.lifecycle import SessionState
from shared import secagg_protocol as proto
from shared.errors import SessionFailedError
from shared.listening import wait_until_listening
from shared.secagg_identity import encode_public_key
from tests.flower_fakes import ScriptedClient, free_port
from tests.privacy_fixtures import charged_session
from tests.secagg_fakes import Federation

pytestmark = pytest.mark.slow

V0 = [np.zeros((6, 4), np.float32), np.zeros(4, np.float32)]
#: Bound on |secure - plain| per coordinate after ``rounds`` rounds: a step each, plus float32 rounding.
STEP = 2 * proto.DEFAULT_CLIP_RANGE / proto.levels_for(4)


class CrashInFit(ScriptedClient):
    """A site that takes part in the key exchange and then goes away instead of sending its vector."""

    def fit(self, parameters, config):
        raise ConnectionAbortedError("site lost power")


#: Each site's approved (declared) example count, the weight it masks its update with.
EXAMPLES = {"alpha": 30, "beta": 10, "gamma": 20, "delta": 40}


def _session(store: Store, sites: list[str], **config) -> tuple[int, int, Federation]:
    """A running secure session of ``sites``, each with an identity key registered in the store."""
    store.ensure_initial_version(V0, metadata={"model": {"kind": "test"}})
    federation = Federation(sites)
    for site in sites:
        if site not in {s.name for s in store.list_sites()}:
            store.enrol_site(site)
        store.register_identity_key(site, encode_public_key(federation.identities[site]))
    full = {"rounds": 1, "proximal_mu": 0.1, "min_clients": len(sites), "join_timeout_s": 20,
            "round_timeout_s": 30, "max_update_norm": 100.0, "learning_rate": 0.1, "secure_aggregation": True,
            **config}
    created = charged_session(store, {s: EXAMPLES[s] for s in sites}, rounds=int(full["rounds"]), config=full)
    port = free_port()
    store.mark_session_running(created.id, port=port, pid=1)
    federation.session_id = created.id
    return created.id, port, federation


def _run(store: Store, session_id: int, port: int, federation: Federation, sites: dict[str, ScriptedClient]) -> dict:
    """Serve the session with every site wrapped for secure aggregation; wait for all to end."""
    outcome: dict = {}

    def serve() -> None:
        try:
            outcome["version"] = run_session(store, session_id, port=port)
        except SessionFailedError as exc:
            outcome["error"] = exc

    def join(site: str, client: ScriptedClient) -> None:
        try:
            secure = federation.client(site, client, SecAggPolicy(required=True))
            start_client(server_address=f"127.0.0.1:{port}", insecure=True, client=secure.to_client())
        except Exception as exc:  # noqa: BLE001 - a crashing site is part of the scenario
            outcome.setdefault("site_errors", {})[site] = exc

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    wait_until_listening("127.0.0.1", port, timeout_s=30)
    threads = [threading.Thread(target=join, args=item, daemon=True) for item in sites.items()]
    for thread in threads:
        thread.start()
    server.join(timeout=120)
    for thread in threads:
        thread.join(timeout=30)
    return outcome


def _site(store: Store, session_id: int, name: str, examples: int, shift: float,
          kind: type[ScriptedClient] = ScriptedClient) -> ScriptedClient:
    return kind(name, store.session_secret(session_id, name), examples, lambda ws: [w + shift for w in ws])


def test_secure_session_commits_the_weighted_fedprox_average(
    store: Store, sites: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    received: list[dict[str, list[np.ndarray]]] = []
    unmask = SecureAggregationRound.unmask
    monkeypatch.setattr(SecureAggregationRound, "unmask",
                        lambda self, slot, masked: (slot == proto.FIT and received.append(masked))
                        or unmask(self, slot, masked))
    session_id, port, federation = _session(store, ["alpha", "beta", "gamma"], rounds=2)
    alpha = _site(store, session_id, "alpha", 30, 1.0)
    clients = {"alpha": alpha, "beta": _site(store, session_id, "beta", 10, -1.0),
               "gamma": _site(store, session_id, "gamma", 20, 0.5)}
    outcome = _run(store, session_id, port, federation, clients)

    assert outcome.get("version") == 1, outcome
    # Each round moves the weights by (30*1 - 10*1 + 20*0.5) / 60 = 0.5.
    for weights in store.load_weights(1):
        np.testing.assert_allclose(weights, 1.0, atol=2 * STEP + 1e-6)
    # The server only ever held field elements, none of them a site's weights.
    assert len(received) == 2 and set(received[0]) == {"alpha", "beta", "gamma"}
    assert all(v.dtype in (np.uint32, np.uint64) for masked in received for vs in masked.values() for v in vs)
    # FedProx and the admin's per-round, per-site metrics are as in a plain session.
    assert alpha.configs[0]["proximal_mu"] == pytest.approx(0.1)
    assert alpha.configs[0][proto.STAGE] == proto.MASK and alpha.configs[1]["round"] == 2
    rounds = {(r.round_number, r.phase): r for r in store.session_rounds(session_id)}
    assert set(rounds) == {(1, "fit"), (1, "evaluate"), (2, "fit"), (2, "evaluate")}
    assert rounds[(1, "fit")].metrics["examples"] == 60
    # Validation metrics came only as secure sums: the round's figures, nothing per site.
    evaluated = rounds[(2, "evaluate")]
    assert evaluated.per_site == {}
    assert evaluated.metrics["examples"] == 60 and evaluated.metrics["accuracy"] == pytest.approx(0.6)
    assert evaluated.metrics["loss"] == pytest.approx(0.7, abs=1e-6) and evaluated.metrics["secure_aggregation"]
    assert store.get_version(1).dp_summary["beta"]["examples"] == 10


def test_a_site_dropping_after_the_key_exchange_is_recovered(store: Store, sites: dict[str, str]) -> None:
    session_id, port, federation = _session(store, ["alpha", "beta", "gamma", "delta"], min_clients=3)
    clients = {"alpha": _site(store, session_id, "alpha", 30, 1.0),
               "beta": _site(store, session_id, "beta", 10, -1.0),
               "gamma": _site(store, session_id, "gamma", 20, 0.5),
               "delta": _site(store, session_id, "delta", 40, 9.0, CrashInFit)}
    outcome = _run(store, session_id, port, federation, clients)

    assert outcome.get("version") == 1, outcome
    assert set(outcome["site_errors"]) == {"delta"}
    for weights in store.load_weights(1):  # delta's pairwise masks removed, its update absent
        np.testing.assert_allclose(weights, 0.5, atol=STEP + 1e-6)
    assert store.get_version(1).participants == ["alpha", "beta", "gamma"]


def test_too_many_dropouts_fail_the_session_with_the_numbers(store: Store, sites: dict[str, str]) -> None:
    session_id, port, federation = _session(store, ["alpha", "beta", "gamma"], min_clients=2, secagg_threshold=3)
    clients = {"alpha": _site(store, session_id, "alpha", 30, 1.0),
               "beta": _site(store, session_id, "beta", 10, -1.0),
               "gamma": _site(store, session_id, "gamma", 20, 0.5, CrashInFit)}
    outcome = _run(store, session_id, port, federation, clients)

    assert isinstance(outcome.get("error"), SessionFailedError)
    session = store.get_session(session_id)
    assert session.state == SessionState.FAILED
    assert "secure aggregation: only 2 of 3 sites survived masking, threshold 3" in session.reason
    assert [v.number for v in store.list_versions()] == [0]
