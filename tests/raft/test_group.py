"""Raft groups: three replicas of a partition store (or of the metadata store) replicating through pysyncobj
with dmq's fixes."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Callable, Iterator

import pytest
from rocksdict import ReadOptions

from dmq_server.metadata import MetadataStore, MetadataStoreFactory
from dmq_server.raft.group import AckMode, GroupSpec, GroupTimings, PartitionGroup, RaftUnavailable, StoreFactory
from dmq_server.raft.log import LogSpace, group_keys
from dmq_server.store import PartitionStore, PartitionStoreFactory

from .cluster import free_ports

T0 = 1_700_000_000_000
TIMINGS = GroupTimings(snapshot_min_entries=10**9, snapshot_min_seconds=10**9)


def wait_for(condition: Callable[[], bool], timeout: float = 15.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


class Replicas:
    def __init__(self, root) -> None:
        self.root = root
        self.addresses = [f"127.0.0.1:{port}" for port in free_ports(3)]
        self.groups: list[PartitionGroup | None] = [self._start(i) for i in range(3)]
        self.now = T0

    def _start(self, i: int, store_factory: StoreFactory | None = None) -> PartitionGroup:
        peers = tuple(a for j, a in enumerate(self.addresses) if j != i)
        spec = GroupSpec("q/0", self.addresses[i], peers, str(self.root / f"r{i}"), TIMINGS)
        return PartitionGroup(spec, store_factory=store_factory)

    def live(self) -> list[PartitionGroup]:
        return [g for g in self.groups if g is not None]

    def leader(self) -> PartitionGroup:
        found: list[PartitionGroup] = []

        def elected() -> bool:
            found[:] = [g for g in self.live() if g.is_leader()]
            return len(found) == 1

        wait_for(elected, what="a single leader")
        return found[0]

    def submit(self, op: str, **fields) -> object:
        self.now += 1
        outcome = self.leader().submit_sync({"op": op, "now": self.now, **fields})
        assert "result" in outcome, outcome
        return outcome["result"]

    def stop(self, i: int, graceful: bool = False) -> None:
        group = self.groups[i]
        assert group is not None
        group.close(graceful=graceful)
        self.groups[i] = None

    def restart(self, i: int, store_factory: StoreFactory | None = None) -> None:
        self.groups[i] = self._start(i, store_factory)

    def close(self) -> None:
        for i, group in enumerate(self.groups):
            if group is not None:
                self.stop(i)


@pytest.fixture
def replicas(tmp_path) -> Iterator[Replicas]:
    cluster = Replicas(tmp_path)
    yield cluster
    cluster.close()


def converged(cluster: Replicas, index: int) -> bool:
    return all(g.query(lambda s: s.applied_index) >= index for g in cluster.live())


def snapshot_of(group: PartitionGroup) -> tuple:
    return group.query(lambda s: (s.stats(T0), s.peek(1_000)))


def test_replicas_apply_the_same_commands_in_the_same_order(replicas: Replicas) -> None:
    for i in range(20):
        replicas.submit("enqueue", messages=[[b"m%d" % i, None, None, None, None]] * 5)
    received = replicas.submit("receive", max=30, visibility_ms=60_000)
    replicas.submit("delete", receipts=[m["receipt"] for m in received[:10]])
    index = replicas.leader().raftLastApplied
    wait_for(lambda: converged(replicas, index), what="replicas to apply everything")
    states = [snapshot_of(g) for g in replicas.live()]
    assert states[0] == states[1] == states[2]
    assert states[0][0]["count"] == 90 and states[0][0]["in_flight"] == 20


def test_bad_command_is_an_error_result_and_the_group_keeps_serving(replicas: Replicas) -> None:
    leader = replicas.leader()
    assert leader.submit_sync({"op": "explode", "now": T0})["error"] == "UnknownOperation"
    assert leader.submit_sync({"op": "enqueue", "now": T0, "messages": "x"})["error"] == "InvalidCommand"
    assert replicas.submit("enqueue", messages=[[b"ok", None, None, None, None]])[0]["id"] == 1


def test_follower_refuses_commands_with_the_leader_address(replicas: Replicas) -> None:
    leader = replicas.leader()
    follower = next(g for g in replicas.live() if g is not leader)
    wait_for(lambda: follower.leader_address() == leader.spec.self_address, what="follower to know the leader")
    with pytest.raises(RaftUnavailable) as raised:
        follower.submit({"op": "tick", "now": T0}, lambda result: None)
    assert raised.value.code == "NotLeader" and raised.value.leader == leader.spec.self_address


def test_restart_replays_only_what_the_store_lacks(replicas: Replicas) -> None:
    for i in range(10):
        replicas.submit("enqueue", messages=[[b"x", None, None, None, None]])
    index = replicas.leader().raftLastApplied
    wait_for(lambda: converged(replicas, index), what="convergence")
    victim = next(i for i, g in enumerate(replicas.groups) if g is not None and not g.is_leader())
    replicas.stop(victim)
    replicas.submit("enqueue", messages=[[b"while down", None, None, None, None]])
    replicas.restart(victim)
    index = replicas.leader().raftLastApplied
    wait_for(lambda: converged(replicas, index), what="restarted replica to catch up")
    states = [snapshot_of(g) for g in replicas.live()]
    assert states[0] == states[1] == states[2] and states[0][0]["count"] == 11


class RecordingStoreFactory(PartitionStoreFactory):
    """Partition stores that record every index the group hands to `apply`, and the applied index at open."""

    def __init__(self) -> None:
        self.indexes: list[int] = []
        self.applied_at_open: int | None = None

    def open(self, path: str) -> PartitionStore:
        store = super().open(path)
        self.applied_at_open = store.applied_index
        apply = store.apply

        def recording_apply(index: int, command: object) -> object:
            self.indexes.append(index)
            return apply(index, command)

        store.apply = recording_apply  # type: ignore[method-assign]
        return store


def test_a_restarted_replica_skips_the_entries_its_store_already_applied(replicas: Replicas) -> None:
    # Stock pysyncobj restarts at raftLastApplied = 1 and walks every entry of the log again; the store ignored
    # them, but with tens of thousands of entries that took seconds in which the group served nothing.
    leader = replicas.leader()
    done: list[object] = []
    for _ in range(600):
        replicas.now += 1
        leader.submit({"op": "enqueue", "now": replicas.now, "messages": [[b"x", None, None, None, None]]},
                      done.append)
    wait_for(lambda: len(done) == 600, what="600 commits")
    index = leader.raftLastApplied
    wait_for(lambda: converged(replicas, index), what="convergence")
    victim = next(i for i, g in enumerate(replicas.groups) if g is not None and not g.is_leader())
    replicas.stop(victim)
    recording = RecordingStoreFactory()
    replicas.restart(victim, recording)
    replicas.submit("enqueue", messages=[[b"after the restart", None, None, None, None]])
    index = replicas.leader().raftLastApplied
    wait_for(lambda: converged(replicas, index), what="the restarted replica to apply the new entry")
    assert recording.applied_at_open is not None and recording.applied_at_open >= 600
    assert recording.indexes and min(recording.indexes) > recording.applied_at_open, (
        f"re-applied {sum(1 for i in recording.indexes if i <= recording.applied_at_open)} entries")
    states = [snapshot_of(g) for g in replicas.live()]
    assert states[0] == states[1] == states[2] and states[0][0]["count"] == 601


def test_a_leader_that_loses_its_majority_answers_its_waiting_commands_at_once(replicas: Replicas) -> None:
    # Cut off from its followers, a leader steps down after leaderFallbackTimeout (2 x election_max). Commands
    # waiting for a commit then get "outcome unknown" right away; pysyncobj kept them until the replica rejoined,
    # so clients waited for their own timeouts while the majority already served under a new leader.
    leader = replicas.leader()
    for i, group in enumerate(replicas.groups):
        if group is not leader:
            replicas.stop(i)
    outcomes: list[dict] = []
    leader.submit({"op": "enqueue", "now": T0, "messages": [[b"stranded", None, None, None, None]]},
                  outcomes.append)
    wait_for(lambda: bool(outcomes), timeout=5, what="an answer for the stranded command")  # ~0.9 s
    assert outcomes[0]["error"] == "Unavailable" and "unknown" in outcomes[0]["message"], outcomes
    assert not leader.is_leader()


def test_a_leader_that_steps_down_within_reach_of_its_majority_leaves_waiting_commands_waiting(
        replicas: Replicas) -> None:
    # A handover or a higher term seen: the majority answers, the next leader commits what is in flight, and
    # pysyncobj answers those commands with their results as this replica applies them. Only a leader cut off
    # from its majority answers them "outcome unknown" at once.
    leader = replicas.leader()
    replicas.submit("enqueue", messages=[[b"x", None, None, None, None]])  # the followers just answered
    answered: list[int] = []
    done = threading.Event()

    def step_down_as_reported() -> None:
        waiting = leader._SyncObj__commandsWaitingCommit  # type: ignore[attr-defined]
        waiting[10**9].append((leader.raftCurrentTerm, lambda result, error: answered.append(error)))
        leader._on_state_changed(2, 0)  # leader -> follower, as pysyncobj reports a handover
        waiting.pop(10**9, None)
        done.set()

    leader._on_next_tick(step_down_as_reported)
    assert done.wait(5)
    assert answered == []


def test_a_follower_left_alone_stops_naming_its_leader(replicas: Replicas) -> None:
    # With no peer connected a replica holds no election (nor a pre-vote round): stock pysyncobj then named the
    # leader it last heard for good, and its node forwarded requests to that leader instead of answering
    # Unavailable. After an election timeout without word from the leader, it names none.
    leader = replicas.leader()
    follower = next(g for g in replicas.live() if g is not leader)
    wait_for(lambda: follower.leader_address() == leader.spec.self_address, what="the follower to hear the leader")
    for i, group in enumerate(replicas.groups):
        if group is not follower:
            replicas.stop(i)
    wait_for(lambda: follower.lost_its_leader(), timeout=5, what="the follower to give its leader up")  # ~0.45 s
    assert follower.leader_address() is None and not follower.is_leader()


def test_wiped_follower_catches_up_through_a_snapshot(replicas: Replicas) -> None:
    for i in range(30):
        replicas.submit("enqueue", messages=[[b"m%d" % i, None, None, None, None]] * 10)
    leader = replicas.leader()
    victim = next(i for i, g in enumerate(replicas.groups) if g is not leader)
    replicas.stop(victim)
    replicas.submit("receive", max=25, visibility_ms=60_000)
    leader.forceLogCompaction()
    wait_for(lambda: leader._SyncObj__raftLog[0][1] > 10, what="the leader to compact its log")
    shutil.rmtree(replicas.root / f"r{victim}")
    replicas.restart(victim)
    index = leader.raftLastApplied
    wait_for(lambda: converged(replicas, index), timeout=30, what="wiped replica to install the snapshot")
    states = [snapshot_of(g) for g in replicas.live()]
    assert states[0] == states[1] == states[2]
    assert states[0][0]["count"] == 300 and states[0][0]["in_flight"] == 25


def test_graceful_stop_hands_leadership_over(replicas: Replicas) -> None:
    replicas.submit("enqueue", messages=[[b"before", None, None, None, None]])
    old = replicas.leader()
    index = replicas.groups.index(old)
    started = time.monotonic()
    assert old.step_down(timeout=5)
    replicas.stop(index, graceful=True)
    new = replicas.leader()
    assert new is not old and time.monotonic() - started < 2.0
    assert replicas.submit("enqueue", messages=[[b"after", None, None, None, None]])[0]["id"] == 2


def test_a_handover_reports_whether_it_was_made(replicas: Replicas) -> None:
    replicas.submit("enqueue", messages=[[b"x", None, None, None, None]])
    leader = replicas.leader()
    others = [i for i, g in enumerate(replicas.groups) if g is not leader]
    replicas.stop(others[0])
    replicas.submit("enqueue", messages=[[b"y", None, None, None, None]])  # committed without the stopped one
    outcomes: list[bool] = []
    leader.hand_leadership_to(replicas.addresses[others[0]], outcomes.append)  # not caught up: denied
    wait_for(lambda: outcomes == [False], timeout=5, what="the denied handover's outcome")
    target = replicas.groups[others[1]]
    assert target is not None
    match = leader._SyncObj__raftMatchIndex  # type: ignore[attr-defined]
    last_index = leader._SyncObj__getCurrentLogIndex  # type: ignore[attr-defined]
    wait_for(lambda: any(n.address == target.spec.self_address and index == last_index() for n, index in
                         list(match.items())), what="the leader to count the target caught up")
    leader.hand_leadership_to(replicas.addresses[others[1]], outcomes.append)
    wait_for(lambda: outcomes == [False, True], timeout=5, what="the handover's outcome")
    wait_for(lambda: target.is_leader(), timeout=5, what="the target to lead")


def test_a_handover_is_made_under_continuous_writes(replicas: Replicas) -> None:
    """pysyncobj grants a handover only while the target holds the leader's whole log; under writes that is
    true for moments between appends, so a single request was denied nearly always (a rebalance took 5-10 s)."""
    leader = replicas.leader()
    target = next(g for g in replicas.live() if g is not leader)
    stop = threading.Event()
    in_flight = threading.Semaphore(4)
    submitted = [0]
    outcomes_of_writes: list[object] = []

    def answered(outcome: object) -> None:
        outcomes_of_writes.append(outcome)
        in_flight.release()

    def write() -> None:
        deadline = time.monotonic() + 10
        while not stop.is_set() and time.monotonic() < deadline:
            if not in_flight.acquire(timeout=1):
                continue
            try:
                leader.submit({"op": "enqueue", "now": T0, "messages": [[b"w", None, None, None, None]]},
                              answered)
            except RaftUnavailable:
                in_flight.release()
                return  # leadership moved
            submitted[0] += 1

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    try:
        wait_for(lambda: submitted[0] >= 200, timeout=10, what="writes under way")
        outcomes: list[bool] = []
        leader.hand_leadership_to(replicas.addresses[replicas.groups.index(target)], outcomes.append)
        wait_for(lambda: bool(outcomes), timeout=5, what="the handover's outcome")
        assert outcomes == [True], "the handover was denied while writes went on"
        wait_for(lambda: target.is_leader(), timeout=5, what="the target to lead")
    finally:
        stop.set()
        writer.join(timeout=15)
    assert not writer.is_alive()
    # The writes queued while the leader held its appends are answered too, none left waiting.
    wait_for(lambda: len(outcomes_of_writes) == submitted[0], timeout=10, what="an answer to every write")
    unexpected = [outcome for outcome in outcomes_of_writes
                  if not (isinstance(outcome, dict) and ("result" in outcome
                                                         or outcome.get("error") in ("NotLeader", "Unavailable")))]
    assert not unexpected, unexpected[:4]


def _leader_and_caught_up_follower(replicas: Replicas) -> tuple[PartitionGroup, PartitionGroup]:
    """The leader and a follower, once every follower holds the leader's whole log (a handover is granted)."""
    leader = replicas.leader()
    target = next(g for g in replicas.live() if g is not leader)
    match = leader._SyncObj__raftMatchIndex  # type: ignore[attr-defined]
    wait_for(lambda: all(index == leader._SyncObj__getCurrentLogIndex() for index in list(match.values())),
             what="followers caught up")
    return leader, target


