"""ResNet50's top stages replayed with matmul convolutions give Keras' own outputs."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from client.training.resnet_stages import (
    run_top_stages,
    silence_blocks,
    stage_input_model,
    stage_layers,
    top_stages,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def backbone() -> tf.keras.Model:
    tf.keras.utils.set_random_seed(0)
    return tf.keras.applications.ResNet50(
        include_top=False, weights=None, input_shape=(48, 48, 3), pooling="avg"
    )


@pytest.mark.parametrize("train_stages", [1, 2, 4])
def test_replay_equals_the_keras_backbone(backbone: tf.keras.Model, train_stages: int) -> None:
    """48 px gives conv5 a 2x2 map, so the 3x3 kernels' off-centre taps are exercised too."""
    images = np.random.default_rng(0).uniform(-120, 140, (4, 48, 48, 3)).astype(np.float32)
    expected = backbone(images, training=False).numpy()
    stage_in = stage_input_model(backbone, train_stages)(images)
    got = run_top_stages(backbone, stage_in, train_stages, training=False).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


def test_silenced_blocks_are_identities() -> None:
    """Skipping silenced blocks in the replay still gives the full Keras network's output."""
    model = tf.keras.applications.ResNet50(
        include_top=False, weights=None, input_shape=(32, 32, 3), pooling="avg"
    )
    images = np.random.default_rng(1).uniform(-120, 140, (4, 32, 32, 3)).astype(np.float32)
    before = model(images, training=False).numpy()
    silence_blocks(model, 4, blocks=1)
    expected = model(images, training=False).numpy()
    got = run_top_stages(model, stage_input_model(model, 4)(images), 4, training=False, blocks=1)
    assert not np.allclose(before, expected)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
    names = {layer.name for layer in stage_layers(model, 4, blocks=1)}
    assert "conv5_block1_3_conv" in names and "conv5_block2_1_conv" not in names


def test_stage_layers_are_exactly_the_named_stages(backbone: tf.keras.Model) -> None:
    layers = stage_layers(backbone, 2)
    assert {layer.name[:6] for layer in layers} == {"conv5_", "conv4_"}
    assert sum(isinstance(layer, tf.keras.layers.Conv2D) for layer in layers) == 3 * 3 + 1 + 6 * 3 + 1
    with pytest.raises(ValueError):
        top_stages(5)
