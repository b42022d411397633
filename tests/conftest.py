"""Shared pytest fixtures; area-specific ones live in the conftest_* plugins listed below."""

from __future__ import annotations

from pathlib import Path

import pytest

from scripts.make_sample_data import generate_sample_dataset

pytest_plugins = ["tests.conftest_store", "tests.conftest_client"]


# RECONSTRUCTED (client engineer overwrote this file by mistake; original content lost):
# test_split_dataset.py expects 6 images per class (an IID 2-site split gives 3 each).
# Owner of the splitter tests: please check against your original fixture.
@pytest.fixture
def tiny_dataset(tmp_path: Path) -> Path:
    """6 small sample images per class."""
    root = tmp_path / "tiny"
    generate_sample_dataset(root, per_class=6, image_size=16, seed=0)
    return root
