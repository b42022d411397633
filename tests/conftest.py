"""Fixtures shared across test modules."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from scripts.make_sample_data import generate_sample_dataset
from tests import thread_safe_npy

thread_safe_npy.install()  # many tests run several Flower sites as threads of this process

pytest_plugins = ["tests.conftest_store", "tests.conftest_client", "tests.conftest_socket"]

TINY_PER_CLASS = 6
TINY_SIZE = 32


@pytest.fixture
def tiny_dataset(tmp_path: Path) -> Path:
    """A fresh synthetic dataset (6 images of 32x32 per class) that a test may modify."""
    root = tmp_path / "dataset"
    generate_sample_dataset(root, per_class=TINY_PER_CLASS, image_size=TINY_SIZE, seed=0)
    return root


@pytest.fixture(autouse=True)
def _no_global_tensorflow_seed() -> Iterator[None]:
    """A test that seeds TensorFlow globally must not leave the process seeded: the keras-optimizer
    engine refuses a seeded process (its noise would be reproducible), and so would later tests."""
    yield
    tensorflow = sys.modules.get("tensorflow")
    if tensorflow is not None:
        tensorflow.random.set_seed(None)
