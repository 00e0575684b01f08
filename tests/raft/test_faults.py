"""Fault tests of a partition group with real replica processes (dmq_server.raft.node_process) on 127.0.0.1.

Every replica runs a writer that, whenever it leads, keeps a few enqueue commands in flight; each acknowledged
command is appended to an ack file before the acknowledgement callback returns, so the acks of a replica killed with
SIGKILL are known. The checks, after the faults:

* every acknowledged message is in the store of every replica (lost = 0), and no message is stored twice;
* all replicas hold byte-identical stores (a digest of every RocksDB key/value at the same applied index): the
  same commands were applied in the same order everywhere.

Duration on a shared 2-core machine: ~80 s for the whole file when it passes (20 leader kills ~33 s, 100,000-entry
snapshot catch-up ~18 s, both marked slow: deselect with -m "not slow"). The [leader] isolation case and
test_deposed_leader_with_a_divergent_tail_rejoins are the regression tests of a livelock these tests found (a
deposed leader whose last entry diverged never caught up: the rejection hints of one heartbeat undid the back-off).
"""

from __future__ import annotations

import re
import statistics
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dmq_server.raft.bench import first_ack_after, timing_options
from dmq_server.raft.group import GroupTimings
from dmq_server.raft.node_process import LocalCluster, NodeProcess

from .proxy import FaultProxy

K = 5  # messages per writer command
_WRITER_BODY = re.compile(r"n\d+\.\d+:\d+:\d+$")
WINDOW = 4  # writer commands in flight


class Harness:
    def __init__(self, root: Path, options: list[str], fronts: list[str] | None = None) -> None:
        self.root = root
        self.cluster = LocalCluster(str(root), options=options, fronts=fronts)
        self.nodes = self.cluster.nodes

    # -------------------------------------------------------------- writers and acks

    def start_writer(self, node: NodeProcess) -> None:
        i = self.nodes.index(node)
        node.call("writer_start", wait=60, tag=f"n{i}.{node.incarnation}", k=K, window=WINDOW, cmd_timeout=3.0,
                  ack_file=str(self.root / f"acks-n{i}.{node.incarnation}"))

    def start_writers(self) -> None:
        for node in self.nodes:
            if node.alive():
                self.start_writer(node)

    def stop_writers(self) -> None:
        for node in self.nodes:
            if node.alive():
                node.call("writer_stop", wait=30)

    def acknowledged(self) -> set[str]:
        """The body of every acknowledged message, from the ack files of every writer incarnation."""
        bodies: set[str] = set()
        for path in self.root.glob("acks-*"):
            tag = path.name[len("acks-"):]
            for line in path.read_text().splitlines():
                if line.strip():
                    seq = int(line)
                    bodies.update(f"{tag}:{seq}:{j}" for j in range(K))
        return bodies

    def first_ack_after(self, nodes: list[NodeProcess], since: float, timeout: float = 15.0) -> float | None:
        return first_ack_after(nodes, since, timeout)

    # -------------------------------------------------------------- checks

    def check_replicas(self, expected_acks: set[str] | None = None, min_acks: int = 1) -> list[dict]:
        """Converge with nothing in flight, then: identical stores everywhere, every ack present, no duplicate."""
        self.cluster.wait_converged(nodes=self.nodes, timeout=90, settled=True)
        dumps = [node.call("dump", wait=120) for node in self.nodes]
        acks = self.acknowledged() if expected_acks is None else expected_acks
        assert len(acks) >= min_acks * K, f"too few acknowledged writes to check: {len(acks)}"
        for node, dump in zip(self.nodes, dumps):
            bodies = dump["bodies"]
            written = [b for b in bodies if _WRITER_BODY.match(b)]
            assert len(written) == len(set(written)), f"{node.address}: a message is stored twice"
            lost = acks - set(bodies)
            assert not lost, f"{node.address}: {len(lost)} acknowledged messages lost, e.g. {sorted(lost)[:5]}"
        applied = [d["applied_index"] for d in dumps]
        assert len(set(applied)) == 1, f"replicas at different applied indexes: {applied}"
        digests = [d["digest"] for d in dumps]
        assert len(set(digests)) == 1, f"replicas diverged: {digests} (keys {[d['keys'] for d in dumps]})"
        assert dumps[0]["bodies"] == dumps[1]["bodies"] == dumps[2]["bodies"]
        return dumps

    def stop(self) -> None:
        self.cluster.stop()


@pytest.fixture
def harness_factory(tmp_path: Path) -> Iterator:
    made: list[Harness] = []

    def make(options: list[str] | None = None, proxy: FaultProxy | None = None) -> Harness:
        harness = Harness(tmp_path, options if options is not None else timing_options(GroupTimings()),
                          proxy.fronts if proxy is not None else None)
        made.append(harness)
        if proxy is not None:
            proxy.start(harness.cluster.binds)
        harness.cluster.start()
        return harness

    try:
        yield make
    finally:
        for harness in made:
            harness.stop()


# ====================================================================================================== a


