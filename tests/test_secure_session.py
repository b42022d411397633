"""Secure aggregation in real Flower sessions (gRPC on loopback, real store, numpy sites in threads)."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from flwr.client import start_client

from client.federation.secagg_state import SecAggPolicy
from client.federation.secure_aggregation import SecureAggregationClient
from server.sessions.runtime import run_session
from server.sessions.secure_aggregation import SecureAggregationRound
from server.store import Store
from server.store.lifecycle import SessionState
from shared import secagg_masking as masking
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


def _session(store: Store, sites: list[str], examples: dict[str, int] | None = None,
             **config) -> tuple[int, int, Federation]:
    """A running secure session of ``sites`` (approved ``examples``, default ``EXAMPLES``), each with
    an identity key registered in the store."""
    examples = {**EXAMPLES, **(examples or {})}
    store.ensure_initial_version(V0, metadata={"model": {"kind": "test"}})
    federation = Federation(sites)
    for site in sites:
        if site not in {s.name for s in store.list_sites()}:
            store.enrol_site(site)
        store.register_identity_key(site, encode_public_key(federation.identities[site]))
    full = {"rounds": 1, "proximal_mu": 0.1, "min_clients": len(sites), "join_timeout_s": 20,
            "round_timeout_s": 30, "max_update_norm": 100.0, "learning_rate": 0.1, "secure_aggregation": True,
            **config}
    created = charged_session(store, {s: examples[s] for s in sites}, rounds=int(full["rounds"]), config=full)
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


class MisweightedSite(SecureAggregationClient):
    """Issue 14's probe inside the mask: reports its approved count in clear, but weighs its masked
    update, and the weight and count it adds to the masked sum, with ``claimed``."""

    def __init__(self, *args, claimed: int, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.claimed = claimed

    def fit(self, parameters, config):
        self.state.receive_shares(config)
        setup = self.state.round_setup
        weights, approved, metrics = self.inner.fit(parameters, config)
        delta = [np.subtract(new, old, dtype=np.float64) for new, old in zip(weights, parameters)]
        weight = min(abs(self.claimed), setup.weight_cap) * (1 if self.claimed > 0 else -1)
        encoded = masking.encode(delta, abs(weight), setup.clip_range, setup.levels)
        if weight < 0:
            encoded = [np.negative(part) for part in encoded]  # -w * q in Z_(2^32)
        extras = masking.encode_extras({"weight": weight, "examples": self.claimed}, proto.FIT_EXTRAS)
        clear = {key: metrics[key] for key in ("site", "session_secret")}
        return self.state.mask(proto.FIT, [*encoded, extras]), approved, clear


@pytest.mark.parametrize("claimed", [10**9, -99])
def test_a_weight_claimed_inside_the_mask_fails_the_round(store: Store, sites: dict[str, str],
                                                          monkeypatch: pytest.MonkeyPatch, claimed: int) -> None:
    """Before: 10^9 (capped at 16384 by the field) made the mean gamma's update; -99 against alpha's 100
    made it (100*0.5 + 10*0.5 + 99*0.5) / 11 = 9.5 per coordinate from honest updates of 0.5."""
    counts = {"alpha": 100, "beta": 10, "gamma": 20}
    session_id, port, federation = _session(store, list(counts), examples=counts)
    wrap = federation.client
    monkeypatch.setattr(federation, "client", lambda site, inner, policy=None: (
        MisweightedSite(inner, site=site, identity=federation.identities[site], peers=federation.peers(),
                        policy=policy, claimed=claimed) if site == "gamma" else wrap(site, inner, policy)))
    clients = {"alpha": _site(store, session_id, "alpha", 100, 0.5), "beta": _site(store, session_id, "beta", 10, 0.5),
               "gamma": _site(store, session_id, "gamma", 20, -0.5)}
    outcome = _run(store, session_id, port, federation, clients)

    assert isinstance(outcome.get("error"), SessionFailedError), outcome
    session = store.get_session(session_id)
    weight = min(abs(claimed), proto.DEFAULT_WEIGHT_CAP) * (1 if claimed > 0 else -1)
    assert session.state == SessionState.FAILED
    assert (f"the masked sum carries weight {100 + 10 + weight} and {100 + 10 + claimed} examples, but the 3 "
            "summed site(s) were admitted with weight 130 and 130 examples") in session.reason
    assert [v.number for v in store.list_versions()] == [0]


# -- a merge version's accuracy is its own weights' ----------------------------------------------
VAL_SIZES = {"alpha": 25, "beta": 15, "gamma": 20}


def _score(weights: list[np.ndarray], x: np.ndarray, y: np.ndarray) -> tuple[float, int]:
    """(summed cross-entropy, correct predictions) of softmax(x W + b), in float64."""
    logits = x @ weights[0].astype(np.float64) + weights[1].astype(np.float64)
    logits -= logits.max(axis=1, keepdims=True)
    log_p = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    return float(-log_p[np.arange(len(y)), y].sum()), int(np.sum(log_p.argmax(axis=1) == y))


class LinearSite(ScriptedClient):
    """A numpy site: fit adds its fixed ``delta`` to the weights; validate scores its own split."""

    def __init__(self, site: str, secret: str, examples: int, delta: list[np.ndarray], x: np.ndarray,
                 y: np.ndarray) -> None:
        super().__init__(site, secret, examples, lambda ws: [w + d for w, d in zip(ws, delta)])
        self.x, self.y = x, y

    def validate(self, parameters):
        loss_sum, correct = _score(parameters, self.x, self.y)
        count = len(self.y)
        return loss_sum / count, count, {"site": self.site, "session_secret": self.secret, "accuracy": correct / count}


def _validation_splits(rng: np.random.Generator, truth: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Each site's labelled split: labels of the linear rule ``truth`` on 6 features, 10% flipped."""
    splits = {}
    for site, size in VAL_SIZES.items():
        x = rng.standard_normal((size, 6))
        y = (x @ truth).argmax(axis=1)
        y[rng.random(size) < 0.1] = rng.integers(0, 4)
        splits[site] = (x, y)
    return splits


