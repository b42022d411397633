"""Backbone features are computed once and recomputed on any change that would alter them."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

import client.training.feature_cache as feature_cache
from client.training.data import load_site_data
from client.training.feature_cache import cached_features, feature_key
from tests.conftest_client import IMAGE_SIZE, write_lesion_images

pytestmark = pytest.mark.slow


@pytest.fixture
def backbone_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts backbone passes (each returns the real features)."""
    calls: list[int] = []
    real = feature_cache.compute_features

    def counting(model, data):  # type: ignore[no-untyped-def]
        calls.append(len(data.paths))
        return real(model, data)

    monkeypatch.setattr(feature_cache, "compute_features", counting)
    return calls


def test_second_run_hits_the_cache(tmp_path: Path, classifier, backbone_calls: list[int]) -> None:
    data = load_site_data(write_lesion_images(tmp_path / "site", per_class=3), image_size=IMAGE_SIZE)
    first = cached_features(tmp_path / "cache", data, IMAGE_SIZE, classifier.features)
    second = cached_features(tmp_path / "cache", data, IMAGE_SIZE, classifier.features)

    assert backbone_calls == [12]
    assert first.shape == (12, 2048) and np.array_equal(first, second)
    with np.load(next((tmp_path / "cache").glob("*.npz")), allow_pickle=False) as stored:
        assert stored["features"].dtype == np.float32


def test_changed_file_invalidates(tmp_path: Path, classifier, backbone_calls: list[int]) -> None:
    root = write_lesion_images(tmp_path / "site", per_class=3)
    cached_features(tmp_path / "cache", load_site_data(root, image_size=IMAGE_SIZE), IMAGE_SIZE,
                    classifier.features)
    shutil.copy(root / "glioma" / "glioma_000.jpg", root / "glioma" / "glioma_001.jpg")
    cached_features(tmp_path / "cache", load_site_data(root, image_size=IMAGE_SIZE), IMAGE_SIZE,
                    classifier.features)
    assert backbone_calls == [12, 12]


def test_key_depends_on_files_image_size_and_backbone(tmp_path: Path) -> None:
    root = write_lesion_images(tmp_path / "site", per_class=2)
    data = load_site_data(root, image_size=16)
    key = feature_key(data, 16, "backbone-a")

    assert feature_key(data, 16, "backbone-a") == key
    assert feature_key(data, 24, "backbone-a") != key
    assert feature_key(data, 16, "backbone-b") != key
    (root / "notumor" / "notumor_001.jpg").write_bytes(
        (root / "notumor" / "notumor_000.jpg").read_bytes()
    )
    assert feature_key(load_site_data(root, image_size=16), 16, "backbone-a") != key
