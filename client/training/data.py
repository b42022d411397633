"""A site's images: decoded with Pillow, split train/validation by class, served as ``tf.data``.

Images are decoded once into a uint8 grayscale array (MRI slices are grayscale; the model gets
the channel repeated three times), so epochs and rounds never decode again. Files that
``scan_dataset`` rejects, or that Pillow fails to decode completely (e.g. truncated JPEGs, which
pass ``Image.verify``), are skipped and logged once, in one warning listing them all.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tensorflow as tf
from PIL import Image

from shared.dataset_layout import (
    CLASS_NAMES,
    SkippedFile,
    scan_dataset,
    validation_size,
)
from shared.errors import DatasetError

log = logging.getLogger(__name__)

#: Largest rotation of the augmentation, as a fraction of a full turn (0.03 ~ 11 degrees).
ROTATION_FACTOR = 0.03
BRIGHTNESS_DELTA = 0.1


@dataclass
class SiteData:
    """All usable images of a site (in ``paths`` order) and which of them are for validation."""

    paths: list[Path]
    images: np.ndarray  # (n, size, size) uint8
    labels: np.ndarray  # (n,) int32, indices into CLASS_NAMES
    train_index: np.ndarray
    val_index: np.ndarray
    skipped: list[SkippedFile] = field(default_factory=list)

    @property
    def n_train(self) -> int:
        return len(self.train_index)

    @property
    def n_val(self) -> int:
        return len(self.val_index)


def load_site_data(
    root: Path, *, image_size: int, val_fraction: float = 0.2, seed: int = 0
) -> SiteData:
    """Decode every image under ``root`` at ``image_size`` and split it stratified by ``seed``."""
    if not 0 <= val_fraction < 1:
        raise DatasetError(f"val_fraction must be in [0, 1) (got {val_fraction})")
    scan = scan_dataset(root)
    skipped = list(scan.skipped)
    paths: list[Path] = []
    images: list[np.ndarray] = []
    labels: list[int] = []
    for label, name in enumerate(CLASS_NAMES):
        for path in scan.images[name]:
            try:
                images.append(decode_image(path, image_size))
            except (OSError, ValueError, SyntaxError) as exc:
                skipped.append(SkippedFile(path, f"cannot decode: {exc}"))
                continue
            paths.append(path)
            labels.append(label)
    if not paths:
        raise DatasetError(f"{root} holds no decodable images")
    if skipped:
        listing = "\n".join(f"  {item.path}: {item.reason}" for item in skipped)
        log.warning("skipped %d unusable file(s) under %s:\n%s", len(skipped), root, listing)
    label_array = np.asarray(labels, np.int32)
    train_index, val_index = stratified_split(label_array, val_fraction, seed)
    return SiteData(
        paths, np.stack(images), label_array, train_index, val_index, skipped
    )


def decode_image(path: Path, image_size: int) -> np.ndarray:
    """One file as a ``(image_size, image_size)`` uint8 grayscale array."""
    with Image.open(path) as image:
        gray = image.convert("L").resize((image_size, image_size), Image.Resampling.BILINEAR)
        return np.asarray(gray, dtype=np.uint8)


def stratified_split(
    labels: np.ndarray, val_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Train and validation indices with each class split in the same proportion (``validation_size``)."""
    rng = np.random.default_rng(seed)
    train: list[np.ndarray] = []
    val: list[np.ndarray] = []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        n_val = validation_size(len(members), val_fraction)
        val.append(members[:n_val])
        train.append(members[n_val:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


def image_dataset(
    data: SiteData, index: np.ndarray, *, augment: bool = False
) -> tf.data.Dataset:
    """Unbatched ``(image, label)`` pairs: float32 in [0, 1], 3 channels, optionally augmented."""
    images = data.images[index][..., np.newaxis]
    dataset = tf.data.Dataset.from_tensor_slices((images, data.labels[index]))
    dataset = dataset.map(_to_rgb_float, num_parallel_calls=tf.data.AUTOTUNE)
    if augment:
        rotate = tf.keras.layers.RandomRotation(ROTATION_FACTOR, fill_mode="constant")
        dataset = dataset.map(
            lambda x, y: (_augment(x, rotate), y), num_parallel_calls=tf.data.AUTOTUNE
        )
    return dataset


def _to_rgb_float(image: tf.Tensor, label: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    scaled = tf.cast(image, tf.float32) / 255.0
    return tf.image.grayscale_to_rgb(scaled), label


def _augment(image: tf.Tensor, rotate: tf.keras.layers.Layer) -> tf.Tensor:
    """Per-example random flip, small rotation and brightness shift (DP-safe: no mixing)."""
    image = tf.image.random_flip_left_right(image)
    image = rotate(image, training=True)
    image = tf.image.random_brightness(image, BRIGHTNESS_DELTA)
    return tf.clip_by_value(image, 0.0, 1.0)
