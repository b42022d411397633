"""Who masks with whom: the SecAgg+ neighbourhood graph (Bell et al. 2020), the same on both sides.

With SecAgg's complete graph every site masks with and shares secrets to all n - 1 others, so
its work and bytes grow like n. SecAgg+ keeps the guarantee with a sparse graph: each site masks
with its ``k - 1`` neighbours, ``k = min(n, 2 ceil(log2 n) + 1)``, and Shamir-shares its secrets
among its neighbourhood only (threshold within it), so per-site cost grows like log n. The graph
is a ring (a Harary graph, as Flower's ``SecAggPlusWorkflow`` builds it): the round's sites in
an order fixed by hashing (session, round, site), each joined to the ``(k - 1) / 2`` sites on
either side. Both sides derive it from public facts, so the server cannot choose a victim's
neighbours, and it changes every round.

A partition matters: if the sites whose vectors arrived split into parts with no mask between
them, each part's sum could be unmasked alone. The server checks ``is_connected`` before it asks
for any unmasking share (``server.sessions.secure_aggregation``); a ring of ``k - 1`` neighbours
stays connected until ``k - 1`` sites in a row drop out.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Collection, Mapping, Sequence


def neighbourhood_size(site_count: int) -> int:
    """``k``: a site and its neighbours, ``min(n, 2 ceil(log2 n) + 1)``; all sites up to 7 (and 9)."""
    if site_count <= 1:
        return site_count
    return min(site_count, 2 * math.ceil(math.log2(site_count)) + 1)


def ring_order(sites: Sequence[str], session_id: int, round_number: int) -> list[str]:
    """The round's sites in the order of sha256(session, round, site): fixed by public facts."""
    def rank(site: str) -> bytes:
        return hashlib.sha256(f"fl-secagg ring|{session_id}|{round_number}|{site}".encode()).digest()

    return sorted(sites, key=rank)


def neighbourhoods(sites: Sequence[str], session_id: int, round_number: int) -> dict[str, frozenset[str]]:
    """Each site's neighbours (itself excluded): ``k - 1`` of them, half on either side of the ring."""
    count = len(sites)
    size = neighbourhood_size(count)
    if size >= count:
        return {site: frozenset(sites) - {site} for site in sites}
    ring = ring_order(sites, session_id, round_number)
    half = (size - 1) // 2
    return {
        site: frozenset(ring[(index + offset) % count] for offset in range(-half, half + 1) if offset)
        for index, site in enumerate(ring)
    }


def is_connected(members: Collection[str], graph: Mapping[str, Collection[str]]) -> bool:
    """Whether ``members`` form one component of ``graph`` restricted to them."""
    remaining = set(members)
    if not remaining:
        return True
    frontier = [remaining.pop()]
    while frontier:
        site = frontier.pop()
        reached = remaining & set(graph[site])
        remaining -= reached
        frontier.extend(reached)
    return not remaining
