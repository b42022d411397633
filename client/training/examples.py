"""A site's training examples held as one tensor, so a Poisson step is a gather, not a pipeline.

Poisson sampling picks arbitrary example indices every step, which a ``tf.data`` pipeline of
shuffled fixed-size batches cannot serve. The examples are small enough to keep whole: cached
backbone features are ``n x 2048`` float32, images stay uint8 (``n x size x size``) and become
float RGB (and are augmented) only after the gather, per step, inside the training graph.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from client.training.data import BRIGHTNESS_DELTA, ROTATION_FACTOR, SiteData

#: Turns a gathered batch of stored inputs into model inputs (inside the graph).
Transform = Callable[[tf.Tensor], tf.Tensor]


@dataclass(frozen=True)
class TrainingExamples:
    """``n`` examples: stored inputs, int32 labels, and what a gathered batch goes through."""

    inputs: tf.Tensor
    labels: tf.Tensor
    transform: Transform | None = None

    def __post_init__(self) -> None:
        if self.inputs.shape[0] != self.labels.shape[0]:
            raise ValueError(f"{self.inputs.shape[0]} inputs but {self.labels.shape[0]} labels")

    @property
    def size(self) -> int:
        return int(self.labels.shape[0])

    def batch(self, indices: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """Model inputs and labels of ``indices`` (any number of them, 0 included)."""
        x = tf.gather(self.inputs, indices)
        return (x if self.transform is None else self.transform(x)), tf.gather(self.labels, indices)

    @classmethod
    def from_arrays(cls, inputs: np.ndarray, labels: np.ndarray) -> TrainingExamples:
        """Inputs the model takes as they are, e.g. cached backbone features."""
        return cls(tf.constant(inputs, tf.float32), tf.constant(labels, tf.int32))

    @classmethod
    def from_images(cls, data: SiteData, index: np.ndarray, *, augment: bool = False) -> TrainingExamples:
        """The images ``index`` of ``data``, kept uint8 and made model inputs per step."""
        rotate = tf.keras.layers.RandomRotation(ROTATION_FACTOR, fill_mode="constant") if augment else None
        return cls(
            tf.constant(data.images[index], tf.uint8),
            tf.constant(data.labels[index], tf.int32),
            lambda images: _image_inputs(images, rotate),
        )


def _image_inputs(images: tf.Tensor, rotate: tf.keras.layers.Layer | None) -> tf.Tensor:
    """uint8 grayscale batch -> float32 RGB in [0, 1], each image augmented on its own.

    Per-example randomness only (flip, rotation angle, brightness shift each drawn per image),
    so one example's augmentation never depends on another's: the gradient stays per-example.
    """
    rgb = tf.image.grayscale_to_rgb(tf.cast(images[..., tf.newaxis], tf.float32) / 255.0)
    if rotate is None:
        return rgb
    rgb = rotate(tf.image.random_flip_left_right(rgb), training=True)
    shift = tf.random.uniform(
        tf.stack([tf.shape(rgb)[0], 1, 1, 1]), -BRIGHTNESS_DELTA, BRIGHTNESS_DELTA
    )
    return tf.clip_by_value(rgb + shift, 0.0, 1.0)