def _fresh(weights: list[np.ndarray], splits: dict[str, tuple[np.ndarray, np.ndarray]]) -> tuple[float, float]:
    """(accuracy, loss) of ``weights`` over all sites' splits, as the evaluate sums define them."""
    scores = [_score(weights, x, y) for x, y in splits.values()]
    count = sum(len(y) for _, y in splits.values())
    return sum(c for _, c in scores) / count, sum(loss for loss, _ in scores) / count


def _merge_session(store: Store, rng: np.random.Generator) -> tuple[int, int, Federation, dict, dict]:
    """A 2-round secure session from v0 (sites that move it at random) whose head then moves to v1,
    another session's result that knows the rule behind the validation labels."""
    truth = rng.standard_normal((6, 4))
    splits = _validation_splits(rng, truth)
    session_id, port, federation = _session(store, list(VAL_SIZES), rounds=2)
    other = charged_session(store, {"delta": 40}, rounds=1)
    store.mark_session_running(other.id, port=free_port(), pid=2)
    store.commit_session_result(other.id, [truth.astype(np.float32), np.zeros(4, np.float32)],
                                metrics={}, dp_summary={}, participants=["delta"], rounds=1)
    clients = {site: LinearSite(site, store.session_secret(session_id, site), EXAMPLES[site],
                                [0.4 * rng.standard_normal((6, 4)), 0.4 * rng.standard_normal(4)], *splits[site])
               for site in VAL_SIZES}
    return session_id, port, federation, clients, splits


def test_a_merge_versions_accuracy_is_a_fresh_evaluation_of_its_weights(store: Store, sites: dict[str, str]) -> None:
    """Issue 17: the last round scores the merged weights through the masked evaluate sum."""
    store.enrol_site("delta")
    session_id, port, federation, clients, splits = _merge_session(store, np.random.default_rng(7))
    outcome = _run(store, session_id, port, federation, clients)

    assert outcome.get("version") == 2, outcome
    merged = store.get_version(2)
    assert (merged.kind, merged.parents, merged.staleness) == ("merge", [1, 0], 1)
    accuracy, loss = _fresh(store.load_weights(2), splits)
    recorded = merged.metrics["evaluate"]
    assert recorded["accuracy"] == accuracy and recorded["examples"] == 60  # a ratio of integer sums: exact
    # Each site's loss sum travels as round(sum * 2^20): at most half a unit off per site.
    assert abs(recorded["loss"] - loss) <= len(splits) * 0.5 / (1 << 20) / 60 + 1e-12
    assert recorded["merged_into"] == 1
    # The number the old commit recorded, the session's own result before the merge, was another model's.
    a, head = merged.merge_weight, store.load_weights(1)
    candidate = [(m.astype(np.float64) - (1 - a) * h) / a for m, h in zip(store.load_weights(2), head)]
    assert abs(_fresh(candidate, splits)[0] - accuracy) > 0.2
    rounds = [r for r in store.session_rounds(session_id) if r.phase == "evaluate"]
    assert rounds[-1].metrics["accuracy"] == recorded["accuracy"]  # the round that scored it says so too


def test_a_head_that_moves_after_the_last_evaluation_leaves_the_merge_not_evaluated(
    store: Store, sites: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from server.history.version_views import validation_text
    from server.sessions.merge import merge_weights

    store.enrol_site("delta")
    session_id, port, federation, clients, _ = _merge_session(store, np.random.default_rng(8))
    third = charged_session(store, {"delta": 40}, rounds=1)  # from v1
    store.mark_session_running(third.id, port=free_port(), pid=3)
    record_round = store.record_round

    def then_commit_another(session: int, *, round_number: int, phase: str, **rest) -> None:
        record_round(session, round_number=round_number, phase=phase, **rest)
        if (session, round_number, phase) == (session_id, 2, "evaluate"):  # after the merged weights were scored
            store.commit_session_result(third.id, store.load_weights(1), metrics={}, dp_summary={},
                                        participants=["delta"], rounds=1)

    monkeypatch.setattr(store, "record_round", then_commit_another)
    outcome = _run(store, session_id, port, federation, clients)

    assert outcome.get("version") == 3, outcome
    version = store.get_version(3)
    assert (version.kind, version.parents, version.staleness) == ("merge", [2, 0], 2)
    assert "evaluate" not in version.metrics and validation_text(version) == "not evaluated"
    # Merged again into v2 (staleness 2) from the session's own result.
    scored = [r for r in store.session_rounds(session_id) if r.phase == "evaluate"][-1]
    assert scored.metrics["merged_into"] == 1
    a = version.merge_weight
    assert a == pytest.approx(0.5 / np.sqrt(3))
    head = store.load_weights(2)
    candidate = [(m - (1 - a) * h.astype(np.float64)) / a for m, h in zip(store.load_weights(3), head)]
    again, _ = merge_weights(head, [c.astype(np.float32) for c in candidate], staleness=2)
    for got, want in zip(store.load_weights(3), again):
        np.testing.assert_allclose(got, want, atol=1e-5)
