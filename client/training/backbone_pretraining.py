"""A stand-in for pretrained ResNet50 weights: supervised pretraining on a public synthetic corpus.

A real deployment loads ImageNet (or RadImageNet) weights from a local file; nothing can be
downloaded here, and a randomly initialised frozen backbone gives features that DP head training
cannot use (near chance at epsilon 6). This module makes a local weights file that
``build_classifier(..., weights=PATH)``, ``fl-server init --weights`` and
``fl-client setup --backbone-weights`` load like any other. It is a STAND-IN, not ImageNet.

Be clear about what that means: the public corpus comes from the very generator that makes the
demo's hospital data (``scripts/make_sample_data.render_image``), so this backbone is far better
matched to the sample data than ImageNet features would be to real MRI. Accuracies measured with
it say that the pipeline works, not how well real pretrained weights would transfer.

The corpus never coincides with any hospital's images: the hospitals' image generator is seeded
with the words ``[seed, class, index]``, the corpus's with ``[*PUBLIC_CORPUS_SALT, seed, class,
index]`` (the salt is four 32-bit words of a fixed sha256). NumPy seeds with the 32-bit words of
those integers, so the two could only meet for a hospital seed of at least 2**128.

What is trained, and why not everything (measured on this project's 2 shared CPU cores):
TensorFlow's CPU convolution gradients are pathologically slow on ResNet50's tiny feature maps
(full backprop: ~5-15 s per batch of 64 at 32 px), far over the ~90 s budget of ``make demo``.
So the stem (conv1, 9k weights) keeps its seeded random weights, and in each of the four stages
only the first block (the one with the projection shortcut) is trained, with matmul
convolutions (``client/training/resnet_stages.py``); the other 12 blocks are silenced: their residual
branch is zeroed, which makes them exact identities (the "zero-gamma" residual init). The file
is a complete ResNet50 weights file; the network it describes computes like a 13-layer ResNet.
``blocks_per_stage=None`` and more epochs train every block, given the time. A temporary softmax
head is trained with it (Adam, BatchNorm with batch statistics, whose moving statistics are then
re-estimated on the training images); only the backbone's weights are saved.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tensorflow as tf

from client.training.data import stratified_split
from client.training.resnet_stages import (
    run_top_stages,
    silence_blocks,
    stage_input_model,
    stage_layers,
)
from scripts.make_sample_data import render_image
from shared.classifier import FEATURE_DIM, input_scaling
from shared.dataset_layout import CLASS_NAMES
from shared.errors import ConfigError, TargetNotEmptyError

#: Seeds the public corpus apart from every hospital seed (first 16 bytes of a fixed sha256).
PUBLIC_CORPUS_SALT: tuple[int, ...] = tuple(
    int(word) for word in np.frombuffer(
        hashlib.sha256(b"fl-brain-mri public backbone corpus v1").digest()[:16], dtype="<u4"
    )
)
#: Training examples (a random, class-mixed sample) whose batch statistics become the trained
#: blocks' BatchNorm statistics.
CALIBRATION_EXAMPLES = 1024
_EVAL_BATCH = 128


@dataclass(frozen=True)
class PretrainConfig:
    """How the stand-in backbone is made; the defaults take 1-2 minutes on 2 CPU cores at 32 px."""

    image_size: int = 32
    per_class: int = 1000
    epochs: int = 3
    batch_size: int = 64
    learning_rate: float = 1e-3
    train_stages: int = 4
    blocks_per_stage: int | None = 1
    val_fraction: float = 0.2
    seed: int = 0

    def __post_init__(self) -> None:
        if self.image_size < 32:
            raise ConfigError(f"ResNet50 needs images of at least 32 px (got {self.image_size})")
        if min(self.per_class, self.epochs, self.batch_size) < 1 or self.seed < 0:
            raise ConfigError(f"need per_class, epochs, batch_size >= 1 and seed >= 0 ({self})")
        if self.blocks_per_stage is not None and self.blocks_per_stage < 1:
            raise ConfigError(f"blocks_per_stage must be >= 1 or None (got {self.blocks_per_stage})")
        if not 0 < self.val_fraction < 1 or self.learning_rate <= 0:
            raise ConfigError(f"need 0 < val_fraction < 1 and learning_rate > 0 ({self})")


@dataclass(frozen=True)
class PretrainReport:
    """What was written and how well the temporary head did on the public corpus."""

    path: Path
    sha256: str
    size_bytes: int
    train_examples: int
    val_examples: int
    epoch_losses: tuple[float, ...]
    train_accuracy: float
    val_accuracy: float
    seconds: float


@dataclass
class Pretrained:
    """A pretrained backbone (images in Caffe scale -> 2048 features) and its training record."""

    backbone: tf.keras.Model
    epoch_losses: list[float]
    train_examples: int
    val_examples: int
    train_accuracy: float
    val_accuracy: float


def public_image_rng(seed: int, class_name: str, index: int) -> np.random.Generator:
    """The generator of one public-corpus image; never equal to a hospital image's generator."""
    return np.random.default_rng([*PUBLIC_CORPUS_SALT, seed, CLASS_NAMES.index(class_name), index])


