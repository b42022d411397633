"""How many images of each class go to each site: the counts behind ``split_dataset``.

``plan_counts`` returns a sites x classes matrix for one of three modes: ``iid`` (stratified,
near-equal shares), ``dirichlet`` (label skew, per-class shares ~ Dirichlet(alpha), no site left
empty) and ``quantity`` (given totals or shares per site, each stratified). Only counts are
decided here; which files go where is ``split_dataset``'s job.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np

from shared.errors import DatasetError, UsageError

SplitMode = Literal["iid", "dirichlet", "quantity"]
MODES: tuple[str, ...] = ("iid", "dirichlet", "quantity")
OPTIONS_HINT = "See `python scripts/split_dataset.py --help` for the options and their values."


def apportion(weights: Sequence[float], total: int) -> list[int]:
    """Integers proportional to ``weights`` that sum to exactly ``total`` (largest remainder)."""
    shares = np.asarray(weights, dtype=float)
    ideal = total * shares / shares.sum()
    counts = np.floor(ideal).astype(int)
    by_remainder = np.argsort(-(ideal - counts), kind="stable")
    counts[by_remainder[: total - counts.sum()]] += 1
    return counts.tolist()


def _stratified(site_totals: Sequence[int], class_sizes: Sequence[int]) -> np.ndarray:
    """A sites x classes matrix with the given row sums whose class mix follows the source.

    Rounds ``site_total * class_share`` down, then hands out the few missing images one at a
    time to the cell furthest below its ideal share that still has images left in its class.
    """
    sizes = np.asarray(class_sizes, dtype=float)
    ideal = np.outer(site_totals, sizes / sizes.sum())
    counts = np.floor(ideal).astype(int)
    left = np.asarray(class_sizes) - counts.sum(axis=0)
    missing = np.asarray(site_totals) - counts.sum(axis=1)
    while missing.any():
        for site in np.flatnonzero(missing):
            shortfall = np.where(left > 0, ideal[site] - counts[site], -np.inf)
            name = int(np.argmax(shortfall))
            counts[site, name] += 1
            left[name] -= 1
            missing[site] -= 1
    return counts


def _dirichlet(
    rng: np.random.Generator, sites: int, class_sizes: Sequence[int], alpha: float
) -> np.ndarray:
    """Label skew: per class, site shares ~ Dirichlet(alpha); no site is left empty."""
    counts = np.array(
        [apportion(rng.dirichlet(np.full(sites, alpha)), size) for size in class_sizes]
    ).T
    for site in range(sites):
        if counts[site].sum() == 0:
            donor = int(np.argmax(counts.sum(axis=1)))
            name = int(np.argmax(counts[donor]))
            counts[donor, name] -= 1
            counts[site, name] += 1
    return counts


def _quantity_totals(quantities: Sequence[float], available: int) -> list[int]:
    """Images per site from absolute counts (ints) or shares of all images (floats <= 1)."""
    if all(isinstance(q, (int, np.integer)) for q in quantities):
        totals = [int(q) for q in quantities]
        if any(t < 1 for t in totals):
            raise UsageError(
                f"--quantities must be positive, got {list(quantities)}", hint=OPTIONS_HINT
            )
        if sum(totals) > available:
            raise DatasetError(
                f"--quantities ask for {sum(totals)} images but the source holds only "
                f"{available} readable images",
                hint="Lower the quantities or pass shares such as 0.5,0.3,0.2.",
            )
        return totals
    shares = [float(q) for q in quantities]
    if any(s <= 0 for s in shares) or sum(shares) > 1 + 1e-9:
        raise UsageError(
            f"--quantities as shares must be positive and sum to at most 1, got {shares}",
            hint=OPTIONS_HINT,
        )
    totals = apportion(shares, int(np.floor(sum(shares) * available + 1e-9)))
    if min(totals) < 1:
        raise UsageError(
            f"a share in {shares} is too small to give its site one of {available} images",
            hint=OPTIONS_HINT,
        )
    return totals


def plan_counts(
    class_sizes: Sequence[int],
    sites: int,
    mode: SplitMode,
    *,
    alpha: float = 0.5,
    quantities: Sequence[float] | None = None,
    rng: np.random.Generator,
) -> np.ndarray:
    """A sites x classes matrix of how many images of each class each site gets."""
    available = int(sum(class_sizes))
    if available < sites:
        raise DatasetError(
            f"{available} images cannot give each of {sites} sites one image",
            hint="Use fewer sites or a larger dataset.",
        )
    if mode == "iid":
        return _stratified(apportion([1.0] * sites, available), class_sizes)
    if mode == "dirichlet":
        if not alpha > 0:
            raise UsageError(f"--alpha must be positive, got {alpha}", hint=OPTIONS_HINT)
        return _dirichlet(rng, sites, class_sizes, alpha)
    if mode == "quantity":
        if not quantities or len(quantities) != sites:
            raise UsageError(
                f"--mode quantity needs one quantity per site ({sites} sites), got "
                f"{list(quantities or [])}",
                hint=OPTIONS_HINT,
            )
        return _stratified(_quantity_totals(quantities, available), class_sizes)
    raise UsageError(
        f"unknown mode {mode!r}; choose one of {', '.join(MODES)}", hint=OPTIONS_HINT
    )
