"""DP comes before masking: the masked vector is built from what DP-SGD produced, nothing else."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

import client.federation.flower_client as flower_client
from client.federation.flower_client import FLClient, LocalData
from client.federation.secagg_state import SecAggClientState, SecAggPolicy
from client.training.dp_training import DPConfig
from client.training.examples import TrainingExamples
from client.training.ledger import PrivacyLedger
from client.training.privacy_contract import RequestTerms
from shared import secagg_masking as masking
from shared import secagg_protocol as proto
from shared.privacy_accounting import SCHEDULE_PREFIX, DpSchedule
from tests.secagg_fakes import Federation, FixedUpdate, LoopbackProxy

pytestmark = pytest.mark.slow
DP = {"noise_multiplier": 1.0, "delta": 1e-5, "l2_norm_clip": 1.0}
STEP = 2 * proto.DEFAULT_CLIP_RANGE / proto.levels_for(2)


def _dp_site(tmp_path: Path) -> FLClient:
    rng = np.random.default_rng(0)
    features, labels = rng.normal(size=(64, 8)).astype(np.float32), rng.integers(0, 4, 64)
    model = tf.keras.Sequential([tf.keras.Input((8,)), tf.keras.layers.Dense(4, activation="softmax")])
    data = tf.data.Dataset.from_tensor_slices((features, labels))
    return FLClient(
        LocalData(model=model, train=TrainingExamples.from_arrays(features, labels), val=data, n_train=64,
                  n_val=64),
        dp=DPConfig(**DP),
        ledger=PrivacyLedger(tmp_path / "ledger.db", max_epsilon=100.0, delta=1e-5),
        fingerprint="test",
        terms=RequestTerms.of(1, 1, DP, {"examples": 64}),
    )


def test_masking_wraps_the_dp_trained_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    events: list[tuple[str, object]] = []
    real_train, real_receive, real_mask = (
        flower_client.train_dp, SecAggClientState.receive_shares, SecAggClientState.mask)

    def train(*args, **kwargs):
        result = real_train(*args, **kwargs)
        events.append(("dp_train", result.weights))
        return result

    def receive(self, config):
        events.append(("shares", None))
        return real_receive(self, config)

    def mask(self, slot, encoded):
        events.append(("mask", [e.copy() for e in encoded]))
        return real_mask(self, slot, encoded)

    monkeypatch.setattr(flower_client, "train_dp", train)
    monkeypatch.setattr(SecAggClientState, "receive_shares", receive)
    monkeypatch.setattr(SecAggClientState, "mask", mask)

    federation = Federation(["a", "b"])
    site = federation.client("a", _dp_site(tmp_path), SecAggPolicy(required=True))
    global_weights = site.get_parameters({})
    other = federation.client("b", FixedUpdate([np.zeros_like(w) for w in global_weights], 1))
    server = federation.server_round(1, {"a": LoopbackProxy(site), "b": LoopbackProxy(other)}, threshold=2)
    relayed = server.exchange_keys()
    schedule = DpSchedule.for_epochs(noise_multiplier=1.0, l2_norm_clip=1.0, examples=64, batch_size=16, epochs=1)
    config = {"session_id": "S-1", "round": 1, "num_rounds": 1, "local_epochs": 1, "batch_size": 16,
              "learning_rate": 0.1, "proximal_mu": 0.1, "examples": 64, **schedule.to_dict(SCHEDULE_PREFIX)}
    masked, examples, metrics = site.fit(global_weights, {**config, **relayed["a"]})

    assert [name for name, _ in events] == ["shares", "dp_train", "mask"]
    trained = events[1][1]
    expected = masking.encode([np.float64(w) - g for w, g in zip(trained, global_weights)], examples,
                              proto.DEFAULT_CLIP_RANGE, server.setup.levels)
    # What was masked is the encoding of exactly what DP-SGD returned (stochastic rounding: within one level).
    assert all(np.max(np.abs(m.astype(np.int64) - e.astype(np.int64))) <= examples
               for m, e in zip(events[2][1][:-1], expected))
    assert examples == 64 and "loss" not in metrics  # training metrics stay on the site
    assert [m.dtype for m in masked] == [np.uint32] * (len(masked) - 1) + [np.uint64]
    other_masked = other.fit(global_weights, relayed["b"])[0]  # b's update is zero and it has one example
    mean, _ = masking.decode_update(server.unmask(proto.FIT, {"a": masked, "b": other_masked}),
                                    proto.DEFAULT_CLIP_RANGE, server.setup.levels)
    trained_delta = [(np.float64(w) - g) * examples / (examples + 1) for w, g in zip(trained, global_weights)]
    assert max(float(np.max(np.abs(m - d))) for m, d in zip(mean, trained_delta)) <= STEP
