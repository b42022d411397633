"""DP training: per-example clipping, BatchNorm in inference mode, FedProx, and that it learns."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from client.training.data import load_site_data
from client.training.dp_training import LocalSettings, train_dp
from client.training.examples import TrainingExamples
from client.training.feature_cache import compute_features
from shared.classifier import (
    backbone_fingerprint,
    build_classifier,
    get_trainable_weights,
    initial_global_weights,
    set_trainable_weights,
)
from shared.privacy_accounting import DpSchedule, calibrate_noise, epsilon_for
from shared.protocol import DP_ENGINES
from tests.conftest_client import IMAGE_SIZE

pytestmark = pytest.mark.slow
CLIP = 0.5


@pytest.fixture(scope="module")
def features(classifier, lesion_root: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Train/validation backbone features and labels of the lesion images."""
    data = load_site_data(lesion_root, image_size=IMAGE_SIZE, seed=0)
    values = compute_features(classifier.features, data)
    return (values[data.train_index], data.labels[data.train_index],
            values[data.val_index], data.labels[data.val_index])


@pytest.fixture(scope="module")
def initial_head() -> list[np.ndarray]:
    return initial_global_weights(IMAGE_SIZE, 0, None, 0)


@pytest.fixture
def head(classifier, initial_head: list[np.ndarray]):
    """The shared head, reset to the seed-0 initial weights (what the server's v0 holds)."""
    set_trainable_weights(classifier.head, initial_head)
    return classifier.head


def test_only_trainable_variables_travel(classifier, classifier_conv5) -> None:
    for model in (classifier.full, classifier_conv5.full):
        weights = get_trainable_weights(model)
        assert [w.shape for w in weights] == [tuple(v.shape) for v in model.trainable_variables]
    head_only = get_trainable_weights(classifier.full)
    assert [w.shape for w in head_only] == [(2048, 256), (256,), (256, 4), (4,)]
    names = [v.name for v in classifier_conv5.full.trainable_variables]
    assert all(name.startswith(("conv5_", "head_")) for name in names)
    assert not any("_bn/" in name for name in names)
    with pytest.raises(ValueError, match="expected shape"):
        set_trainable_weights(classifier.full, [w.T for w in head_only])


def test_backbone_is_deterministic_from_the_seed(classifier) -> None:
    same = build_classifier(IMAGE_SIZE, seed=0)
    other = build_classifier(IMAGE_SIZE, seed=1)
    assert backbone_fingerprint(same.full) == backbone_fingerprint(classifier.full)
    assert backbone_fingerprint(other.full) != backbone_fingerprint(classifier.full)


@pytest.mark.parametrize("engine", DP_ENGINES)
def test_dp_step_is_the_mean_of_clipped_per_example_gradients(head, features, engine: str) -> None:
    """Sampling rate 1 takes every example: the step is exactly the mean of the clipped gradients."""
    x, y = features[0][:16], features[1][:16]
    before = get_trainable_weights(head)
    per_example, norms = [], []
    for i in range(len(x)):
        with tf.GradientTape() as tape:
            loss = tf.keras.losses.sparse_categorical_crossentropy(y[i : i + 1], head(x[i : i + 1]))
        grads = tape.gradient(loss, head.trainable_variables)
        norm = np.sqrt(sum(float(tf.reduce_sum(g * g)) for g in grads))
        norms.append(norm)
        per_example.append([g.numpy() * min(1.0, CLIP / norm) for g in grads])
    expected = [w - np.mean(gs, axis=0) for w, gs in zip(before, zip(*per_example))]

    assert max(norms) > CLIP * 1.01  # clipping matters here
    train_dp(head, TrainingExamples.from_arrays(x, y), DpSchedule(0.0, 1.0, 1, CLIP),
             LocalSettings(learning_rate=1.0, engine=engine))
    for got, want in zip(get_trainable_weights(head), expected):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("engine", DP_ENGINES)
def test_proximal_term_pulls_toward_global_and_spends_nothing(head, features, engine: str) -> None:
    x, y = features[0][:64], features[1][:64]
    data = TrainingExamples.from_arrays(x, y)
    w_global = get_trainable_weights(head)

    def run(mu: float):  # full batch and no noise: the only difference is mu
        set_trainable_weights(head, w_global)
        result = train_dp(head, data, DpSchedule(0.0, 1.0, 5, CLIP),
                          LocalSettings(learning_rate=0.5, proximal_mu=mu, engine=engine))
        drift = np.sqrt(sum(np.sum((a - b) ** 2) for a, b in zip(result.weights, w_global)))
        return drift, result.event

    fedavg_drift, fedavg_event = run(0.0)
    fedprox_drift, fedprox_event = run(1.0)
    assert 0 < fedprox_drift < 0.8 * fedavg_drift
    assert fedprox_event == fedavg_event


def test_batchnorm_stays_in_inference_mode(classifier_conv5, lesion_root: Path) -> None:
    model = classifier_conv5.full
    bn_layers = [layer for layer in model.get_layer("resnet50").layers
                 if isinstance(layer, tf.keras.layers.BatchNormalization)]
    assert bn_layers and not any(layer.trainable for layer in bn_layers)
    stats = [v.numpy().copy() for layer in bn_layers for v in layer.non_trainable_variables]
    conv5_before = model.get_layer("resnet50").get_layer("conv5_block3_3_conv").kernel.numpy().copy()
    conv4_before = model.get_layer("resnet50").get_layer("conv4_block6_3_conv").kernel.numpy().copy()

    data = load_site_data(lesion_root, image_size=IMAGE_SIZE)
    result = train_dp(model, TrainingExamples.from_images(data, data.train_index[:8]),
                      DpSchedule(1.0, 0.5, 1, 1.0), LocalSettings(learning_rate=0.1))
    assert result.steps == 1

    after = [v.numpy() for layer in bn_layers for v in layer.non_trainable_variables]
    assert all(np.array_equal(a, b) for a, b in zip(stats, after))
    resnet = model.get_layer("resnet50")
    assert not np.array_equal(resnet.get_layer("conv5_block3_3_conv").kernel.numpy(), conv5_before)
    assert np.array_equal(resnet.get_layer("conv4_block6_3_conv").kernel.numpy(), conv4_before)


#: Chance is 0.25 (4 balanced classes); the head must beat it by at least this much.
MARGIN = 0.25
EPSILON = 6.0


def test_dp_training_learns_at_moderate_epsilon(head, features) -> None:
    x, y, x_val, y_val = features

    def plan(noise: float) -> DpSchedule:
        return DpSchedule.for_epochs(noise_multiplier=noise, l2_norm_clip=1.0, examples=len(x),
                                     batch_size=64, epochs=20)

    schedule = plan(calibrate_noise(EPSILON, 1e-5, lambda noise: plan(noise).event()))
    result = train_dp(head, TrainingExamples.from_arrays(x, y), schedule, LocalSettings(learning_rate=0.2))

    assert epsilon_for(result.event, 1e-5) <= EPSILON
    accuracy = float(np.mean(np.argmax(head.predict(x_val, verbose=0), axis=1) == y_val))
    assert accuracy >= 0.25 + MARGIN
