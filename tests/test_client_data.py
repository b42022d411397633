"""Loading a site's images: skipped files, stratified split, tensors the model expects."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

from client.training.data import image_dataset, load_site_data, stratified_split
from shared.errors import DatasetError
from tests.conftest_client import write_lesion_images


def test_corrupt_and_non_image_files_are_skipped_and_listed_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = write_lesion_images(tmp_path / "site", per_class=3)
    (root / "glioma" / "notes.txt").write_text("not an image")
    (root / "meningioma" / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    good = (root / "pituitary" / "pituitary_000.jpg").read_bytes()
    (root / "pituitary" / "truncated.jpg").write_bytes(good[: len(good) // 2])

    with caplog.at_level(logging.WARNING, logger="client.training.data"):
        data = load_site_data(root, image_size=16)

    skipped = {item.path.name for item in data.skipped}
    assert skipped == {"notes.txt", "broken.jpg", "truncated.jpg"}
    assert len(data.paths) == 12 and data.images.shape == (12, 16, 16)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert all(name in warnings[0].getMessage() for name in skipped)


def test_missing_class_is_a_clear_error(tmp_path: Path) -> None:
    root = write_lesion_images(tmp_path / "site", per_class=2)
    shutil.rmtree(root / "notumor")
    with pytest.raises(DatasetError, match="notumor"):
        load_site_data(root, image_size=16)


def test_split_is_stratified_disjoint_and_seeded() -> None:
    labels = np.repeat(np.arange(4), [50, 30, 20, 2])
    train, val = stratified_split(labels, 0.2, seed=3)

    assert set(train).isdisjoint(val) and len(train) + len(val) == len(labels)
    assert np.bincount(labels[val], minlength=4).tolist() == [10, 6, 4, 1]
    again_train, _ = stratified_split(labels, 0.2, seed=3)
    other_train, _ = stratified_split(labels, 0.2, seed=4)
    assert np.array_equal(train, again_train) and not np.array_equal(train, other_train)


def test_images_are_rgb_floats_in_unit_range_even_augmented(lesion_root: Path) -> None:
    data = load_site_data(lesion_root, image_size=24)
    for augment in (False, True):
        image, label = next(iter(image_dataset(data, data.train_index, augment=augment)))
        assert image.shape == (24, 24, 3) and image.dtype.name == "float32"
        assert 0.0 <= float(image.numpy().min()) and float(image.numpy().max()) <= 1.0
        assert np.allclose(image[..., 0], image[..., 2])
        assert 0 <= int(label) < 4
