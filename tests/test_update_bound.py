"""The default per-site update bound: above what honest DP-SGD rounds move, and tied to the schedule."""

from __future__ import annotations

import numpy as np
import pytest

from client.training.dp_training import LocalSettings, train_dp
from client.training.examples import TrainingExamples
from server.sessions.update_bound import honest_update_bound
from shared.classifier import (
    FEATURE_DIM,
    build_head,
    get_trainable_weights,
    set_trainable_weights,
)
from shared.privacy_accounting import DpSchedule


def _update_norm(examples: int, schedule: DpSchedule, learning_rate: float) -> tuple[float, int]:
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 4, examples).astype(np.int32)
    features = np.maximum(rng.standard_normal((examples, FEATURE_DIM)), 0).astype(np.float32)
    features[np.arange(examples)[:, None], labels[:, None] * 16 + np.arange(16)] += 2.0
    model = build_head(seed=0)
    start = get_trainable_weights(model)
    set_trainable_weights(model, start)
    result = train_dp(model, TrainingExamples.from_arrays(features, labels), schedule,
                      LocalSettings(learning_rate=learning_rate, proximal_mu=0.01))
    norm = float(np.sqrt(sum(np.sum((new.astype(np.float64) - old) ** 2) for new, old in zip(result.weights, start))))
    return norm, sum(w.size for w in start)


@pytest.mark.parametrize("examples, noise", [(20, 12.0), (200, 2.0), (200, 0.0)])
def test_an_honest_round_stays_within_its_bound(examples: int, noise: float) -> None:
    """The case a fixed bound of 150 broke (20 images, large sigma: the noise moved it by 925) included."""
    schedule = DpSchedule.for_epochs(noise_multiplier=noise, l2_norm_clip=1.0, examples=examples, batch_size=64,
                                     epochs=5)
    norm, size = _update_norm(examples, schedule, learning_rate=0.5)
    bound = honest_update_bound(schedule, examples=examples, learning_rate=0.5, trainable_values=size)
    assert norm <= bound
    if noise:  # the noise's norm is all but certain, so the bound is within the bucket allowance of it
        assert bound < 2 * norm, "the bound should stay near what an honest site moves, not be vacuous"


def test_the_bound_grows_with_the_noise_the_steps_and_a_bucketed_count() -> None:
    def bound(noise: float = 1.0, epochs: int = 1, examples: int = 1000) -> float:
        schedule = DpSchedule.for_epochs(noise_multiplier=noise, l2_norm_clip=1.0, examples=examples, batch_size=64,
                                         epochs=epochs)
        return honest_update_bound(schedule, examples=examples, learning_rate=0.5, trainable_values=525_572)

    assert bound(noise=2.0) > bound(noise=1.0)
    assert bound(epochs=5) > bound(epochs=1)
    without_noise = bound(noise=0.0, epochs=5)
    assert 0.5 * 5 * 1000 / 64 <= without_noise < 0.5 * 5 * 1000 / 64 * 1.5  # lr * C * steps, plus the binomial tail

