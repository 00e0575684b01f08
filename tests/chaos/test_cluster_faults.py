"""A real 3-node cluster behind the chaos Network: elections across partitions, and a power loss that costs
every node its unsynced writes."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dmq_client.connection import Connection
from dmq_client.errors import DmqError, QueueNotFound
from dmq_server.chaos.checker import check
from dmq_server.chaos.history import Delivery, FaultEvent, LeaseEnd, Mark, QueueInfo, Recorder, SendOp
from dmq_server.chaos.unsynced import lose_unsynced_writes, read_sync_record

from .nodes import ChaosNodes


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[ChaosNodes]:
    cluster = ChaosNodes(tmp_path)
    try:
        cluster.start_all()
        cluster.wait_for("ready", cluster.ready)
        yield cluster
    finally:
        cluster.close()


def _leader_seen_by(nodes: ChaosNodes, i: int) -> str | None:
    status = nodes.status(i)
    return None if status is None else status["metadata_leader"]


def test_isolating_the_metadata_leader_elects_another_and_heal_reunites(nodes: ChaosNodes) -> None:
    ids = [n.node_id for n in nodes.layout.nodes]
    leader = nodes.wait_for("a metadata leader", lambda: _leader_seen_by(nodes, 0))
    old = ids.index(leader)
    others = [i for i in range(3) if i != old]

    started = time.monotonic()
    nodes.network.isolate(old)  # clients still reach every node; nodes cannot reach `old`

    def new_leader() -> str | None:
        seen = {_leader_seen_by(nodes, i) for i in others}
        return seen.pop() if len(seen) == 1 and None not in seen and leader not in seen else None
    elected = nodes.wait_for("a new metadata leader in the majority", new_leader, timeout=15)
    took = time.monotonic() - started
    assert elected in {ids[i] for i in others}
    assert nodes.network.stats()[(old, others[0])].connections >= 1  # the proxy really carried that link

    nodes.network.heal()
    nodes.wait_for("one leader everywhere after the heal",
                   lambda: len({_leader_seen_by(nodes, i) for i in range(3)} - {None}) == 1
                   and None not in {_leader_seen_by(nodes, i) for i in range(3)}, timeout=15)
    print(f"new metadata leader {elected} {took:.2f} s after isolating {leader}")


def _call(conn: Connection, op: str, args: dict, attempts: int = 100) -> object:
    """Retry while leaders are being elected (bounded)."""
    for attempt in range(attempts):
        try:
            return conn.call(op, args, timeout=10)
        except DmqError as exc:
            if not exc.retryable or attempt == attempts - 1:
                raise
            time.sleep(0.1)
    raise AssertionError("unreachable")


def _produce(address: str, rec: Recorder, stop: threading.Event, limit: int = 5000) -> None:
    """One message per send, each with a unique payload, recording every outcome (bounded in count)."""
    conn: Connection | None = None
    for seq in range(limit):
        if stop.is_set():
            break
        payload = f"p-{seq}"
        t0 = time.time() * 1000
        try:
            if conn is None:
                conn = Connection(address, connect_timeout=1.0)
            result = conn.call("send", {"queue": "q", "messages": [{"body": payload.encode()}]}, timeout=3)[0]
            outcome, mid, error = ("ok", result["id"], None) if "id" in result else ("failed", None, str(result))
        except (DmqError, OSError) as exc:
            # The node may have appended it before dying: only a definite refusal would be "failed".
            outcome, mid, error = "unknown", None, type(exc).__name__
            if conn is not None:
                conn.close()
                conn = None
            time.sleep(0.05)
        rec.send(SendOp("p1", payload, "q", None, seq, t0, time.time() * 1000, outcome, mid, error))
    if conn is not None:
        conn.close()


def _drain(address: str, rec: Recorder, seconds: float = 60) -> None:
    with Connection(address) as conn:
        deadline = time.monotonic() + seconds
        empty = 0
        while time.monotonic() < deadline and empty < 5:
            t0 = time.time() * 1000
            messages = _call(conn, "receive", {"queue": "q", "max_messages": 100, "wait_ms": 200,
                                               "visibility_timeout_ms": 30_000})
            t1 = time.time() * 1000
            empty = 0 if messages else empty + 1
            for m in messages:
                did = rec.delivery(Delivery("drain", "q", m["body"].decode(), m["id"], None, m["receive_count"],
                                            t0, t1, 30_000))
                d0 = time.time() * 1000
                answer = _call(conn, "delete", {"queue": "q", "receipts": [m["receipt"]]})[0]
                rec.lease_end(LeaseEnd(did, "delete", "ok" if answer.get("ok") else "failed", d0,
                                       time.time() * 1000))


def test_a_full_cluster_power_loss_mid_workload_keeps_every_acknowledged_message(nodes: ChaosNodes) -> None:
    rec = Recorder()
    rec.queue(QueueInfo("q", fifo=False, partitions=2, visibility_timeout_ms=30_000))
    with Connection(nodes.addresses[0]) as conn:
        _call(conn, "create_queue", {"name": "q", "attributes": {"partitions": 2, "replication": 3}})
    stop = threading.Event()
    producer = threading.Thread(target=_produce, args=(nodes.addresses[0], rec, stop), daemon=True)
    producer.start()
    nodes.wait_for("some acknowledged sends", lambda: sum(op.outcome == "ok" for op in rec.history().sends) >= 100)

    fault_at = time.time() * 1000
    for i in range(3):  # power loss: every node dies mid-workload and loses what it had not fsynced
        nodes.kill(i)
    stop.set()
    producer.join(10)
    reports = [lose_unsynced_writes(str(nodes.layout.data_dirs[i]), nodes.sync_records[i], pid=nodes.pid(i))
               for i in range(3)]
    assert all(read_sync_record(path) for path in nodes.sync_records)  # the nodes recorded their fsyncs
    assert all(report.bytes_lost > 0 for report in reports), [r.summary() for r in reports]  # stores lost data
    for i in range(3):
        nodes.start(i)
    nodes.wait_for("ready after the power loss", nodes.ready)
    rec.fault(FaultEvent("lose_unsynced_all", tuple(n.node_id for n in nodes.layout.nodes), fault_at,
                         time.time() * 1000, time.time() * 1000, "; ".join(r.summary() for r in reports)))
    rec.mark(Mark("drain", time.time() * 1000))

    _drain(nodes.addresses[1], rec)
    result = check(rec.history(), recovery_bound_ms=60_000)
    print(result.table())
    assert result.ok, f"{result.table()}\n{nodes.logs()}"
    assert result.payloads["acknowledged"] >= 100


def test_a_lagging_follower_answers_metadata_reads_only_after_catching_up(nodes: ChaosNodes) -> None:
    """A queue deleted through the metadata leader is no longer listed or described by a follower whose Raft
    traffic from the leader runs 300 ms late: the follower asks the leader how far it got and waits for that
    (a read index) instead of answering from its stale replica."""
    ids = [n.node_id for n in nodes.layout.nodes]
    leader = ids.index(nodes.wait_for("a metadata leader", lambda: _leader_seen_by(nodes, 0)))
    follower = (leader + 1) % 3
    with Connection(nodes.addresses[leader]) as to_leader, Connection(nodes.addresses[follower]) as to_follower:
        to_leader.call("create_queue", {"name": "lagging", "attributes": {"partitions": 1}}, timeout=20)
        nodes.wait_for("the follower to list the queue",
                       lambda: "lagging" in to_follower.call("list_queues", {"prefix": ""}))
        nodes.network.delay(leader, follower, 0.3)
        try:
            to_leader.call("delete_queue", {"name": "lagging"}, timeout=20)
            assert "lagging" not in to_follower.call("list_queues", {"prefix": ""}, timeout=5)
            with pytest.raises(DmqError):
                to_follower.call("get_queue", {"name": "lagging"}, timeout=5)
        finally:
            nodes.network.heal()


def test_a_lagging_follower_serves_a_queue_created_moments_ago(nodes: ChaosNodes) -> None:
    """A send through a follower whose Raft traffic from the metadata leader runs 300 ms late, the moment the
    leader has applied the queue's creation: the follower catches up (a read index) instead of answering
    QueueNotFound from its stale replica. Unavailable (its partition leader not known yet) may come first."""
    ids = [n.node_id for n in nodes.layout.nodes]
    leader = ids.index(nodes.wait_for("a metadata leader", lambda: _leader_seen_by(nodes, 0)))
    follower = (leader + 1) % 3
    with Connection(nodes.addresses[leader]) as to_leader, Connection(nodes.addresses[follower]) as to_follower:
        nodes.network.delay(leader, follower, 0.3)
        creating = threading.Thread(target=lambda: to_leader.call(
            "create_queue", {"name": "fresh", "attributes": {"partitions": 1}}, timeout=20))
        creating.start()
        try:
            with Connection(nodes.addresses[leader]) as watcher:
                nodes.wait_for("the leader to apply the create",
                               lambda: "fresh" in watcher.call("list_queues", {"prefix": ""}))
            deadline = time.monotonic() + 15
            while True:
                try:
                    answer = to_follower.call("send", {"queue": "fresh", "messages": [{"body": b"x"}]}, timeout=10)
                    break
                except DmqError as exc:
                    assert not isinstance(exc, QueueNotFound), "the follower answered from its stale replica"
                    assert exc.retryable and time.monotonic() < deadline, exc
                    time.sleep(0.05)
            assert answer[0]["id"] and not answer[0]["duplicate"]
        finally:
            creating.join(30)
            nodes.network.heal()
