"""FedAsync staleness-weighted merge of a late session's result into the current head.

When a session finishes after another session has already committed, its candidate was trained
from an older base. Rather than discard it or let it overwrite newer work, we mix it in
(Xie et al., "Asynchronous Federated Optimization", 2019)::

    a      = alpha * (1 + staleness) ** -0.5        # polynomial staleness function, exponent 0.5
    merged = (1 - a) * head + a * candidate

``staleness`` is how many versions were committed since the candidate's base; the older the
base, the smaller the candidate's say. With staleness 0 the weight is just ``alpha``.
"""

from __future__ import annotations

import numpy as np

from shared.errors import StoreError

DEFAULT_ALPHA = 0.5
STALENESS_EXPONENT = 0.5


def merge_weight(staleness: int, alpha: float = DEFAULT_ALPHA) -> float:
    """The candidate's mixing weight ``a`` for a given staleness."""
    if not 0.0 < alpha <= 1.0:
        raise StoreError(f"merge alpha must be in (0, 1], got {alpha}")
    if staleness < 0:
        raise StoreError(f"staleness cannot be negative, got {staleness}")
    return alpha * (1.0 + staleness) ** (-STALENESS_EXPONENT)


def merge_weights(
    head: list[np.ndarray],
    candidate: list[np.ndarray],
    *,
    staleness: int,
    alpha: float = DEFAULT_ALPHA,
) -> tuple[list[np.ndarray], float]:
    """Return the merged weights (in the head's dtypes) and the weight ``a`` given to the candidate."""
    if len(head) != len(candidate):
        raise StoreError(f"candidate has {len(candidate)} weight arrays, head has {len(head)}")
    a = merge_weight(staleness, alpha)
    merged = []
    for index, (h, c) in enumerate(zip(head, candidate, strict=True)):
        if h.shape != c.shape:
            raise StoreError(f"weight {index}: candidate shape {c.shape} != head shape {h.shape}")
        mixed = (1.0 - a) * h.astype(np.float64) + a * c.astype(np.float64)
        merged.append(mixed.astype(h.dtype))
    return merged, a


def staleness_merge(
    head: list[np.ndarray], candidate: list[np.ndarray], staleness: int
) -> tuple[list[np.ndarray], float]:
    """The merge rule sessions hand to ``Store.commit_session_result`` (default ``alpha``)."""
    return merge_weights(head, candidate, staleness=staleness)
