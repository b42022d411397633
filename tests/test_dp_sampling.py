"""Poisson subsampling as the accountant assumes it (issue 13): sizes, noise scale, empty steps, the event.

Each test would fail on the trainer of shuffled fixed-size batches averaged over the realised batch:
its batch sizes have no variance, its noise is divided by the realised size, and its step count
is ``epochs * ceil(n / B)``, not the schedule's.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from client.training.data import SiteData
from client.training.dp_training import LocalSettings, train_dp
from client.training.examples import TrainingExamples
from client.training.per_example_clipping import ClippedGradientSum
from client.training.poisson_sampling import epoch_boundaries, os_seeded_generator
from shared.classifier import FEATURE_DIM, build_head, get_trainable_weights
from shared.privacy_accounting import DpSchedule, epsilon_for
from shared.protocol import DP_ENGINES

pytestmark = pytest.mark.slow


def _examples(n: int, *, zero: bool = False, seed: int = 0) -> TrainingExamples:
    rng = np.random.default_rng(seed)
    features = np.zeros((n, FEATURE_DIM), np.float32) if zero else rng.standard_normal((n, FEATURE_DIM))
    return TrainingExamples.from_arrays(features.astype(np.float32), rng.integers(0, 4, n).astype(np.int32))


def _kernel_change(engine: str, examples: TrainingExamples, schedule: DpSchedule) -> tuple[np.ndarray, tuple]:
    """The hidden kernel's change after one SGD run (lr 1): with zero features, pure noise."""
    head = build_head(seed=0)
    before = head.get_layer("head_hidden").kernel.numpy().copy()
    result = train_dp(head, examples, schedule, LocalSettings(learning_rate=1.0, engine=engine))
    return head.get_layer("head_hidden").kernel.numpy() - before, result.batch_sizes


def test_realised_batch_sizes_are_binomial_and_not_seeded() -> None:
    n, rate, steps = 200, 0.1, 600
    examples = _examples(n)
    schedule = DpSchedule(0.0, rate, steps, 1.0)
    tf.random.set_seed(1234)  # a process-wide seed must not fix the sampling
    try:
        first = train_dp(build_head(seed=0), examples, schedule, LocalSettings(0.05)).batch_sizes
        tf.random.set_seed(1234)
        second = train_dp(build_head(seed=0), examples, schedule, LocalSettings(0.05)).batch_sizes
    finally:
        tf.random.set_seed(None)
    sizes = np.asarray(first, float)
    mean, variance = n * rate, n * rate * (1 - rate)
    assert len(sizes) == steps
    assert abs(sizes.mean() - mean) < 4 * np.sqrt(variance / steps)
    assert 0.75 * variance < sizes.var(ddof=1) < 1.25 * variance
    assert first != second


def test_generators_are_seeded_by_the_os() -> None:
    tf.random.set_seed(7)
    try:
        draws = [os_seeded_generator().uniform([4]).numpy() for _ in range(2)]
    finally:
        tf.random.set_seed(None)
    assert not np.array_equal(*draws)


@pytest.mark.parametrize("engine", DP_ENGINES)
def test_noise_on_the_update_is_sigma_c_over_the_expected_batch(engine: str) -> None:
    """Zero features give the hidden kernel zero per-example gradients: its change is the noise."""
    n, rate, sigma, clip = 100, 0.205, 2.0, 0.5  # q*n = 20.5 is no realisable batch size
    change, sizes = _kernel_change(engine, _examples(n, zero=True), DpSchedule(sigma, rate, 1, clip))
    expected = sigma * clip / (rate * n)
    assert len(sizes) == 1
    assert abs(change.std() / expected - 1) < 0.02, (change.std(), expected, sizes)
    assert abs(change.mean()) < 0.01 * expected


@pytest.mark.parametrize("engine", DP_ENGINES)
def test_an_empty_step_still_adds_noise(engine: str) -> None:
    n, rate = 10, 1e-6  # P(any example sampled) = 1e-5
    change, sizes = _kernel_change(engine, _examples(n), DpSchedule(1.0, rate, 1, 1.0))
    assert sizes == (0,)
    assert abs(change.std() / (1.0 / (rate * n)) - 1) < 0.02