def test_writes_that_arrive_during_a_handover_are_applied_once(replicas: Replicas) -> None:
    """The leader appends nothing once it sent timeout_now; writes that arrive meanwhile wait in its queue and go
    to the new leader with the queue (pysyncobj forwards what a leader that stepped down still holds). Writes
    queued just behind the request usually meet the pause (the new leader's term is on their entries); when the
    tick appended them first, the old leader did. Either way every write is answered at once, and applied once."""
    replicas.submit("enqueue", messages=[[b"before", None, None, None, None]])
    applied = 1
    paused_rounds = 0
    for _ in range(6):
        leader, target = _leader_and_caught_up_follower(replicas)
        outcomes: list[bool] = []
        answers: list[dict] = []
        started = time.monotonic()
        leader.hand_leadership_to(replicas.addresses[replicas.groups.index(target)], outcomes.append)
        for i in range(5):
            leader.submit({"op": "enqueue", "now": T0, "messages": [[b"during %d" % i, None, None, None, None]]},
                          answers.append)
        wait_for(lambda: len(answers) == 5 and bool(outcomes), timeout=5, what="an answer to each write")
        assert time.monotonic() - started < 3
        assert outcomes == [True]
        wait_for(lambda: target.is_leader(), timeout=5, what="the target to lead")
        assert all("result" in answer for answer in answers), answers
        applied += 5
        entries = target._SyncObj__raftLog[-5:]  # type: ignore[attr-defined]
        if all(term == target.raftCurrentTerm for _, _, term in entries):
            paused_rounds += 1
            if paused_rounds == 2:
                break
    assert paused_rounds, "no write ever met a handover's pause"
    assert replicas.submit("enqueue", messages=[[b"after", None, None, None, None]])[0]["id"] == applied + 1


