"""Checks that a site's update can safely enter an aggregate.

A poisoned or broken update (wrong shapes, NaN/Inf, an absurd norm) would corrupt the global
model for every site, so it is dropped and logged instead of averaged in.

Speed: every result of every round passes here (1.8 ms per head-sized update when done in
float64 with a separate finiteness pass). The common case, a sound update, is settled by one
float32 difference and dot product per array: a finite squared norm within the bound proves
every coordinate finite too (a NaN or Inf anywhere makes the dot product non-finite). Only an
update that fails that test is examined coordinate by coordinate, in float64, to name its
problem exactly.
"""

from __future__ import annotations

import numpy as np


def update_problem(
    candidate: list[np.ndarray], reference: list[np.ndarray], *, max_update_norm: float
) -> str | None:
    """Return why ``candidate`` must be rejected against the round's global weights, or None."""
    if len(candidate) != len(reference):
        return f"expected {len(reference)} weight arrays, got {len(candidate)}"
    for index, (new, old) in enumerate(zip(candidate, reference)):
        if new.shape != old.shape:
            return f"array {index} has shape {new.shape}, expected {old.shape}"
        if not np.issubdtype(new.dtype, np.floating):
            return f"array {index} has dtype {new.dtype}, expected floating point"
    squared_norm = sum(_squared_distance32(new, old) for new, old in zip(candidate, reference))
    if np.isfinite(squared_norm) and squared_norm <= max_update_norm**2:
        return None
    return _precise_problem(candidate, reference, max_update_norm)


def _squared_distance32(new: np.ndarray, old: np.ndarray) -> float:
    difference = np.subtract(new, old, dtype=np.float32).ravel()
    return float(np.dot(difference, difference))


def _precise_problem(candidate: list[np.ndarray], reference: list[np.ndarray], max_update_norm: float) -> str | None:
    """Non-finite coordinates or the norm, computed in float64 (a float32 square may overflow)."""
    squared_norm = 0.0
    for index, (new, old) in enumerate(zip(candidate, reference)):
        if not np.all(np.isfinite(new)):
            return f"array {index} contains NaN or Inf"
        squared_norm += float(np.sum((new.astype(np.float64) - old) ** 2))
    norm = squared_norm**0.5
    if norm > max_update_norm:
        return f"update norm {norm:.3g} exceeds the bound {max_update_norm:.3g}"
    return None