@pytest.mark.parametrize("engine", DP_ENGINES)
def test_the_dp_event_is_the_run(engine: str) -> None:
    n = 150
    schedule = DpSchedule.for_epochs(noise_multiplier=1.1, l2_norm_clip=1.0, examples=n, batch_size=16, epochs=3)
    head = build_head(seed=0)
    result = train_dp(head, _examples(n), schedule, LocalSettings(0.05, engine=engine))
    assert schedule.steps == 29  # ceil(3 / (16 / 150)); shuffled batches would take 3 * 10
    assert result.steps == len(result.batch_sizes) == schedule.steps
    assert result.event == schedule.event()
    assert result.event.count == schedule.steps
    assert result.event.event.sampling_probability == pytest.approx(16 / 150)
    assert result.engine == engine
    assert np.isfinite(epsilon_for(result.event, 1e-5))


def test_a_schedule_of_zero_steps_trains_nothing() -> None:
    head = build_head(seed=0)
    before = get_trainable_weights(head)
    result = train_dp(head, _examples(20), DpSchedule(1.0, 0.5, 0, 1.0), LocalSettings(0.1))
    assert result.steps == 0 and result.batch_sizes == ()
    assert all(np.array_equal(a, b) for a, b in zip(before, get_trainable_weights(head)))


def test_epochs_split_the_steps_for_progress_only() -> None:
    assert epoch_boundaries(29, 16 / 150) == [10, 19, 29]
    assert epoch_boundaries(3, 1.0) == [1, 2, 3]
    assert epoch_boundaries(0, 0.1) == []
    for n, batch, epochs in [(150, 16, 3), (320, 64, 1), (125, 16, 5), (7, 64, 4), (1000, 3, 2)]:
        schedule = DpSchedule.for_epochs(noise_multiplier=1.0, l2_norm_clip=1.0, examples=n,
                                         batch_size=batch, epochs=epochs)
        assert len(epoch_boundaries(schedule.steps, schedule.sampling_rate)) == epochs


def test_fused_ghost_clipping_equals_vectorised_per_example_clipping() -> None:
    """The one-pass ghost-norm sum is the same as clipping real per-example gradients (chunked)."""
    head = build_head(seed=3)
    fused = ClippedGradientSum(head, 0.05)
    vectorised = ClippedGradientSum(head, 0.05, chunk=3)
    vectorised.fast = False
    assert fused.fast
    examples = _examples(10, seed=1)
    x, y = examples.batch(tf.range(10))
    (fast_sums, fast_loss, fast_correct), (slow_sums, slow_loss, slow_correct) = fused(x, y), vectorised(x, y)
    for got, want in zip(fast_sums, slow_sums):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    assert float(fast_loss) == pytest.approx(float(slow_loss), rel=1e-5)
    assert float(fast_correct) == float(slow_correct)
    empty_x, empty_y = examples.batch(tf.zeros([0], tf.int32))
    for path in (fused, vectorised):
        sums, loss, correct = path(empty_x, empty_y)
        assert all(not np.any(s.numpy()) for s in sums) and float(loss) == 0.0 and float(correct) == 0.0


def test_images_stay_uint8_and_are_augmented_per_example_after_the_gather() -> None:
    n = 6
    pixels = np.random.default_rng(0).integers(0, 256, (n, 16, 16)).astype(np.uint8)
    data = SiteData([Path(f"{i}.jpg") for i in range(n)], pixels, np.arange(n, dtype=np.int32) % 4,
                    np.arange(n), np.zeros(0, int))
    plain = TrainingExamples.from_images(data, np.arange(n))
    assert plain.inputs.dtype == tf.uint8
    x, y = plain.batch(tf.constant([2, 5]))
    np.testing.assert_allclose(x.numpy()[:, :, :, 0], pixels[[2, 5]] / 255.0, atol=1e-6)
    assert x.shape == (2, 16, 16, 3) and y.numpy().tolist() == [2, 1]
    augmented, _ = TrainingExamples.from_images(data, np.arange(n), augment=True).batch(tf.constant([0, 0, 0]))
    assert not np.allclose(augmented[0], augmented[1]) and not np.allclose(augmented[1], augmented[2])
    with pytest.raises(ValueError, match="labels"):
        TrainingExamples.from_arrays(np.zeros((3, 2)), np.zeros(2))
