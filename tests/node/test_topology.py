"""Topology.leader_of: where a node says a partition's leader is."""

from __future__ import annotations

from typing import Any

from dmq_server.frontend.topology import Peer, Topology

PEERS = [Peer("n1", "127.0.0.1:9001", "127.0.0.1:7001"), Peer("n2", "127.0.0.1:9002", "127.0.0.1:7002")]


class Replica:
    """The part of a PartitionGroup that leader_of reads."""

    def __init__(self, leader: bool, leader_address: str | None, heard_a_leader: bool = True) -> None:
        self.leader = leader
        self.address = leader_address
        self.heard_a_leader = heard_a_leader

    def is_leader(self) -> bool:
        return self.leader

    def leader_address(self) -> str | None:
        return self.address

    def lost_its_leader(self) -> bool:
        return self.address is None and self.heard_a_leader


def topology_seeing(reported: dict[str, str], groups: dict[str, Any]) -> Topology:
    topology = Topology("n1", PEERS, metadata_group=None)
    topology.install_view({"version": 1, "leaders_version": 1, "next_queue_id": 1, "queues": [], "nodes": {},
                           "leaders": reported})
    topology.groups = groups
    return topology


def test_the_local_replica_knows_best() -> None:
    topology = topology_seeing({"q1.p0": "n2"}, {"q1.p0": Replica(True, "127.0.0.1:9001")})
    assert topology.leader_of("q1.p0") == PEERS[0]
    topology = topology_seeing({"q1.p0": "n1"}, {"q1.p0": Replica(False, "127.0.0.1:9002")})
    assert topology.leader_of("q1.p0") == PEERS[1]


def test_reports_fill_in_for_partitions_not_hosted_here_or_whose_replica_just_started() -> None:
    topology = topology_seeing({"q1.p0": "n2", "q1.p1": "n2"}, {"q1.p1": Replica(False, None, heard_a_leader=False)})
    assert topology.leader_of("q1.p0") == PEERS[1]
    assert topology.leader_of("q1.p1") == PEERS[1]
    assert topology.leader_of("q1.p2") is None


def test_a_replica_that_lost_its_leader_is_not_overruled_by_reports() -> None:
    # q1.p1's replica here heard a leader and no longer does (an election, or this node cut off): the report of
    # n2 is stale or n2 is out of reach, and a request forwarded there would wait for the heal.
    topology = topology_seeing({"q1.p1": "n2"}, {"q1.p1": Replica(False, None, heard_a_leader=True)})
    assert topology.leader_of("q1.p1") is None


def test_a_replica_that_stepped_down_does_not_name_itself_from_stale_reports() -> None:
    # Cut off from its majority, the old leader stepped down and knows no leader; the metadata it still has
    # (it cannot hear the new leader's report) names this node.
    topology = topology_seeing({"q1.p0": "n1"}, {"q1.p0": Replica(False, None)})
    assert topology.leader_of("q1.p0") is None
