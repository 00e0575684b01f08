"""Sends keep their exactly-once promise across a partition leader's SIGKILL: the SDK retries each request with
the same batch id, so a request whose first attempt committed before the leader died is not enqueued twice."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

from dmq_client import Client, PartitionInfo
from dmq_client.testing import cluster

pytestmark = pytest.mark.timeout(180)


def test_sends_across_a_leader_kill_enqueue_exactly_once() -> None:
    with cluster(3) as dmq, Client(dmq.addresses, retry_seconds=60) as client:
        client.create_queue("failover", partitions=1)
        # A new partition moves to its preferred replica within its first second: kill a leader after that
        # handover, not the replica that is just handing over (a leader read mid-handover is None).
        _led_by(client, "failover", lambda p: p.leader == p.replicas[0], timeout=15)
        acknowledged: list[bytes] = []
        errors: list[BaseException] = []
        stop = threading.Event()

        def producer(worker: int) -> None:
            try:
                for i in range(100_000):
                    if stop.is_set():
                        return
                    body = b"%d-%d" % (worker, i)
                    client.send("failover", body)
                    acknowledged.append(body)
            except BaseException as exc:  # reported below
                errors.append(exc)

        threads = [threading.Thread(target=producer, args=(w,)) for w in range(8)]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 30
        while len(acknowledged) < 300 and time.monotonic() < deadline:
            time.sleep(0.02)
        victim = dmq.addresses.index(_led_by(client, "failover", lambda p: p.leader is not None, timeout=15))
        dmq.kill(victim)
        killed_at = len(acknowledged)
        while len(acknowledged) < killed_at + 300 and time.monotonic() < deadline + 30 and not errors:
            time.sleep(0.02)
        stop.set()
        for thread in threads:
            thread.join(60)
        assert not errors, errors
        assert len(acknowledged) >= killed_at + 300, "sends did not go on after the leader's kill"
        dmq.start(victim)
        dmq.wait_ready()

        received: list[bytes] = []
        deadline = time.monotonic() + 60
        while len(received) < len(acknowledged) and time.monotonic() < deadline:
            messages = client.receive("failover", max_messages=100, wait_seconds=1)
            received += [m.body for m in messages]
            if messages:
                client.delete_batch("failover", [m.receipt for m in messages])
        assert client.receive("failover", max_messages=100, wait_seconds=1) == []
        assert sorted(received) == sorted(acknowledged), (
            f"{len(set(acknowledged) - set(received))} acknowledged sends lost, "
            f"{len(received) - len(set(received))} enqueued twice")


def test_queue_stats_wait_for_a_new_leader_and_leave_out_a_partition_without_one() -> None:
    with cluster(3) as dmq, Client(dmq.addresses) as client:
        client.create_queue("stats", partitions=1)
        first = _led_by(client, "stats", lambda p: p.leader == p.replicas[0], timeout=15)
        client.send_batch("stats", [b"a", b"b", b"c"])
        dmq.kill(dmq.addresses.index(first))
        # Asked at once, the survivors still know the dead leader: the answer waits for the election.
        survivors = [address for address in dmq.addresses if address != first]
        with Client(survivors) as direct:
            described = direct.get_queue("stats")
            assert (described.unavailable_partitions, described.stats.get("count")) == (0, 3)
            second = _led_by(direct, "stats", lambda p: p.leader in survivors, timeout=15)
        dmq.kill(dmq.addresses.index(second))
        # Without a majority the partition has no leader to come: it is left out, and said to be.
        last = next(address for address in survivors if address != second)
        with Client([last]) as alone:
            described = alone.get_queue("stats")
            assert (described.unavailable_partitions, described.stats) == (1, {})


def _led_by(client: Client, queue: str, wanted: Callable[[PartitionInfo], bool], timeout: float) -> str:
    """The leader of the queue's partition 0 once `wanted` holds for it (bounded)."""
    deadline = time.monotonic() + timeout
    while True:
        partition = client.get_queue(queue).partitions[0]
        if partition.leader is not None and wanted(partition):
            return partition.leader
        assert time.monotonic() < deadline, f"partition 0 of {queue}: {partition}"
        time.sleep(0.05)
