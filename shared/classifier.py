"""The classifier: a frozen (or partly unfrozen) Keras ResNet50 backbone plus a small dense head.

Three things here matter for privacy and for federation:

- BatchNorm never runs in training mode (batch statistics mix examples, which breaks per-example
  clipping): the backbone is called with ``training=False`` and every BatchNorm layer is frozen,
  which Keras 2 treats as inference mode whatever ``training`` the caller passes.
- With ``weights=None`` the backbone is filled from a NumPy generator seeded by ``seed``, so
  every site and the server build the same frozen weights; ``backbone_fingerprint`` lets a
  session check that.
- ``model.trainable_variables`` (last ``trainable_blocks`` ResNet stages, then the head) are
  exactly what is trained, noised and sent; frozen weights never travel.

Inputs are images scaled to [0, 1] with 3 channels; the model rescales them the way the ImageNet
weights expect (Caffe style). The output is class probabilities in ``CLASS_NAMES`` order.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tensorflow as tf

from shared.dataset_layout import CLASS_NAMES
from shared.errors import ConfigError

FEATURE_DIM = 2048
HEAD_UNITS = 256
#: ResNet50 stages from the top; ``trainable_blocks = k`` unfreezes the first k of these.
STAGES: tuple[str, ...] = ("conv5_", "conv4_", "conv3_", "conv2_")
_IMAGENET_MEAN_BGR = (103.939, 116.779, 123.68)
_IMAGENET_NOTOP_FILE = "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"

Weights = str | Path | None


@dataclass
class Classifier:
    """The full model and its two halves, which share layers (and so variables).

    ``full`` maps images to probabilities and is what is trained when backbone stages are
    unfrozen or images are augmented; ``features`` maps images to the 2048 pooled backbone
    features, ``head`` maps those features to probabilities (head-only training on cached
    features uses it).
    """

    full: tf.keras.Model
    features: tf.keras.Model
    head: tf.keras.Model
    trainable_blocks: int


def build_classifier(
    image_size: int, *, trainable_blocks: int = 0, weights: Weights = None, seed: int = 0
) -> Classifier:
    """Build the classifier; the same arguments give the same weights on every machine."""
    if not 0 <= trainable_blocks <= len(STAGES):
        raise ConfigError(f"trainable_blocks must be 0..{len(STAGES)} (got {trainable_blocks})")
    backbone = _backbone(image_size, weights, seed)
    _freeze(backbone, trainable_blocks)
    head_layers = _head_layers(seed)

    image = tf.keras.Input((image_size, image_size, 3), name="image")
    scaled = input_scaling()(image)
    pooled = backbone(scaled, training=False)  # BatchNorm in inference mode, always
    features_in = tf.keras.Input((FEATURE_DIM,), name="features")
    return Classifier(
        full=tf.keras.Model(image, _apply(head_layers, pooled), name="classifier"),
        features=tf.keras.Model(image, pooled, name="backbone_features"),
        head=tf.keras.Model(features_in, _apply(head_layers, features_in), name="head"),
        trainable_blocks=trainable_blocks,
    )


def input_scaling() -> tf.keras.layers.Layer:
    """[0, 1] images -> the Caffe-style inputs that ImageNet ResNet50 weights (and ours) expect."""
    return tf.keras.layers.Rescaling(
        255.0, offset=[-m for m in _IMAGENET_MEAN_BGR], name="imagenet_scale"
    )


def build_head(seed: int = 0) -> tf.keras.Model:
    """The head alone (2048 features -> probabilities), as trained on cached features."""
    features_in = tf.keras.Input((FEATURE_DIM,), name="features")
    return tf.keras.Model(features_in, _apply(_head_layers(seed), features_in), name="head")


def _apply(layers: list[tf.keras.layers.Layer], x: tf.Tensor) -> tf.Tensor:
    for layer in layers:
        x = layer(x)
    return x


def _head_layers(seed: int) -> list[tf.keras.layers.Layer]:
    """Per-example normalisation, then 2048 -> 256 -> 4.

    The LayerNormalization has no trainable weights and normalises each example on its own, so
    it is DP-safe; it makes the head indifferent to the scale of the backbone features, which
    for a randomly initialised backbone is arbitrary.
    """
    init = tf.keras.initializers
    return [
        tf.keras.layers.LayerNormalization(center=False, scale=False, name="feature_norm"),
        tf.keras.layers.Dense(
            HEAD_UNITS, activation="relu", name="head_hidden",
            kernel_initializer=init.HeNormal(seed=seed),
        ),
        tf.keras.layers.Dense(
            len(CLASS_NAMES), activation="softmax", name="head_output",
            kernel_initializer=init.GlorotUniform(seed=seed + 1),
        ),
    ]


def _backbone(image_size: int, weights: Weights, seed: int) -> tf.keras.Model:
    source = _weights_source(weights)
    backbone = tf.keras.applications.ResNet50(
        include_top=False, weights=source, input_shape=(image_size, image_size, 3), pooling="avg"
    )
    if source is None:
        _seeded_init(backbone, seed)
    return backbone


def _weights_source(weights: Weights) -> str | None:
    """``None``, ``"imagenet"`` (only when Keras has the file cached) or an existing file path."""
    if weights is None:
        return None
    if str(weights) == "imagenet":
        keras_home = Path(os.environ.get("KERAS_HOME", Path.home() / ".keras"))
        if not (keras_home / "models" / _IMAGENET_NOTOP_FILE).is_file():
            raise ConfigError(
                f"ImageNet weights are not cached ({keras_home / 'models' / _IMAGENET_NOTOP_FILE})",
                hint="Copy the file there, pass a local weights file, or use weights=None.",
            )
        return "imagenet"
    path = Path(weights)
    if not path.is_file():
        raise ConfigError(f"weights file {path} does not exist", hint="Pass an existing .h5 file.")
    return str(path)


def _seeded_init(backbone: tf.keras.Model, seed: int) -> None:
    """Fill every backbone variable from ``seed``, independently of TF's own random state.

    Kernels are He-normal (variance-preserving through ReLUs, so random features neither vanish
    nor explode); biases and BatchNorm shifts start at 0, scales and moving variances at 1.
    """
    rng = np.random.default_rng(seed)
    for variable in backbone.weights:
        shape = tuple(variable.shape)
        name = variable.name.rsplit("/", 1)[-1]
        if name.startswith("kernel"):
            fan_in = int(np.prod(shape[:-1]))
            value = rng.standard_normal(shape, dtype=np.float32) * np.float32(np.sqrt(2.0 / fan_in))
        elif name.startswith(("gamma", "moving_variance")):
            value = np.ones(shape, np.float32)
        else:
            value = np.zeros(shape, np.float32)
        variable.assign(value)


def _freeze(backbone: tf.keras.Model, trainable_blocks: int) -> None:
    """Unfreeze the last ``trainable_blocks`` stages, except their BatchNorm layers."""
    stages = STAGES[:trainable_blocks]
    backbone.trainable = trainable_blocks > 0
    for layer in backbone.layers:
        in_stage = layer.name.startswith(stages)  # False for an empty tuple
        layer.trainable = in_stage and not isinstance(layer, tf.keras.layers.BatchNormalization)


def initial_global_weights(
    image_size: int, trainable_blocks: int = 0, weights: Weights = None, seed: int = 0
) -> list[np.ndarray]:
    """Version v0 for the server: the trainable weights of a freshly built classifier."""
    classifier = build_classifier(
        image_size, trainable_blocks=trainable_blocks, weights=weights, seed=seed
    )
    return get_trainable_weights(classifier.full)


def get_trainable_weights(model: tf.keras.Model) -> list[np.ndarray]:
    """The weights that travel: ``model.trainable_variables``, in order, as NumPy arrays."""
    return [variable.numpy() for variable in model.trainable_variables]


def set_trainable_weights(model: tf.keras.Model, weights: list[np.ndarray]) -> None:
    """Load travelling weights, refusing a list that does not match the trainable variables."""
    variables = model.trainable_variables
    if len(weights) != len(variables):
        raise ValueError(f"expected {len(variables)} weight arrays, got {len(weights)}")
    for variable, value in zip(variables, weights):
        if tuple(variable.shape) != tuple(np.shape(value)):
            raise ValueError(
                f"{variable.name}: expected shape {tuple(variable.shape)}, got {np.shape(value)}"
            )
    for variable, value in zip(variables, weights):
        variable.assign(value)


def backbone_fingerprint(model: tf.keras.Model) -> str:
    """sha256 of the weights that never travel (frozen backbone, BatchNorm statistics).

    All sites of a session and the server must agree on it, or their trainable weights would
    be averaged over different feature extractors.
    """
    digest = hashlib.sha256()
    for variable in model.non_trainable_variables:
        value = np.ascontiguousarray(variable.numpy(), dtype="<f4")
        digest.update(repr(value.shape).encode())
        digest.update(value.tobytes())
    return digest.hexdigest()
