"""SecAgg+'s neighbourhood graph: per-site cost grows like log n, exactness holds, partitions are refused."""

from __future__ import annotations

import math

import numpy as np
import pytest

from shared import secagg_masking as masking
from shared import secagg_protocol as proto
from shared.errors import SessionFailedError
from shared.secagg_graph import is_connected, neighbourhood_size, neighbourhoods, ring_order
from tests.secagg_fakes import Federation, FixedUpdate, LoopbackProxy

SHAPES = [(6, 2), (3,)]
ZEROS = [np.zeros(s, np.float32) for s in SHAPES]


def test_neighbourhoods_grow_like_log_n() -> None:
    assert [neighbourhood_size(n) for n in (1, 2, 3, 5, 7, 10, 25, 50, 100, 1000)] == [1, 2, 3, 5, 7, 9, 11, 13, 15, 21]
    for n in (10, 25, 50, 1000):
        assert neighbourhood_size(n) <= 2 * math.log2(n) + 3


@pytest.mark.parametrize("count", [3, 8, 25, 50])
def test_the_graph_is_regular_symmetric_and_the_same_on_both_sides(count: int) -> None:
    sites = [f"s{i:02d}" for i in range(count)]
    graph = neighbourhoods(sites, 7, 2)
    assert all(len(peers) == neighbourhood_size(count) - 1 and site not in peers for site, peers in graph.items())
    assert all(site in graph[peer] for site, peers in graph.items() for peer in peers)
    assert neighbourhoods(list(reversed(sites)), 7, 2) == graph  # from public facts, not the list's order
    if neighbourhood_size(count) < count:
        assert neighbourhoods(sites, 7, 3) != graph  # a new ring every round
        assert ring_order(sites, 8, 2) != ring_order(sites, 7, 2)


def test_is_connected_sees_a_split() -> None:
    graph = {"a": {"b"}, "b": {"a", "c"}, "c": {"b"}, "d": set()}
    assert is_connected(["a", "b", "c"], graph)
    assert not is_connected(["a", "c"], graph)  # b, their only link, is gone
    assert not is_connected(["a", "b", "d"], graph)


def _round(count: int, *, threshold: int, session_id: int = 1):
    updates = {f"s{i:02d}": [np.full(s, 0.01 * (i + 1), np.float32) for s in SHAPES] for i in range(count)}
    federation = Federation(updates, session_id=session_id)
    clients = {s: federation.client(s, FixedUpdate(d, 1 + i)) for i, (s, d) in enumerate(updates.items())}
    server = federation.server_round(1, {s: LoopbackProxy(c) for s, c in clients.items()}, threshold=threshold)
    return updates, clients, server


def test_fifty_sites_each_mask_with_log_n_neighbours_and_the_mean_is_exact() -> None:
    updates, clients, server = _round(50, threshold=proto.default_threshold(50))
    relayed = server.exchange_keys()
    k = neighbourhood_size(50)
    assert k == 13
    # Per site: k-1 share messages in, k-1 pairwise masks: its work and bytes do not grow with n.
    assert all(len(proto.fields_of(config, proto.SHARE)) == k - 1 for config in relayed.values())
    masked = {s: clients[s].fit(ZEROS, relayed[s])[0] for s in clients}
    assert all(len(c.state.partners) == k - 1 for c in clients.values())
    mean, sums = masking.decode_update(server.unmask(proto.FIT, masked), proto.DEFAULT_CLIP_RANGE,
                                       server.setup.levels)
    examples = {s: 1 + i for i, s in enumerate(updates)}
    assert sums["examples"] == sum(examples.values())
    expected = sum(examples[s] * 0.01 * (i + 1) for i, s in enumerate(updates)) / sums["examples"]
    for part in mean:
        np.testing.assert_allclose(part, expected, atol=2 * proto.DEFAULT_CLIP_RANGE / server.setup.levels)


def test_a_split_of_the_survivors_fails_the_round_before_any_share_is_revealed() -> None:
    """With two gaps of dropped sites in the ring, each half's sum could be unmasked alone: refuse."""
    count, threshold = 22, 6  # neighbourhoods of 11: 5 on either side; halves of 6 keep every secret rebuildable
    updates, clients, server = _round(count, threshold=threshold)
    relayed = server.exchange_keys()
    ring = ring_order(list(updates), 1, 1)
    dropped = set(ring[0:5]) | set(ring[11:16])
    masked = {s: clients[s].fit(ZEROS, relayed[s])[0] for s in clients if s not in dropped}
    with pytest.raises(SessionFailedError, match="split into groups with no masks between them"):
        server.unmask(proto.FIT, masked)
    assert all(c.state.stage == proto.MASK for s, c in clients.items() if s not in dropped), "nothing was unmasked"
    # One gap alone keeps the ring whole: that round goes through.
    updates, clients, server = _round(count, threshold=threshold)
    relayed = server.exchange_keys()
    gap = set(ring_order(list(updates), 1, 1)[0:5])
    masked = {s: clients[s].fit(ZEROS, relayed[s])[0] for s in clients if s not in gap}
    _, sums = masking.decode_update(server.unmask(proto.FIT, masked), proto.DEFAULT_CLIP_RANGE,
                                    server.setup.levels)
    assert sums["examples"] == sum(1 + i for i, s in enumerate(updates) if s not in gap)


@pytest.mark.parametrize("count", [1, 2, 3, 5, 10, 50, 1000])
def test_the_levels_a_round_gets_fill_the_field_without_overflowing_it(count: int) -> None:
    levels = proto.levels_for(count)
    setup = proto.RoundSetup(1, 1, tuple(f"s{i}" for i in range(count)), 1, 4.0, levels, proto.DEFAULT_WEIGHT_CAP)
    assert setup.fits_the_field()
    assert not proto.RoundSetup(1, 1, setup.sites, 1, 4.0, levels + 1, setup.weight_cap).fits_the_field() or \
        levels == proto.ACCEPTED_LEVELS[1]
    assert levels >= proto.ACCEPTED_LEVELS[0]  # still fine enough for a site's default policy at 1000 sites
