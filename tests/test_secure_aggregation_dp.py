"""DP comes before masking: the masked vector is built from what DP-SGD produced, nothing else."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

import client.federation.flower_client as flower_client
from client.federation.flower_client import FLClient, LocalData
from client.federation.secure_aggregation import (
    SecAggClientState,
    SecureAggregationClient,
)
from client.training.dp_training import DPConfig
from client.training.examples import TrainingExamples
from client.training.ledger import PrivacyLedger
from client.training.privacy_contract import RequestTerms
from server.sessions.secure_aggregation import SecureAggregationRound
from shared import secagg_protocol as proto
from shared.privacy_accounting import SCHEDULE_PREFIX, DpSchedule
from tests.secagg_fakes import LoopbackProxy

pytestmark = pytest.mark.slow
DP = {"noise_multiplier": 1.0, "delta": 1e-5, "l2_norm_clip": 1.0}
STEP = 2 * proto.DEFAULT_CLIP_RANGE / proto.DEFAULT_LEVELS


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

    def mask(self, global_weights, new_weights, examples):
        events.append(("mask", new_weights))
        return real_mask(self, global_weights, new_weights, examples)

    monkeypatch.setattr(flower_client, "train_dp", train)
    monkeypatch.setattr(SecAggClientState, "receive_shares", receive)
    monkeypatch.setattr(SecAggClientState, "mask", mask)

    site = SecureAggregationClient(_dp_site(tmp_path), site="a", required=True)
    server = SecureAggregationRound(1, {"a": LoopbackProxy(site)}, threshold=1,
                                    clip_range=proto.DEFAULT_CLIP_RANGE, levels=proto.DEFAULT_LEVELS, timeout_s=5)
    global_weights = site.get_parameters({})
    schedule = DpSchedule.for_epochs(noise_multiplier=1.0, l2_norm_clip=1.0, examples=64, batch_size=16, epochs=1)
    config = {"session_id": "S-1", "round": 1, "num_rounds": 1, "local_epochs": 1, "batch_size": 16,
              "learning_rate": 0.1, "proximal_mu": 0.1, "examples": 64, **schedule.to_dict(SCHEDULE_PREFIX),
              **server.exchange_keys()["a"]}
    masked, examples, metrics = site.fit(global_weights, config)

    assert [name for name, _ in events] == ["shares", "dp_train", "mask"]
    assert events[2][1] is events[1][1], "the masked update is exactly what DP-SGD returned"
    assert examples == 64 and "loss" not in metrics
    assert all(m.dtype == np.uint64 for m in masked)
    mean = server.unmask({"a": masked}, {"a": examples})
    trained_delta = [np.float64(w) - g for w, g in zip(events[1][1], global_weights)]
    assert max(float(np.max(np.abs(m - d))) for m, d in zip(mean, trained_delta)) <= STEP
