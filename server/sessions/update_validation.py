"""Checks that a site's update can safely enter an aggregate.

A poisoned or broken update (wrong shapes, NaN/Inf, an absurd norm) would corrupt the global
model for every site, so it is dropped and logged instead of averaged in.
"""

from __future__ import annotations

import numpy as np


def update_problem(
    candidate: list[np.ndarray], reference: list[np.ndarray], *, max_update_norm: float
) -> str | None:
    """Return why ``candidate`` must be rejected against the round's global weights, or None."""
    if len(candidate) != len(reference):
        return f"expected {len(reference)} weight arrays, got {len(candidate)}"
    squared_norm = 0.0
    for index, (new, old) in enumerate(zip(candidate, reference)):
        if new.shape != old.shape:
            return f"array {index} has shape {new.shape}, expected {old.shape}"
        if not np.issubdtype(new.dtype, np.floating):
            return f"array {index} has dtype {new.dtype}, expected floating point"
        if not np.all(np.isfinite(new)):
            return f"array {index} contains NaN or Inf"
        squared_norm += float(np.sum((new.astype(np.float64) - old) ** 2))
    norm = squared_norm**0.5
    if norm > max_update_norm:
        return f"update norm {norm:.3g} exceeds the bound {max_update_norm:.3g}"
    return None

