"""Shared fixtures of the client tests: tiny images and ResNet50 models built once per session."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from shared.dataset_layout import CLASS_NAMES

IMAGE_SIZE = 32
#: Where each class's lesion sits (notumor has none), in image fractions.
_LESION_CENTRES = {"glioma": (0.3, 0.3), "meningioma": (0.7, 0.3), "pituitary": (0.5, 0.75)}


def write_lesion_images(root: Path, per_class: int, size: int = IMAGE_SIZE, seed: int = 0) -> Path:
    """Grayscale JPEGs like the sample data, with a clearly visible class-dependent lesion.

    The project's sample set is deliberately hard (faint, overlapping lesions); random frozen
    ResNet50 features cannot separate it (see the client report), so the learning test uses
    this easier stand-in: noisy tissue plus a bright disc whose position depends on the class.
    """
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:size, 0:size] / size
    for name in CLASS_NAMES:
        (root / name).mkdir(parents=True, exist_ok=True)
        for index in range(per_class):
            pixels = 0.3 + 0.08 * rng.standard_normal((size, size))
            if name in _LESION_CENTRES:
                cx, cy = np.array(_LESION_CENTRES[name]) + rng.uniform(-0.08, 0.08, 2)
                pixels += 0.5 * (np.hypot(xs - cx, ys - cy) < rng.uniform(0.1, 0.16))
            image = Image.fromarray((np.clip(pixels, 0, 1) * 255).astype(np.uint8), mode="L")
            image.save(root / name / f"{name}_{index:03d}.jpg", quality=92)
    return root


@pytest.fixture(scope="session")
def lesion_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """100 images per class at 32x32; treat as read-only (copy it to modify)."""
    return write_lesion_images(tmp_path_factory.mktemp("lesions"), per_class=100)


@pytest.fixture(scope="session")
def classifier():
    """A head-only classifier (weights=None, seed 0) built once; reset its head before use."""
    from shared.classifier import build_classifier

    return build_classifier(IMAGE_SIZE, trainable_blocks=0, seed=0)


@pytest.fixture(scope="session")
def classifier_conv5():
    """A classifier whose last ResNet stage (conv5) is trainable."""
    from shared.classifier import build_classifier

    return build_classifier(IMAGE_SIZE, trainable_blocks=1, seed=0)
