"""FedAsync staleness-weighted merge of a late session's result into the current head.

When a session finishes after another session has already committed, its candidate was trained
from an older base. Rather than discard it or let it overwrite newer work, we mix it in
(Xie et al., "Asynchronous Federated Optimization", 2019)::

    a      = alpha * (1 + staleness) ** -0.5        # polynomial staleness function, exponent 0.5
    merged = (1 - a) * head + a * candidate

``staleness`` is how many versions were committed since the candidate's base; the older the
base, the smaller the candidate's say. With staleness 0 the weight is just ``alpha``.

The merge happens here, in the session process, not in the store: a secure session evaluates the
merged weights in its last round (``SecureFedProx``), so the version's validation metrics are
those of its own weights. ``commit_result`` then commits them only if the head is still the one
they were merged into; if it moved again, it merges again and commits without validation metrics
("not evaluated"), never with the number of a model that is not the version.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from server.store import Store
from server.store.records import VersionInfo
from shared.errors import HeadMovedError, SessionFailedError, StoreError

log = logging.getLogger(__name__)

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


@dataclass(frozen=True)
class Rebased:
    """A session's result as it would become the next version on top of ``head``."""

    weights: list[np.ndarray]
    head: int  # the version the weights extend: the session's base, or the moved head merged into
    staleness: int
    merge_weight: float | None  # the candidate's share; None when nothing was merged


def rebase(
    candidate: list[np.ndarray], *, base: int, head: int, load: Callable[[int], list[np.ndarray]],
    alpha: float = DEFAULT_ALPHA,
) -> Rebased:
    """The candidate itself while ``head`` is its ``base``, else merged into ``load(head)``."""
    staleness = head - base
    if staleness == 0:
        return Rebased(candidate, base, 0, None)
    merged, a = merge_weights(load(head), candidate, staleness=staleness, alpha=alpha)
    return Rebased(merged, head, staleness, a)


#: How often a commit re-merges into a head that moved again before giving up.
COMMIT_ATTEMPTS = 5


def commit_result(
    store: Store,
    session_id: int,
    candidate: list[np.ndarray],
    *,
    evaluated: Rebased | None,
    metrics: dict[str, Any],
    dp_summary: dict[str, Any],
    participants: list[str],
    rounds: int,
    alpha: float = DEFAULT_ALPHA,
) -> VersionInfo:
    """Commit the session's result on the current head, merging it in when the head moved.

    ``evaluated`` is what the last evaluate round scored (``metrics["evaluate"]``), or None. It
    is committed with those metrics when the head is still the one it was built on; otherwise
    the candidate is merged into the current head and committed without ``evaluate`` metrics.
    """
    base = store.get_session(session_id).base_version
    for _ in range(COMMIT_ATTEMPTS):
        head = store.head().number
        chosen = evaluated if evaluated is not None and evaluated.head == head else rebase(
            candidate, base=base, head=head, load=store.load_weights, alpha=alpha)
        own = metrics if chosen is evaluated else {k: v for k, v in metrics.items() if k != "evaluate"}
        if chosen is not evaluated and "evaluate" in metrics:
            log.info("session %d: the head moved to v%d after the last evaluation; committing the merge "
                     "as not evaluated", session_id, head)
        try:
            return store.commit_session_result(
                session_id, chosen.weights, metrics=own, dp_summary=dp_summary, participants=participants,
                rounds=rounds, head=chosen.head, merge_weight=chosen.merge_weight)
        except HeadMovedError:
            continue
    raise SessionFailedError(f"session {session_id}: the head moved during each of {COMMIT_ATTEMPTS} commits",
                             hint="Other sessions commit very often; re-queue the requests.")
