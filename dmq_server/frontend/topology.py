"""What a node knows about the cluster: its peers' addresses, the Raft groups it hosts, and a cached view of the
metadata, refreshed when the metadata's versions move (versioned invalidation)."""

from __future__ import annotations

import dataclasses
import threading
from typing import Any

from dmq_server.raft.group import PartitionGroup


@dataclasses.dataclass(frozen=True)
class Peer:
    node_id: str
    raft: str
    client: str


@dataclasses.dataclass(frozen=True)
class MetadataView:
    """An immutable copy of the metadata state; replaced whole when a version moves."""

    version: int = -1
    leaders_version: int = -1
    next_queue_id: int = 0  # every queue with a lower id was created; those missing from `queues` were deleted
    queues: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    nodes: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    leaders: dict[str, str] = dataclasses.field(default_factory=dict)  # group id -> node id

    @classmethod
    def from_snapshot(cls, snapshot: dict[str, Any]) -> "MetadataView":
        return cls(version=snapshot["version"], leaders_version=snapshot["leaders_version"],
                   next_queue_id=snapshot["next_queue_id"],
                   queues={record["name"]: record for record in snapshot["queues"]},
                   nodes=snapshot["nodes"], leaders=snapshot["leaders"])


class Topology:
    def __init__(self, node_id: str, peers: list[Peer], metadata_group: PartitionGroup | None) -> None:
        self.node_id = node_id
        self.peers = {peer.node_id: peer for peer in peers}
        self._by_raft = {peer.raft: peer for peer in peers}
        self.metadata_group = metadata_group
        self.groups: dict[str, PartitionGroup] = {}  # replaced whole (copy on write) by the node's reconciler
        self._view = MetadataView()
        self._lock = threading.Lock()

    def peer_of_raft(self, raft_address: str | None) -> Peer | None:
        return None if raft_address is None else self._by_raft.get(raft_address)

    # ------------------------------------------------------------------ metadata view

    def view(self) -> MetadataView:
        """The current metadata. On a metadata member it is read from the local replica when a version moved;
        elsewhere it is what the node last fetched from a member (see `install_view`)."""
        group = self.metadata_group
        if group is None:
            return self._view
        store = group.store
        view = self._view
        if store.version != view.version or store.leaders_version != view.leaders_version:
            with self._lock:
                view = MetadataView.from_snapshot(group.query(lambda store: store.snapshot()))
                self._view = view
        return view

    def nodes(self) -> dict[str, dict[str, Any]]:
        """Liveness of the nodes (last heartbeat). Heartbeats move no version, so this is read fresh."""
        group = self.metadata_group
        if group is None:
            return self._view.nodes
        return group.query(lambda store: store.nodes())

    def install_view(self, snapshot: dict[str, Any]) -> None:
        view = MetadataView.from_snapshot(snapshot)
        with self._lock:
            if (view.version, view.leaders_version) >= (self._view.version, self._view.leaders_version):
                self._view = view

    def metadata_leader(self) -> Peer | None:
        """The metadata group's leader, as far as this node knows (None: unknown)."""
        group = self.metadata_group
        if group is not None:
            if group.is_leader():
                return self.peers[self.node_id]
            return self.peer_of_raft(group.leader_address())
        return None

    # ------------------------------------------------------------------ partitions

    def leader_of(self, group_id: str) -> Peer | None:
        """The node leading a partition: from the local replica's Raft state when this node hosts one, else from
        the leaders the nodes last reported in their heartbeats. Those reports fill in for a hosted replica only
        while it has heard no leader since it started. One that lost its leader (an election, or this node cut
        off from the others) names none: the reported leader is stale or out of reach from here, and requests
        forwarded to it would wait until the partition healed. Nor does a hosted replica that is not the leader
        name this node from the reports (a leader cut off from its majority stepped down but cannot report it)."""
        group = self.groups.get(group_id)
        if group is not None:
            if group.is_leader():
                return self.peers[self.node_id]
            peer = self.peer_of_raft(group.leader_address())
            if peer is not None or group.lost_its_leader():
                return peer
        node_id = self.view().leaders.get(group_id)
        if node_id is None or (group is not None and node_id == self.node_id):
            return None
        return self.peers.get(node_id)