@pytest.mark.slow
@pytest.mark.timeout(280)
def test_kill_leader_under_writes_20_rounds(harness_factory) -> None:
    h: Harness = harness_factory()
    h.cluster.wait_leader(timeout=30)
    h.start_writers()
    failovers: list[float] = []
    leaders: list[str] = []
    for round_no in range(20):
        leader = h.cluster.wait_leader(timeout=30)
        leaders.append(leader.address)
        time.sleep(0.4)  # acknowledged writes flow, commands are in flight at the kill
        survivors = [n for n in h.nodes if n is not leader]
        killed_at = time.time()
        leader.kill9()
        elapsed = h.first_ack_after(survivors, killed_at, timeout=15)
        assert elapsed is not None, f"round {round_no}: no new leader acknowledged a write within 15 s"
        failovers.append(elapsed)
        leader.start()
        h.start_writer(leader)
        h.cluster.wait_converged(timeout=60)  # the restarted replica caught up before the next kill
    h.stop_writers()
    dumps = h.check_replicas(min_acks=100)
    print(f"\nfailover kill->ack: median {statistics.median(failovers):.3f} s, max {max(failovers):.3f} s; "
          f"{len(h.acknowledged())} acked messages, {dumps[0]['count']} stored; leaders {len(set(leaders))}")


# ====================================================================================================== b


@pytest.mark.timeout(200)
def test_kill_all_replicas_under_writes_then_restart(harness_factory) -> None:
    h: Harness = harness_factory()
    for round_no in range(3):
        h.cluster.wait_leader(timeout=30)
        h.start_writers()
        time.sleep(1.0)
        leader = h.cluster.wait_leader(timeout=30)
        # the leader first (commands in flight on it), then the followers, as close together as possible
        for node in [leader] + [n for n in h.nodes if n is not leader]:
            node.kill9()
        for node in h.nodes:
            node.start()
        h.cluster.wait_leader(timeout=30)
    h.check_replicas(min_acks=50)


# ====================================================================================================== c


@pytest.mark.slow
@pytest.mark.timeout(280)
def test_follower_down_for_100k_entries_catches_up_through_a_snapshot(harness_factory) -> None:
    """100,000 Raft entries (one small enqueue each, 200 in flight) while a follower is down; the leader's log is
    compacted past the follower's position, so the restarted follower can only catch up through a snapshot."""
    timings = GroupTimings(snapshot_min_entries=30_000, snapshot_min_seconds=10**9)
    h: Harness = harness_factory(timing_options(timings))
    leader = h.cluster.wait_leader(timeout=30)
    for i in range(50):
        outcome = leader.call("submit", command={"op": "enqueue", "messages": [[f"before-{i}", None, None, None,
                                                                                  None]]})["outcome"]
        assert "result" in outcome, outcome
    h.cluster.wait_converged(timeout=30)
    victim = next(n for n in h.nodes if n is not leader)
    victim_last = victim.call("status")["log_last"]
    victim.kill9()

    started = time.monotonic()
    entries = 100_000
    done = 0
    while done < entries:  # chunks, so a leader change is survivable and visible
        leader = h.cluster.wait_leader(timeout=30, among=[n for n in h.nodes if n.alive()])
        load = leader.call("load", wait=200, cmds=min(20_000, entries - done), msgs=1, size=20, window=200,
                           timeout=180)
        assert load["outstanding"] == 0, load
        done += load["acked"]
        assert load["failed"] == 0 or done < entries, load
    write_seconds = time.monotonic() - started

    leader.call("compact")
    deadline = time.monotonic() + 60
    while leader.call("status")["log_first"] <= victim_last + entries // 2:
        assert time.monotonic() < deadline, "the leader did not compact its log"
        time.sleep(0.2)
    victim.start()
    started = time.monotonic()
    h.cluster.wait_converged(nodes=h.nodes, timeout=120)
    catch_up_seconds = time.monotonic() - started
    status = victim.call("status")
    assert status["snapshot_installs"] >= 1, status
    dumps = h.check_replicas(expected_acks=set(), min_acks=0)
    assert dumps[0]["count"] == 50 + done
    print(f"\n{done} entries written in {write_seconds:.1f} s; follower caught up in {catch_up_seconds:.1f} s "
          f"(snapshot installs: {status['snapshot_installs']})")


# ====================================================================================================== d


@pytest.mark.timeout(200)
@pytest.mark.parametrize("role", ["follower", "leader"])
def test_isolated_replica_majority_serves_and_replica_converges_after_heal(harness_factory, role: str) -> None:
    proxy = FaultProxy(3)
    try:
        h: Harness = harness_factory(proxy=proxy)
        leader = h.cluster.wait_leader(timeout=30)
        h.start_writers()
        time.sleep(1.0)
        leader = h.cluster.wait_leader(timeout=30)
        victim = leader if role == "leader" else next(n for n in h.nodes if n is not leader)
        others = [n for n in h.nodes if n is not victim]
        before = victim.call("status")
        isolated_at = time.time()
        proxy.isolate(victim.address)

        # the majority serves: a write acknowledged well after the isolation, by a replica of the majority
        settle = 1.5
        time.sleep(settle)
        elapsed = h.first_ack_after(others, isolated_at + settle, timeout=15)
        assert elapsed is not None, "the majority stopped acknowledging writes"
        new_leader = h.cluster.wait_leader(timeout=15, among=others)
        time.sleep(1.0)
        during = victim.call("status")
        assert during["commit"] <= before["commit"] + 200  # bounded by what was in flight at the cut
        # an isolated old leader steps down (no quorum) and acknowledges nothing long after the cut
        report = victim.call("writer_report", since=isolated_at + 1.0)
        assert report["first_ack_since"] is None, report
        assert not during["is_leader"]
        progressed = new_leader.call("status")["commit"]
        assert progressed > during["commit"]

        proxy.heal()
        h.cluster.wait_converged(nodes=h.nodes, timeout=30)
        time.sleep(0.5)
        h.stop_writers()
        h.check_replicas(min_acks=20)
        assert proxy.refused > 0  # the cut links were really tried and refused
    finally:
        proxy.stop()