def public_corpus(per_class: int, image_size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``per_class`` uint8 grayscale images per class (in memory) and their labels."""
    images = [
        render_image(name, public_image_rng(seed, name, index), image_size)
        for name in CLASS_NAMES
        for index in range(per_class)
    ]
    labels = np.repeat(np.arange(len(CLASS_NAMES), dtype=np.int32), per_class)
    return np.stack(images), labels


def make_backbone_file(out: Path, config: PretrainConfig, *, force: bool = False) -> PretrainReport:
    """Pretrain a backbone and write its weights to ``out`` (atomically); refuse to overwrite."""
    out = Path(out)
    if out.exists() and not force:
        raise TargetNotEmptyError(f"{out} exists", hint="Pass --force to replace it.")
    started = time.perf_counter()
    pretrained = pretrain_backbone(config)
    digest, size = save_backbone_weights(pretrained.backbone, out)
    return PretrainReport(
        path=out,
        sha256=digest,
        size_bytes=size,
        train_examples=pretrained.train_examples,
        val_examples=pretrained.val_examples,
        epoch_losses=tuple(pretrained.epoch_losses),
        train_accuracy=pretrained.train_accuracy,
        val_accuracy=pretrained.val_accuracy,
        seconds=time.perf_counter() - started,
    )


def pretrain_backbone(config: PretrainConfig) -> Pretrained:
    """Train the top stages on the public corpus, re-estimate their BatchNorm statistics, evaluate."""
    tf.keras.utils.set_random_seed(config.seed)
    images, labels = public_corpus(config.per_class, config.image_size, config.seed)
    inputs = _caffe_inputs(images)
    train, val = stratified_split(labels, config.val_fraction, config.seed)
    backbone = tf.keras.applications.ResNet50(
        include_top=False, weights=None, pooling="avg",
        input_shape=(config.image_size, config.image_size, 3),
    )
    if config.blocks_per_stage is not None:
        silence_blocks(backbone, config.train_stages, config.blocks_per_stage)
    stage_inputs = stage_input_model(backbone, config.train_stages).predict(
        inputs[train], batch_size=_EVAL_BATCH, verbose=0
    )
    head = tf.keras.layers.Dense(len(CLASS_NAMES), activation="softmax", name="pretrain_head")
    rng = np.random.default_rng(config.seed)
    losses = _train_top_stages(backbone, head, stage_inputs, labels[train], config, rng)

    def run_top(x: tf.Tensor, training: bool) -> tf.Tensor:
        return run_top_stages(backbone, x, config.train_stages, training=training,
                              blocks=config.blocks_per_stage)

    sample = rng.choice(len(train), min(CALIBRATION_EXAMPLES, len(train)), replace=False)
    _calibrate_batchnorm(_trained_layers(backbone, config), lambda: run_top(stage_inputs[sample], True))
    train_features = _batched(lambda x: run_top(x, False), stage_inputs)
    val_features = backbone.predict(inputs[val], batch_size=_EVAL_BATCH, verbose=0)
    return Pretrained(
        backbone=backbone,
        epoch_losses=losses,
        train_examples=len(train),
        val_examples=len(val),
        train_accuracy=_accuracy(head, train_features, labels[train]),
        val_accuracy=_accuracy(head, val_features, labels[val]),
    )


def _caffe_inputs(images: np.ndarray) -> np.ndarray:
    """uint8 grayscale -> 3-channel float32 backbone inputs, scaled exactly as the classifier does."""
    rgb = np.repeat(images[..., np.newaxis].astype(np.float32) / 255.0, 3, axis=-1)
    return input_scaling()(rgb).numpy()


def _calibrate_batchnorm(layers: list[tf.keras.layers.Layer], forward: Callable[[], object]) -> None:
    """Set the moving statistics of every BatchNorm in ``layers`` to those of one training pass."""
    norms = [layer for layer in layers if isinstance(layer, tf.keras.layers.BatchNormalization)]
    momenta = [layer.momentum for layer in norms]
    for layer in norms:
        layer.momentum = 0.0  # the moving average becomes this pass's batch statistics
    try:
        forward()
    finally:
        for layer, momentum in zip(norms, momenta):
            layer.momentum = momentum


def _train_top_stages(
    backbone: tf.keras.Model,
    head: tf.keras.layers.Layer,
    stage_inputs: np.ndarray,
    labels: np.ndarray,
    config: PretrainConfig,
    rng: np.random.Generator,
) -> list[float]:
    """Adam on the trained blocks + head, BatchNorm with batch statistics; mean loss per epoch."""
    head.build((None, FEATURE_DIM))
    variables = [
        variable for layer in _trained_layers(backbone, config) for variable in layer.trainable_weights
    ] + head.trainable_weights
    batches_per_epoch = max(1, len(labels) // config.batch_size)
    # Decaying to zero settles the weights: with a constant rate, accuracy swings between epochs.
    schedule = tf.keras.optimizers.schedules.CosineDecay(
        config.learning_rate, decay_steps=config.epochs * batches_per_epoch
    )
    optimizer = tf.keras.optimizers.Adam(schedule)

    @tf.function(reduce_retracing=True)
    def step(x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
        with tf.GradientTape() as tape:
            pooled = run_top_stages(
                backbone, x, config.train_stages, training=True, blocks=config.blocks_per_stage
            )
            loss = tf.reduce_mean(tf.keras.losses.sparse_categorical_crossentropy(y, head(pooled)))
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return loss

    losses = []
    for _ in range(config.epochs):
        order = rng.permutation(len(labels))
        batch_losses = [
            float(step(stage_inputs[batch], labels[batch]))
            for batch in np.array_split(order, batches_per_epoch)
        ]
        losses.append(float(np.mean(batch_losses)))
    return losses


def _trained_layers(backbone: tf.keras.Model, config: PretrainConfig) -> list[tf.keras.layers.Layer]:
    return stage_layers(backbone, config.train_stages, config.blocks_per_stage)


def _batched(forward: Callable[[tf.Tensor], tf.Tensor], x: np.ndarray) -> np.ndarray:
    return np.concatenate([
        forward(tf.constant(x[start : start + _EVAL_BATCH])).numpy()
        for start in range(0, len(x), _EVAL_BATCH)
    ])


def _accuracy(head: tf.keras.layers.Layer, features: np.ndarray, labels: np.ndarray) -> float:
    predicted = np.argmax(head(features).numpy(), axis=1)
    return float(np.mean(predicted == labels))


def save_backbone_weights(backbone: tf.keras.Model, out: Path) -> tuple[str, int]:
    """Write ``backbone``'s weights as Keras HDF5 (no pickle), atomically; return sha256 and size."""
    out.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".h5")
    os.close(handle)
    try:
        backbone.save_weights(temporary)  # the .h5 suffix selects the HDF5 format
        os.chmod(temporary, 0o644)  # mkstemp makes it owner-only; the server and sites read it
        payload = Path(temporary).read_bytes()
        os.replace(temporary, out)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return hashlib.sha256(payload).hexdigest(), len(payload)