def test_a_forwarded_write_whose_answer_is_lost_fails_within_seconds(replicas: Replicas) -> None:
    """Writes queued at a leader that steps down are forwarded to the new leader (see above). When that message is
    lost, stock pysyncobj waited for its answer forever, so the caller heard nothing until its own timeout (the
    node's 10 s). Now the write fails after `_dmq_forwardReplyTimeout` with an outcome-unknown Unavailable, which
    the client retries under its dedup ids. The messages are dropped here by the old leader's transport."""
    replicas.submit("enqueue", messages=[[b"before", None, None, None, None]])
    applied = 1
    lost_answers = 0
    for _ in range(6):
        leader, target = _leader_and_caught_up_follower(replicas)
        transport = leader._SyncObj__transport  # type: ignore[attr-defined]
        send = transport.send
        transport.send = lambda node, message, send=send: (  # type: ignore[method-assign]
            False if message.get("type") == "apply_command" else send(node, message))
        answers: list[tuple[float, dict]] = []
        started = time.monotonic()
        try:
            leader.hand_leadership_to(replicas.addresses[replicas.groups.index(target)], lambda granted: None)
            for i in range(5):
                leader.submit({"op": "enqueue", "now": T0, "messages": [[b"during %d" % i, None, None, None, None]]},
                              lambda outcome: answers.append((time.monotonic() - started, outcome)))
            wait_for(lambda: len(answers) == 5, timeout=6, what="an answer to each write")
        finally:
            transport.send = send  # type: ignore[method-assign]
        unanswered = [outcome for _, outcome in answers if "result" not in outcome]
        assert all(outcome.get("error") == "Unavailable" and "unknown" in outcome["message"]
                   for outcome in unanswered), unanswered
        assert all(elapsed < leader._dmq_forwardReplyTimeout + 2 for elapsed, outcome in answers if "error" in outcome)
        lost_answers += len(unanswered)
        applied += 5 - len(unanswered)
        if lost_answers:
            break
    assert lost_answers, "no write was ever forwarded"
    # Nothing forwarded was applied (the messages were dropped): the next id follows the writes that were.
    assert replicas.submit("enqueue", messages=[[b"after", None, None, None, None]])[0]["id"] == applied + 1