@pytest.mark.timeout(120)
def test_a_replica_cut_off_keeps_its_term_and_does_not_depose_the_leader(harness_factory) -> None:
    """Pre-vote: a replica cut off from the others for several election timeouts asks them before it campaigns,
    gets no majority and keeps its term; after the heal it follows the leader. With stock pysyncobj it campaigned
    as soon as it was connected again (its election timeout long past), and its higher term deposed the healthy
    leader: this test failed with every term at 2 instead of 1."""
    proxy = FaultProxy(3)
    try:
        h = harness_factory(proxy=proxy)
        h.cluster.wait_converged(timeout=30)
        leader = h.cluster.wait_leader(timeout=30)
        victim = next(n for n in h.nodes if n is not leader)
        term = leader.call("status")["term"]
        assert victim.call("status")["term"] == term
        proxy.isolate(victim.address)
        time.sleep(3.0)  # at least 6 election timeouts (0.3-0.45 s)
        cut_off = victim.call("status")
        assert cut_off["term"] == term, "the cut-off replica raised its term"
        assert cut_off["leader"] is None, "the cut-off replica still names a leader it cannot hear"
        proxy.heal()
        h.cluster.wait_converged(nodes=h.nodes, timeout=30)
        time.sleep(1.0)  # a vote request sent at the heal has arrived by now
        terms = {i: status["term"] for i, status in h.cluster.statuses().items()}
        assert terms == {0: term, 1: term, 2: term}, terms
        assert h.cluster.wait_leader(timeout=5) is leader
    finally:
        proxy.stop()


@pytest.mark.timeout(200)
def test_deposed_leader_with_a_divergent_tail_rejoins(harness_factory) -> None:
    """A leader cut off from the others appends a command that never reaches them; the others elect a new leader
    and write more than one append_entries batch (64 KiB) of entries. After healing, the old leader must drop its
    divergent entry and catch up.

    Fails with pysyncobj_fixes as of this writing (livelock, see the report): the new leader pipelines its whole
    tail to the old leader in several append_entries per heartbeat. The first (prevLogIdx = the divergent index)
    is rejected with hint = that index, every later one (prevLogIdx beyond the old leader's log) with hint = its
    last index + 1. The leader applies the rejections in order, so nextIndex goes down by one and straight back
    up, on every heartbeat, forever: the old leader never gets past its divergent entry."""
    proxy = FaultProxy(3)
    try:
        h = harness_factory(proxy=proxy)
        leader = h.cluster.wait_leader(timeout=30)
        for i in range(20):
            outcome = leader.call("submit", command={"op": "enqueue", "messages": [[f"m{i}", None, None, None,
                                                                                     None]]})["outcome"]
            assert "result" in outcome, outcome
        expected = 20
        for round_no in range(4):  # the livelock depends on how replies group into polls: ~50% per round
            h.cluster.wait_converged(timeout=30)
            # Not the previous round's new leader: leadership can move at the heal (it did, before pre-vote).
            leader = h.cluster.wait_leader(timeout=30)
            before = leader.call("status")["log_last"]
            proxy.isolate(leader.address)
            # still leader until its fallback timeout: the command lands in its log only (outcome unknown)
            outcome = leader.call("submit", wait=20, timeout=0.5,
                                  command={"op": "enqueue", "messages": [["divergent", None, None, None, None]]})
            assert "result" not in outcome["outcome"], outcome
            assert leader.call("status")["log_last"] > before, \
                f"the cut-off leader did not append the command: {outcome}"
            others = [n for n in h.nodes if n is not leader]
            new_leader = h.cluster.wait_leader(timeout=15, among=others)
            load = new_leader.call("load", wait=120, cmds=1000, msgs=1, size=1000, window=50, timeout=100)
            assert load["acked"] == 1000, load
            expected += 1000
            proxy.heal()
            try:
                h.cluster.wait_converged(nodes=h.nodes, timeout=20)
            except TimeoutError as error:
                raise AssertionError(f"round {round_no}: the deposed leader never caught up: {error}") from None
        dumps = h.check_replicas(expected_acks=set(), min_acks=0)
        assert "divergent" not in dumps[0]["bodies"] and dumps[0]["count"] == expected
    finally:
        proxy.stop()
