"""The test process parses .npy headers under one lock (CPython 3.11's AST is not thread-safe)."""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import numpy.lib.format

from tests import thread_safe_npy


def _round_trip(seed: int) -> bool:
    array = np.random.default_rng(seed).standard_normal((seed % 7 + 1, 3)).astype(np.float32)
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    buffer.seek(0)
    return bool(np.array_equal(np.load(buffer, allow_pickle=False), array))


def test_headers_are_parsed_under_the_lock_and_arrays_round_trip_from_many_threads() -> None:
    assert numpy.lib.format.safe_eval is thread_safe_npy._locked_safe_eval  # installed by conftest
    with ThreadPoolExecutor(8) as pool:
        assert all(pool.map(_round_trip, range(2000)))
