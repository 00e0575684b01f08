"""Placement of a new queue's partitions: the rule of docs/METADATA.md and its spreading invariants."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dmq_server.metadata import place_partitions

node_names = st.lists(st.text("abcdefgh0123", min_size=1, max_size=3), min_size=1, max_size=9, unique=True)


def test_four_partitions_on_three_nodes_lead_on_every_node() -> None:
    placement = place_partitions(["n1", "n2", "n3"], {"n1", "n2", "n3"}, 4, 3, {})
    assert Counter(replicas[0] for replicas in placement) == {"n1": 2, "n2": 1, "n3": 1}
    assert all(sorted(replicas) == ["n1", "n2", "n3"] for replicas in placement)


def test_rotation_starts_at_the_least_loaded_node() -> None:
    placement = place_partitions(["a", "b", "c"], {"a", "b", "c"}, 4, 1, {"a": 5, "b": 9, "c": 0})
    assert [replicas[0] for replicas in placement] == ["c", "a", "b", "c"]


def test_dead_nodes_only_when_live_ones_are_too_few() -> None:
    placement = place_partitions(["a", "b", "c", "d"], {"a", "b"}, 3, 3, {})
    assert all(replicas[0] in {"a", "b"} and {"a", "b"} <= set(replicas) for replicas in placement)
    assert place_partitions(["a", "b", "c"], set(), 2, 2, {})[0][0] == "a"  # none live: place anyway


def test_impossible_requests() -> None:
    with pytest.raises(ValueError):
        place_partitions(["a", "b", "a"], {"a", "b"}, 1, 3, {})
    with pytest.raises(ValueError):
        place_partitions(["a"], {"a"}, 0, 1, {})
    with pytest.raises(ValueError):
        place_partitions(["a"], {"a"}, 1, 0, {})


@given(nodes=node_names, alive=st.sets(st.text("abcdefgh0123", min_size=1, max_size=3)),
       partitions=st.integers(1, 64), replication=st.integers(1, 5), data=st.data())
def test_replica_sets_are_valid_and_prefer_live_nodes(nodes, alive, partitions, replication, data) -> None:
    replication = min(replication, len(nodes))
    load = data.draw(st.dictionaries(st.sampled_from(nodes), st.integers(0, 100)))
    placement = place_partitions(nodes, alive, partitions, replication, load)
    assert len(placement) == partitions
    live = alive & set(nodes)
    for replicas in placement:
        assert len(set(replicas)) == replication and set(replicas) <= set(nodes)
        assert not live or replicas[0] in live
        assert len(live & set(replicas)) == min(len(live), replication)
    assert place_partitions(list(reversed(nodes)), alive, partitions, replication, load) == placement


@given(nodes=node_names, partitions=st.integers(1, 64), replication=st.integers(1, 5))
def test_leaders_and_replicas_spread_evenly(nodes, partitions, replication) -> None:
    replication = min(replication, len(nodes))
    placement = place_partitions(nodes, set(nodes), partitions, replication, {})
    leaders = Counter(replicas[0] for replicas in placement)
    held = Counter(node for replicas in placement for node in replicas)
    assert max(leaders[node] for node in nodes) - min(leaders[node] for node in nodes) <= 1
    assert max(held[node] for node in nodes) - min(held[node] for node in nodes) <= 1