def _log_keys(space: LogSpace, group_id: str) -> int:
    low, high = group_keys(group_id)
    bounded = ReadOptions()
    bounded.set_iterate_upper_bound(high)
    return sum(1 for _ in space.db.keys(from_key=low, read_opt=bounded))


def test_partitions_share_one_host_and_one_log_per_node(tmp_path) -> None:
    from dmq_server.raft.host import RaftHost

    addresses = [f"127.0.0.1:{port}" for port in free_ports(3)]
    hosts = [RaftHost(address, b"cluster-secret-for-tests-0123456789").start() for address in addresses]
    spaces = [LogSpace(str(tmp_path / f"n{i}" / "raftlog")) for i in range(3)]
    groups: dict[str, list[PartitionGroup]] = {}
    try:
        for partition in range(4):
            group_id = f"q/{partition}"
            groups[group_id] = [
                PartitionGroup(GroupSpec(group_id, address, tuple(a for a in addresses if a != address),
                                         str(tmp_path / f"n{i}" / group_id.replace("/", "-")), TIMINGS),
                               host=host, log_space=space)
                for i, (address, host, space) in enumerate(zip(addresses, hosts, spaces))]
        for group_id, replicas in groups.items():
            leader: list[PartitionGroup] = []
            wait_for(lambda: len([g for g in replicas if g.is_leader()]) == 1, what=f"a leader of {group_id}")
            leader = [g for g in replicas if g.is_leader()]
            for i in range(5):
                outcome = leader[0].submit_sync({"op": "enqueue", "now": T0 + i,
                                                  "messages": [[group_id.encode(), None, None, None, None]]})
                assert outcome["result"][0]["id"] == i + 1
            index = leader[0].raftLastApplied
            wait_for(lambda: all(g.query(lambda s: s.applied_index) >= index for g in replicas), what="apply")
            states = [g.query(lambda s: s.peek(10)) for g in replicas]
            assert states[0] == states[1] == states[2] and len(states[0]) == 5
        for host in hosts:  # four partitions, one connection per peer node (the last may still be dialling)
            wait_for(lambda: host.stats()["connections"] == 2, what="a connection to each peer node")
            assert host.stats()["groups"] == 4
        for i, space in enumerate(spaces):  # every group's log in the node's one database, none of its own
            assert all(_log_keys(space, group_id) >= 5 for group_id in groups)
            assert not list((tmp_path / f"n{i}").glob("q-*/raftlog"))
    finally:
        for replicas in groups.values():
            for group in replicas:
                group.close(graceful=False)
        for host in hosts:
            host.stop()
        for space in spaces:
            space.close()


