"""Secure aggregation, sites and server in one process: exactness, masking, drop-outs, refusals.

The sites' ``SecureAggregationClient`` and the server's ``SecureAggregationRound`` talk through
``LoopbackProxy`` (what Flower's ``ClientProxy`` does, minus gRPC), so each test runs in well
under a second; ``test_secure_session.py`` runs the same protocol over real Flower sessions and
``test_secure_attacks.py`` plays a server that does not follow it.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from client.federation.secagg_state import SecAggPolicy
from client.federation.secure_aggregation import SecureAggregationClient
from server.sessions.manager import ApprovalOptions, _secure_aggregation_config
from shared import secagg_masking as masking
from shared import secagg_protocol as proto
from shared.errors import ConfigError, ProtocolError, SessionFailedError
from tests.secagg_fakes import Federation, FixedUpdate, LoopbackProxy

SHAPES = [(64, 16), (16,), (16, 4), (4,)]
CLIP = proto.DEFAULT_CLIP_RANGE
LEVELS = proto.levels_for(5)  # the most that fit for 5 sites at the default weight cap
STEP = 2 * CLIP / proto.levels_for(4)  # one quantisation step (4 sites or fewer): the bound on |secure - plain|
ZEROS = [np.zeros(s, np.float32) for s in SHAPES]


def _updates(count: int, seed: int = 0, scale: float = 0.5) -> dict[str, list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    return {f"site{i}": [rng.normal(0, scale, s).astype(np.float32) for s in SHAPES] for i in range(count)}


def _run(
    updates: dict[str, list[np.ndarray]],
    examples: dict[str, int],
    *,
    threshold: int,
    levels: int | None = None,
    no_vector_from: tuple[str, ...] = (),
    silent_in_unmask: tuple[str, ...] = (),
) -> tuple[list[np.ndarray], dict[str, list[np.ndarray]]]:
    """One round: keys, DP-free 'training', masking, unmasking. Returns (mean update, masked vectors)."""
    federation = Federation(updates)
    clients = {s: federation.client(s, FixedUpdate(d, examples[s])) for s, d in updates.items()}
    proxies = {s: LoopbackProxy(c, (proto.UNMASK,) if s in silent_in_unmask else ()) for s, c in clients.items()}
    server = federation.server_round(1, proxies, threshold=threshold, levels=levels)
    relayed = server.exchange_keys()
    masked = {s: clients[s].fit(ZEROS, relayed[s])[0] for s in clients if s not in no_vector_from}
    mean, sums = masking.decode_update(server.unmask(proto.FIT, masked), CLIP, server.setup.levels)
    assert sums["examples"] == sum(examples[s] for s in masked)
    return mean, masked


def _weighted_mean(updates: dict[str, list[np.ndarray]], examples: dict[str, int]) -> list[np.ndarray]:
    total = sum(examples[s] for s in updates)
    return [sum(examples[s] * updates[s][i].astype(np.float64) for s in updates) / total
            for i in range(len(SHAPES))]


def _max_error(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    return max(float(np.max(np.abs(x - y))) for x, y in zip(a, b))


@pytest.mark.parametrize("levels", [1 << 12, LEVELS])
def test_secure_mean_is_the_weighted_mean_within_one_quantisation_step(levels: int) -> None:
    updates = _updates(5)
    examples = {"site0": 120, "site1": 7, "site2": 300, "site3": 45, "site4": 1}
    mean, _ = _run(updates, examples, threshold=4, levels=levels)
    error = _max_error(mean, _weighted_mean(updates, examples))
    assert error <= 2 * CLIP / levels
    if levels == 1 << 12:  # with coarse levels the error is visible, and of the stated size
        assert error > 0.05 * 2 * CLIP / levels


def test_clipping_to_the_quantisation_range_bounds_each_site_influence() -> None:
    updates = _updates(3, scale=0.1)
    updates["site2"] = [np.full(s, 1e6, np.float32) for s in SHAPES]  # an absurd update
    examples = {"site0": 10, "site1": 10, "site2": 10}
    mean, _ = _run(updates, examples, threshold=2)
    clipped = {s: [np.clip(d, -CLIP, CLIP) for d in ds] for s, ds in updates.items()}
    assert _max_error(mean, _weighted_mean(clipped, examples)) <= STEP
    assert max(float(np.max(np.abs(m))) for m in mean) <= CLIP


def test_what_the_server_receives_from_a_site_is_uniform_noise_in_the_field() -> None:
    sizes = [int(np.prod(s)) for s in SHAPES]
    ramp = np.linspace(-3.5, 3.5, sum(sizes))  # a strongly structured update
    updates = _updates(3, scale=0.1)
    updates["site0"] = [part.reshape(s) for part, s in zip(np.split(ramp, np.cumsum(sizes)[:-1]), SHAPES)]
    _, masked = _run(updates, {"site0": 50, "site1": 20, "site2": 30}, threshold=2)

    received = np.concatenate([m.ravel() for m in masked["site0"][:-1]])
    assert received.dtype == np.uint32
    as_unit = received.astype(np.float64) / 2.0**32
    assert stats.kstest(as_unit, "uniform").pvalue > 1e-4
    top_bits = (received >> np.uint32(28)).astype(np.int64)  # 16 equally likely buckets
    assert stats.chisquare(np.bincount(top_bits, minlength=16)).pvalue > 1e-4
    assert abs(np.corrcoef(as_unit, ramp)[0, 1]) < 5 / np.sqrt(received.size)
    # The same statistics see the update at once when it is encoded but not masked: they have power.
    encoded = np.concatenate([e.ravel() for e in masking.encode(updates["site0"], 50, CLIP, LEVELS)]) / 2.0**32
    assert stats.kstest(encoded, "uniform").pvalue < 1e-10
    assert np.corrcoef(encoded, ramp)[0, 1] > 0.99
    # The weight and example count ride masked too, in their own 64-bit array: not 50 in clear.
    extras = masked["site0"][-1]
    assert extras.dtype == np.uint64 and extras.shape == (len(proto.FIT_EXTRAS),) and 50 not in extras.tolist()


def test_a_site_that_drops_after_sharing_its_keys_is_recovered() -> None:
    updates = _updates(4)
    examples = {"site0": 10, "site1": 20, "site2": 30, "site3": 40}
    mean, masked = _run(updates, examples, threshold=3, no_vector_from=("site1",))
    assert set(masked) == {"site0", "site2", "site3"}
    survivors = {s: updates[s] for s in masked}
    assert _max_error(mean, _weighted_mean(survivors, examples)) <= STEP


def test_a_site_that_drops_after_sending_its_vector_still_counts() -> None:
    updates = _updates(4)
    examples = {"site0": 10, "site1": 20, "site2": 30, "site3": 40}
    mean, _ = _run(updates, examples, threshold=3, silent_in_unmask=("site3",))
    assert _max_error(mean, _weighted_mean(updates, examples)) <= STEP


def test_too_many_dropouts_fail_the_round_with_the_numbers() -> None:
    updates = _updates(4)
    examples = dict.fromkeys(updates, 10)
    with pytest.raises(SessionFailedError, match="secure aggregation: only 2 of 4 sites survived masking, threshold 3"):
        _run(updates, examples, threshold=3, no_vector_from=("site1", "site2"))
    with pytest.raises(SessionFailedError, match="only 2 of 4 sites survived unmasking, threshold 3"):
        _run(updates, examples, threshold=3, silent_in_unmask=("site0", "site3"))


def _site_after_masking() -> tuple[SecureAggregationClient, dict]:
    """site0 of a three-site round that has sent its masked vector, ready for ``unmask``."""
    updates = _updates(3)
    federation = Federation(updates)
    clients = {s: federation.client(s, FixedUpdate(d, 10)) for s, d in updates.items()}
    server = federation.server_round(7, {s: LoopbackProxy(c) for s, c in clients.items()}, threshold=2)
    relayed = server.exchange_keys()
    clients["site0"].fit(ZEROS, relayed["site0"])
    return clients["site0"], {proto.STAGE: proto.UNMASK, proto.ROUND: 7}


def test_a_site_never_reveals_both_secrets_of_one_site() -> None:
    site, unmask = _site_after_masking()
    with pytest.raises(ProtocolError, match="inconsistent"):
        site.get_properties({**unmask, proto.SURVIVORS: "site0,site1", proto.DROPPED: "site1,site2"})
    fresh = Federation(["x"]).client("x", FixedUpdate([], 1))  # a fresh site refuses stray stages
    with pytest.raises(ProtocolError, match="unmask of round 7 after unmask_evaluate of round 0"):
        fresh.get_properties({**unmask, proto.SURVIVORS: "x", proto.DROPPED: ""})


def test_a_site_answers_each_stage_once_and_in_order() -> None:
    site, unmask = _site_after_masking()
    with pytest.raises(ProtocolError, match="no unused masks"):  # a second vector would leak the difference
        site.state.mask(proto.FIT, [np.zeros(s, np.uint32) for s in SHAPES])
    request = {**unmask, proto.SURVIVORS: "site0,site1,site2", proto.DROPPED: ""}
    assert set(site.get_properties(request)) == {f"{proto.SEED_SHARE}:site{i}" for i in range(3)}
    with pytest.raises(ProtocolError):
        site.get_properties(request)
    with pytest.raises(ProtocolError, match="share_keys of round 7 after unmask of round 7"):
        site.get_properties({proto.STAGE: proto.SHARE_KEYS, proto.ROUND: 7})


def test_thresholds_need_a_majority_of_a_neighbourhood() -> None:
    assert [proto.default_threshold(n) for n in (2, 3, 5, 10, 50)] == [2, 2, 4, 6, 9]
    with pytest.raises(ConfigError, match="above half"):
        proto.check_threshold(2, 4)
    with pytest.raises(ConfigError, match="above half of the 13 site"):  # 50 sites: neighbourhoods of 13
        proto.check_threshold(6, 50)
    site = Federation(["a", "b", "c", "d"]).client("a", FixedUpdate([], 1))
    with pytest.raises(ConfigError):
        site.get_properties({proto.STAGE: proto.SETUP, **proto.RoundSetup(1, 1, ("a", "b", "c", "d"), 1, CLIP,
                                                                           LEVELS, 1).to_config()})


def test_a_site_in_a_secure_session_refuses_plain_weights_and_plain_metrics() -> None:
    inner = FixedUpdate([np.ones(s, np.float32) for s in SHAPES], 10)
    federation = Federation(["a"])
    site = SecureAggregationClient(inner, site="a", identity=federation.identities["a"], peers=federation.peers(),
                                   policy=SecAggPolicy(required=True))
    with pytest.raises(ProtocolError, match="refusing to send plain weights"):
        site.fit(ZEROS, {"round": 1})
    with pytest.raises(ProtocolError, match="refusing to send plain validation metrics"):
        site.evaluate(ZEROS, {"round": 1})
    assert inner.fits == 0 and inner.evaluations == 0, "no training (and no privacy spent) for a refused round"
    assert len(federation.client("a", inner).fit(ZEROS, {})[0]) == 4  # not required: passes through


def test_approval_turns_secure_aggregation_on_for_three_sites_or_more() -> None:
    config = _secure_aggregation_config
    assert config(2, ApprovalOptions()) == {"secure_aggregation": False}
    assert config(3, ApprovalOptions()) == {"secure_aggregation": True, "secagg_threshold": 2}
    assert config(5, ApprovalOptions(secagg_threshold=5)) == {"secure_aggregation": True, "secagg_threshold": 5}
    assert config(2, ApprovalOptions(secure_aggregation=True))["secure_aggregation"] is True
    assert config(9, ApprovalOptions(secure_aggregation=False)) == {"secure_aggregation": False}
    with pytest.raises(ConfigError, match="above half"):
        config(6, ApprovalOptions(secagg_threshold=3))


def _fitted_round(sites: dict[str, FixedUpdate], *, silent_in_evaluate: tuple[str, ...] = ()):
    """A four-stage fit of ``sites`` done; returns (clients, server) ready for the evaluate slot."""
    federation = Federation(sites)
    clients = {s: federation.client(s, inner) for s, inner in sites.items()}
    proxies = {s: LoopbackProxy(c, (proto.UNMASK_EVALUATE,) if s in silent_in_evaluate else ())
               for s, c in clients.items()}
    server = federation.server_round(1, proxies, threshold=3)
    relayed = server.exchange_keys()
    server.unmask(proto.FIT, {s: c.fit(ZEROS, relayed[s])[0] for s, c in clients.items()})
    return clients, server


@pytest.mark.parametrize("silent", [(), ("site1",)])
def test_validation_metrics_leave_a_site_only_inside_the_secure_sum(silent: tuple[str, ...]) -> None:
    validation = {"site0": (0.5, 10, 0.6), "site1": (1.25, 30, 0.3), "site2": (0.75, 4, 1.0), "site3": (2.0, 0, 0.0)}
    sites = {s: FixedUpdate([np.zeros(sh, np.float32) for sh in SHAPES], 5, val=v,
                            metrics={"site": s, "session_secret": "x", "val_loss_detail": 0.123})
             for s, v in validation.items()}
    clients, server = _fitted_round(sites, silent_in_evaluate=silent)
    results = {s: c.evaluate(ZEROS, server.evaluate_config()) for s, c in clients.items()}

    for site, (loss, examples, metrics) in results.items():  # what the server sees of each site
        assert (loss, examples) == (0.0, 0)
        assert set(metrics) == {"site", "session_secret", proto.MASKED}
        assert sites[site].evaluations == 1
    masked = {s: [np.frombuffer(m[proto.MASKED], masking.EXTRAS_FIELD).copy()] for s, (_, _, m) in results.items()}
    sums = masking.decode_extras(server.unmask(proto.EVALUATE, masked)[0], proto.EVALUATE_EXTRAS)
    assert sums["examples"] == 44 and sums["correct"] == 6 + 9 + 4
    assert sums["loss_sum"] == pytest.approx(0.5 * 10 + 1.25 * 30 + 0.75 * 4, abs=4 / 2**20)
    with pytest.raises(ProtocolError, match="no unused masks"):  # one evaluate vector per round
        clients["site0"].state.mask(proto.EVALUATE, [np.zeros(3, np.uint64)])


def test_a_fit_metric_named_as_an_extra_goes_only_into_the_secure_sum(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(proto, "FIT_EXTRAS", (*proto.FIT_EXTRAS, proto.ExtraSum("val_correct")))
    sites = {f"site{i}": FixedUpdate([np.zeros(s, np.float32) for s in SHAPES], 5, metrics={"val_correct": i + 1})
             for i in range(3)}
    federation = Federation(sites)
    clients = {s: federation.client(s, inner) for s, inner in sites.items()}
    server = federation.server_round(1, {s: LoopbackProxy(c) for s, c in clients.items()}, threshold=2)
    relayed = server.exchange_keys()
    results = {s: c.fit(ZEROS, relayed[s]) for s, c in clients.items()}
    assert all("val_correct" not in metrics for _, _, metrics in results.values())
    _, sums = masking.decode_update(server.unmask(proto.FIT, {s: r[0] for s, r in results.items()}),
                                    CLIP, server.setup.levels)
    assert sums == {"weight": 15, "examples": 15, "val_correct": 6}


def test_stochastic_rounding_is_unbiased() -> None:
    """floor(x + U): each coordinate rounds up with the probability of its fraction, so means stay exact."""
    delta = [np.full(200_000, 0.0123, np.float32)]  # 8.0984 steps above the bottom of [-1, 1] at 16 levels
    quantized = masking.encode(delta, 1, clip_range=1.0, levels=16)[0].astype(np.float64)
    exact = (0.0123 + 1.0) * 16 / 2
    assert set(np.unique(quantized)) == {8.0, 9.0}
    assert abs(quantized.mean() - exact) < 5 * np.sqrt(0.0984 * (1 - 0.0984) / quantized.size)


def test_the_strategy_takes_only_masked_vectors_and_masked_metrics() -> None:
    from flwr.common import Code, EvaluateRes, FitRes, Status, ndarrays_to_parameters

    from server.sessions.fedprox import _Admitted
    from server.sessions.merge import Rebased
    from server.sessions.secure_fedprox import SecureFedProx

    rejected: list[tuple] = []
    strategy = SecureFedProx(
        identity_keys={}, stage_timeout_s=1, participants=["a", "b", "c"], verify_secret=lambda s, x: True,
        rebase_final=lambda weights: Rebased(weights, 0, 0, None),
        initial_weights=ZEROS, proximal_mu=0.0, round_config={"session_id": 1, "num_rounds": 1}, min_results=2,
        site_configs={site: {"examples": 10} for site in ("a", "b", "c")},
        max_update_norm=10.0, on_round=lambda *a: None, on_reject=lambda *a: rejected.append(a))
    ok = Status(Code.OK, "")
    plain = FitRes(ok, ndarrays_to_parameters(ZEROS), 10, {})
    masked = FitRes(ok, ndarrays_to_parameters([np.zeros(s, np.uint32) for s in SHAPES]
                                               + [np.zeros(len(proto.FIT_EXTRAS), np.uint64)]), 10, {})
    assert not strategy._update_is_sound(1, _Admitted(None, plain, "a"))
    assert strategy._update_is_sound(1, _Admitted(None, masked, "b"))
    clear_metrics = EvaluateRes(ok, 0.3, 10, {"accuracy": 0.9})
    assert strategy._masked_metrics(1, _Admitted(None, clear_metrics, "c")) is None
    assert [(r[2], r[3]) for r in rejected] == [
        ("a", "update rejected: not a masked vector of the model's shapes"),
        ("c", "result rejected: no masked validation metrics")]
