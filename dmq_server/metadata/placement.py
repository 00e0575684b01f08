"""Where a new queue's partitions go: pure and deterministic, so any node proposes the same placement from the
same inputs (docs/METADATA.md)."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence


def place_partitions(nodes: Sequence[str], alive: Collection[str], partitions: int, replication: int,
                     load: Mapping[str, int]) -> list[list[str]]:
    """One replica set of `replication` distinct nodes per partition; the first is its preferred leader.

    Preferred leaders rotate over the live nodes (over all nodes when none is live), least loaded first (`load`:
    partitions each node is preferred leader of now). Followers are live nodes while there are enough, then the
    nodes holding the fewest replicas of this placement, then the nodes following the leader in the rotation."""
    candidates = sorted(set(nodes))
    if partitions < 1:
        raise ValueError(f"a queue has at least one partition, not {partitions}")
    if not 1 <= replication <= len(candidates):
        raise ValueError(f"replication {replication} needs that many distinct nodes; there are {len(candidates)}")
    live = {node for node in candidates if node in alive}
    rotation = sorted(live or candidates, key=lambda node: (load.get(node, 0), node))
    position = {node: i for i, node in enumerate(rotation + [n for n in candidates if n not in live])}
    leaders = [rotation[partition % len(rotation)] for partition in range(partitions)]
    # Counted up front: a follower placed early on a node that leads a later partition would unbalance it.
    held = dict.fromkeys(candidates, 0)
    for leader in leaders:
        held[leader] += 1
    placement = []
    for leader in leaders:
        start = position[leader]
        followers = sorted((node for node in candidates if node != leader),
                           key=lambda node: (node not in live, held[node], (position[node] - start) % len(position)))
        for node in followers[:replication - 1]:
            held[node] += 1
        placement.append([leader, *followers[:replication - 1]])
    return placement