def test_a_group_with_a_log_of_its_own_keeps_it_beside_a_shared_log(tmp_path) -> None:
    """A data directory written before the node shared its log is read as it was, and written on."""
    spec = GroupSpec("q/0", f"127.0.0.1:{free_ports(1)[0]}", (), str(tmp_path / "q-0"), TIMINGS)
    alone = PartitionGroup(spec)
    try:
        wait_for(alone.is_leader, what="a single replica leading")
        assert alone.submit_sync({"op": "enqueue", "now": T0, "messages": [[b"old", None, None, None, None]]})[
            "result"][0]["id"] == 1
    finally:
        alone.close(graceful=False)
    space = LogSpace(str(tmp_path / "raftlog"))
    group = PartitionGroup(spec, log_space=space)
    try:
        wait_for(group.is_leader, what="the replica leading again")
        assert group.submit_sync({"op": "enqueue", "now": T0, "messages": [[b"new", None, None, None, None]]})[
            "result"][0]["id"] == 2
        assert [m["body"] for m in group.query(lambda s: s.peek(5))] == [b"old", b"new"]
        assert group._raft_log.lastIndex >= 2 and _log_keys(space, "q/0") == 0
    finally:
        group.close(graceful=False)
        space.close()


def test_leader_ack_mode_acknowledges_before_commit_and_replicates_after(replicas: Replicas) -> None:
    leader = replicas.leader()
    followers = [g for g in replicas.live() if g is not leader]
    outcome = leader.submit_sync({"op": "enqueue", "now": T0, "messages": [[b"fast", None, None, None, None]]},
                                 ack=AckMode.LEADER)
    accepted = outcome["accepted"]
    assert accepted["index"] >= 1 and accepted["index"] <= leader._raft_log.durableLastIndex
    wait_for(lambda: all(g.query(lambda s: s.applied_index) >= accepted["index"] for g in replicas.live()),
             what="the leader-acknowledged write to reach every replica")
    assert all(g.query(lambda s: s.peek(5))[0]["body"] == b"fast" for g in followers)


def test_the_metadata_store_as_state_machine(tmp_path) -> None:
    addresses = [f"127.0.0.1:{port}" for port in free_ports(3)]
    replicas = [PartitionGroup(GroupSpec("metadata", address, tuple(a for a in addresses if a != address),
                                         str(tmp_path / f"r{i}"), TIMINGS), store_factory=MetadataStoreFactory())
                for i, address in enumerate(addresses)]
    try:
        wait_for(lambda: len([g for g in replicas if g.is_leader()]) == 1, what="a single leader")
        leader = next(g for g in replicas if g.is_leader())
        outcome = leader.submit_sync({"op": "create_queue", "now": T0, "name": "orders", "attrs": {"fifo": True},
                                      "partitions": [["n1", "n2", "n3"], ["n2", "n3", "n1"]], "max_queues": 10})
        record = outcome["result"]
        assert record["id"] == 1 and record["partitions"][1] == ["n2", "n3", "n1"]
        missing = leader.submit_sync({"op": "delete_queue", "now": T0, "name": "nope"})
        assert missing["error"] == "QueueNotFound"  # a rejected command is a result; the group keeps serving
        index = leader.raftLastApplied
        wait_for(lambda: all(g.query(lambda s: s.applied_index) >= index for g in replicas), what="apply")
        states = [g.query(MetadataStore.snapshot) for g in replicas]
        assert states[0] == states[1] == states[2]
        assert states[0]["queues"] == [record] and states[0]["version"] == record["version"]
    finally:
        for group in replicas:
            group.close(graceful=False)


def test_a_new_leader_reads_only_once_its_state_holds_every_commit(replicas: Replicas) -> None:
    """A leader new in its term may not yet have applied entries committed in the term before (its followers
    learn a commit index one heartbeat later). `leader_state_complete` says when its reads are safe: whenever it
    holds, every acknowledged message is counted."""
    old = replicas.leader()
    replicas.submit("enqueue", messages=[[b"m%d" % i, None, None, None, None] for i in range(5)])
    replicas.stop(replicas.groups.index(old))  # at once: the followers may not know the last commit yet
    complete_seen = 0
    deadline = time.monotonic() + 15
    while complete_seen < 50 and time.monotonic() < deadline:
        for group in replicas.live():
            if group.leader_state_complete():
                complete_seen += 1
                assert group.query(lambda s: s.stats(T0)["count"]) == 5
        time.sleep(0.001)
    assert complete_seen == 50
    assert not any(g.leader_state_complete() for g in replicas.live() if not g.is_leader())
