"""The SDK against a real 3-node cluster: every operation through Client (blocking) and AsyncClient (asyncio),
automatic batching, `with msg:` semantics, lease extension, consume(), and exactly-once sends across retries."""

from __future__ import annotations

import asyncio
import itertools
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from dmq_client import (AsyncClient, BatchError, Client, InvalidRequest, Message, MessageTooLarge, NotLeader,
                        QueueAlreadyExists, QueueFull, QueueInfo, QueueNotFound, ReceiptExpired, SendEntry, Timeout,
                        Unavailable)
from dmq_client.routing import QueueRoute
from dmq_client.testing import LocalCluster, cluster

from .lossy_relay import LossyRelay

pytestmark = pytest.mark.timeout(120)

_names = itertools.count(1)


def fresh(prefix: str = "q") -> str:
    return f"{prefix}-{next(_names)}"


@pytest.fixture(scope="module")
def dmq() -> Iterator[LocalCluster]:
    with cluster(3) as local:
        yield local


@pytest.fixture
def client(dmq: LocalCluster) -> Iterator[Client]:
    with Client(dmq.addresses) as c:
        yield c


def drain(client: Client, queue: str, expect: int, timeout: float = 15.0) -> list[bytes]:
    """Receive and delete until `expect` messages arrived (bounded), then check nothing more comes."""
    bodies: list[bytes] = []
    deadline = time.monotonic() + timeout
    while len(bodies) < expect and time.monotonic() < deadline:
        messages = client.receive(queue, max_messages=100, wait_seconds=1)
        bodies += [m.body for m in messages]
        if messages:
            client.delete_batch(queue, [m.receipt for m in messages])
    assert len(bodies) == expect, f"received {len(bodies)} of {expect}"
    assert client.receive(queue, max_messages=10, wait_seconds=0.3) == []
    return bodies


# ---------------------------------------------------------------------------------------------- queues

def test_queue_lifecycle(client: Client) -> None:
    name = fresh("life")
    info = client.create_queue(name, partitions=3, visibility_timeout_ms=5_000)
    assert isinstance(info, QueueInfo) and info.name == name and len(info.partitions) == 3
    assert info.attributes["visibility_timeout_ms"] == 5_000
    assert client.create_queue(name, partitions=3, visibility_timeout_ms=5_000).id == info.id  # idempotent
    with pytest.raises(QueueAlreadyExists):
        client.create_queue(name, partitions=2)
    assert name in client.list_queues()
    assert client.list_queues(prefix=name) == [name]
    client.send_batch(name, [b"a", b"b", b"c"])
    described = client.get_queue(name)
    assert described.stats["count"] == 3 and described.unavailable_partitions == 0
    assert client.purge_queue(name) == 3
    assert client.get_queue(name).stats["count"] == 0
    client.delete_queue(name)
    assert name not in client.list_queues()
    with pytest.raises(QueueNotFound):
        client.get_queue(name)
    with pytest.raises(QueueNotFound):
        client.send(name, b"x")


@pytest.mark.parametrize("node", [0, 1, 2])
def test_a_purge_whose_answer_is_lost_reports_every_message_once(dmq: LocalCluster, client: Client,
                                                                   node: int) -> None:
    # The node purges, the answer is lost, the SDK retries: the retry reports the first count (not 0) and keeps
    # what was sent since. Every node in turn, so some partitions are purged through a forward.
    name = fresh("lost-purge")
    client.create_queue(name, partitions=3)
    client.send_batch(name, [b"a", b"b", b"c"])
    for i in range(3):
        client.send(name, b"k%d" % i)
    with LossyRelay(dmq.addresses[node], "purge_queue") as relay, Client([relay.address]) as lossy:
        assert lossy.purge_queue(name) == 6
        assert relay.dropped == 1
    assert client.get_queue(name).stats["count"] == 0


def test_a_delete_queue_whose_answer_is_lost_succeeds(dmq: LocalCluster, client: Client) -> None:
    name = fresh("lost-delete")
    client.create_queue(name)
    with LossyRelay(dmq.addresses[0], "delete_queue") as relay, Client([relay.address]) as lossy:
        lossy.delete_queue(name)  # the retry finds the queue gone: deleted by the attempt whose answer was lost
        assert relay.dropped == 1
        with pytest.raises(QueueNotFound):
            lossy.delete_queue(name)  # a first attempt that finds no queue still says so
    assert name not in client.list_queues()
    with socket.socket() as probe:  # a port nobody listens on: attempts there send nothing
        probe.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{probe.getsockname()[1]}"
    with Client([dead, dead, dmq.addresses[0]]) as unlucky:
        with pytest.raises(QueueNotFound):
            unlucky.delete_queue(name)  # refused connections first: still no queue to delete


def test_recreated_queue_is_found_again(client: Client) -> None:
    name = fresh("again")
    client.create_queue(name, partitions=1)
    client.send(name, b"old")
    client.delete_queue(name)
    client.create_queue(name, partitions=2)  # another id and partition count: the client's cache is stale
    client.send_batch(name, [b"n1", b"n2", b"n3"])
    assert sorted(drain(client, name, 3)) == [b"n1", b"n2", b"n3"]


def test_a_partition_seen_leaderless_gets_traffic_again(dmq: LocalCluster) -> None:
    """A lookup answered mid-election names a partition without a leader; unkeyed sends skip it, and succeed
    elsewhere, so no error would ever refresh the route: the router looks it up again on its own."""
    async def scenario() -> None:
        async with AsyncClient(dmq.addresses) as c:
            name = fresh("leaderless")
            await c.create_queue(name, partitions=3)
            route = await c._router.route(name)
            route.leaders[1] = None  # as a lookup during an election would have answered
            partitions: set[str] = set()
            deadline = time.monotonic() + 10
            while "1" not in partitions and time.monotonic() < deadline:
                message_id = await c.send(name, b"x")
                partitions.add(message_id.split(".")[0])
                await asyncio.sleep(0.05)
            assert "1" in partitions, f"sends went only to partitions {sorted(partitions)}"
    asyncio.run(scenario())


def test_a_stale_leader_in_the_route_is_corrected_by_the_node_that_forwards(dmq: LocalCluster) -> None:
    """Leadership moves after a lookup (the cluster hands it to preferred replicas after a create): the node the
    client still asks forwards, and names the leader in its answer, so the next request goes straight there."""
    async def scenario() -> None:
        async with AsyncClient(dmq.addresses) as c:
            name = fresh("stale-leader")
            await c.create_queue(name, partitions=2)
            deadline = time.monotonic() + 15
            while True:  # settled: partition 0 led by its preferred replica, where the rebalancer leaves it
                description = await c._router.call_any("lookup", {"name": name})
                first = description["partitions"][0]
                if first["leader"] == first["replicas"][0] or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.05)
            route = await c._router.route(name, refresh=True)
            leader = route.leaders[0]
            assert leader is not None and leader == first["replicas"][0]
            route.leaders[0] = next(address for address in dmq.addresses if address != leader)
            await c._router.on_partition(name, 0, "send", {"queue": name, "partition": 0,
                                                           "messages": [{"body": b"x"}]})
            now = (await c._router.route(name, refresh=True)).leaders[0]
            assert route.leaders[0] == now, f"the client still sends partition 0 to {route.leaders[0]}, not {now}"
    asyncio.run(scenario())


def test_a_route_ignores_malformed_leader_hints() -> None:
    route = QueueRoute("q", 1, {}, ["a:1", "b:2"])
    route.learn_leaders([[0, "c:3"], [2, "d:4"], [-1, "e:5"], ["1", "f:6"], [1, 7], [True, "g:8"], [1], "h:9"])
    route.learn_leaders({1: "i:10"})
    assert route.leaders == ["c:3", "b:2"]


# ---------------------------------------------------------------------------------------------- messages

def test_send_receive_delete_round_trip(client: Client) -> None:
    name = fresh("round")
    client.create_queue(name, partitions=2)
    first = client.send(name, b"hello", attributes={"kind": "greeting", "n": 7, "raw": b"\x00"})
    assert first is not None and "." in first
    (message,) = client.receive(name, max_messages=10, wait_seconds=2)
    assert (message.id, message.body, message.receive_count) == (first, b"hello", 1)
    assert message.attributes == {"kind": "greeting", "n": 7, "raw": b"\x00"}
    assert message.queue == name and message.enqueued_at > 0
    message.delete()
    assert client.receive(name, wait_seconds=0.3) == []
    assert client.send(name, "text body") is not None  # str bodies travel as UTF-8
    assert drain(client, name, 1) == [b"text body"]


def test_send_batch_entries_and_errors(client: Client) -> None:
    name = fresh("batch")
    client.create_queue(name, partitions=3, max_message_bytes=64, max_messages=30)
    ids = client.send_batch(name, [b"a", "b", SendEntry(b"c", attributes={"k": "v"}),
                                   {"body": b"d", "dedup_id": "d-1"}])
    assert len(ids) == 4 and len(set(ids)) == 4 and all(ids)
    assert client.send_batch(name, [{"body": b"d", "dedup_id": "d-1"}]) == [ids[3]]  # deduplicated
    with pytest.raises(MessageTooLarge):
        client.send(name, b"x" * 100)
    # each partition holds 10; unkeyed messages of one batch go to one partition, so 40 more partly fail
    with pytest.raises(BatchError) as failed:
        client.send_batch(name, [b"f%d" % i for i in range(40)])
    errors = failed.value.errors
    assert errors and all(isinstance(e, QueueFull) for e in errors.values())
    accepted = sum(1 for r in failed.value.results if isinstance(r, str))
    assert accepted == 40 - len(errors) and accepted <= 10
    assert client.get_queue(name).stats["count"] == 4 + accepted
    with pytest.raises(TypeError):
        client.send_batch(name, [{"bodies": b"x"}])
    assert client.send_batch(name, []) == []


def test_delay_and_visibility_timeout(client: Client) -> None:
    name = fresh("delay")
    client.create_queue(name)
    client.send(name, b"later", delay=1.0)
    assert client.receive(name, wait_seconds=0.3) == []
    (message,) = client.receive(name, wait_seconds=3)
    assert message.body == b"later"
    # a short visibility timeout: not deleted, it comes back with a higher receive count
    client.send(name, b"again")
    (first,) = client.receive(name, wait_seconds=2, visibility_timeout=0.5)
    (second,) = client.receive(name, wait_seconds=3)
    assert second.id == first.id and second.receive_count == first.receive_count + 1
    with pytest.raises(BatchError) as stale:
        client.delete_batch(name, [first.receipt])
    assert isinstance(stale.value.errors[0], ReceiptExpired)
    second.delete()
    message.delete()


def test_update_queue_changes_a_live_queue_and_keeps_its_messages(client: Client) -> None:
    name, dlq = fresh("upd"), fresh("upd-dlq")
    client.create_queue(dlq)
    created = client.create_queue(name, partitions=2, max_message_bytes=1_000, visibility_timeout_ms=30_000)
    client.send_batch(name, [b"old-%d" % i for i in range(4)])
    client.send(name, b"x" * 500)  # fits the limit it was created with
    info = client.update_queue(name, max_message_bytes=100, visibility_timeout_ms=1_000, dead_letter_queue=dlq,
                               max_receives=1)
    assert info.id == created.id and len(info.partitions) == 2
    assert {k: info.attributes[k] for k in ("max_message_bytes", "visibility_timeout_ms", "dead_letter_queue",
                                            "max_receives")} == {"max_message_bytes": 100,
                                                                 "visibility_timeout_ms": 1_000,
                                                                 "dead_letter_queue": dlq, "max_receives": 1}
    assert client.get_queue(name).attributes == info.attributes
    assert client.update_queue(name, max_message_bytes=100).attributes == info.attributes  # no change: no-op

    sent_late = 0

    def refused_as_too_large() -> bool:  # each partition applies the change within about a second
        nonlocal sent_late
        try:
            client.send(name, b"y" * 500)
        except MessageTooLarge:
            return True
        sent_late += 1
        return False

    deadline = time.monotonic() + 10
    refusals = 0
    while refusals < 4 and time.monotonic() < deadline:  # several in a row: sends spread over both partitions
        refusals = refusals + 1 if refused_as_too_large() else 0
    assert refusals == 4
    # Every message sent before is still there. Received and not deleted, each is dead-lettered when its new
    # 1 s lease runs out (max_receives 1).
    held: list[Message] = []
    deadline = time.monotonic() + 10
    while len(held) < 5 + sent_late and time.monotonic() < deadline:
        held += client.receive(name, max_messages=10, wait_seconds=1)
    bodies = sorted(m.body for m in held)
    assert bodies == sorted([b"old-%d" % i for i in range(4)] + [b"x" * 500] + [b"y" * 500] * sent_late)
    assert {m.visibility_timeout for m in held} == {1.0}
    moved: list[bytes] = []
    deadline = time.monotonic() + 15
    while len(moved) < len(held) and time.monotonic() < deadline:
        batch = client.receive(dlq, max_messages=10, wait_seconds=1)
        moved += [m.body for m in batch]
        if batch:
            client.delete_batch(dlq, [m.receipt for m in batch])
    assert sorted(moved) == bodies

    cleared = client.update_queue(name, dead_letter_queue=None, max_receives=None)
    assert "max_receives" not in cleared.attributes and cleared.attributes["dead_letter_queue"] is None
    with pytest.raises(QueueAlreadyExists):  # create compares with the attributes as they are now
        client.create_queue(name, partitions=2, max_message_bytes=1_000, visibility_timeout_ms=30_000)
    with pytest.raises(InvalidRequest, match="'partitions'"):
        client.update_queue(name, partitions=3)
    with pytest.raises(InvalidRequest, match="'dead_letter_queue'"):
        client.update_queue(name, max_receives=2)  # a dead-letter queue is needed, and it has none now
    with pytest.raises(InvalidRequest, match="its own"):
        client.update_queue(name, dead_letter_queue=name, max_receives=2)
    with pytest.raises(QueueNotFound):
        client.update_queue(name, dead_letter_queue=fresh("nowhere"), max_receives=2)
    with pytest.raises(QueueNotFound):
        client.update_queue(fresh("missing"), delay_ms=1)


def test_a_receive_leases_for_what_the_client_times_its_extensions_by(dmq: LocalCluster, client: Client) -> None:
    """A client whose copy of the queue's attributes predates an update_queue asks for the visibility timeout it
    knows, so the node's lease and the client's lease keeper agree; it sees the update at its next lookup."""
    name = fresh("stale")
    client.create_queue(name, visibility_timeout_ms=20_000)
    with Client(dmq.addresses) as other:
        other.send(name, b"first")  # caches the route, with the 20 s timeout
        client.update_queue(name, visibility_timeout_ms=2_000)
        with dmq.connect(0) as raw:
            def lease_of_a_plain_receive() -> float:  # a receive without a timeout gets the queue's
                [received] = raw.call("receive", {"queue": name, "wait_ms": 2_000})
                (peeked,) = client.peek(name)
                raw.call("change_visibility", {"queue": name, "entries": [[received["receipt"], 0]]})
                return peeked.visible_at - time.time() * 1000

            deadline = time.monotonic() + 10
            while lease_of_a_plain_receive() > 5_000 and time.monotonic() < deadline:
                time.sleep(0.1)
            assert lease_of_a_plain_receive() <= 5_000, "the partition did not apply the update"
        (message,) = other.receive(name, wait_seconds=2)
        assert message.visibility_timeout == 20.0
        (peeked,) = client.peek(name)
        assert peeked.state == "in_flight" and peeked.visible_at - time.time() * 1000 > 10_000
        message.delete()
        other._async._router.forget(name)  # what its next lookup (at most 30 s later) does
        other.send(name, b"second")
        (message,) = other.receive(name, wait_seconds=2)
        assert message.visibility_timeout == 2.0
        message.delete()


def test_peek_shows_messages_in_every_state_without_receiving_them(dmq: LocalCluster, client: Client) -> None:
    name = fresh("peek")
    client.create_queue(name, partitions=3)
    for i in range(6):  # one request each, so they spread over the partitions, at distinct enqueue times
        client.send(name, b"m%d" % i)
        time.sleep(0.005)
    client.send(name, b"later", delay=60)
    peeked = client.peek(name, max_messages=10)
    assert [m.body for m in peeked] == [b"m0", b"m1", b"m2", b"m3", b"m4", b"m5", b"later"]  # oldest first
    assert len({m.id.split(".")[0] for m in peeked}) == 3  # from every partition
    assert [(m.state, m.visible_at, m.receive_count) for m in peeked[:6]] == [("ready", None, 0)] * 6
    assert peeked[6].state == "delayed" and peeked[6].visible_at == peeked[6].enqueued_at + 60_000
    assert not hasattr(peeked[0], "receipt")

    (leased,) = client.receive(name, visibility_timeout=30)

    def counts() -> tuple[int, ...]:
        stats = client.get_queue(name).stats
        return tuple(stats[key] for key in ("count", "ready", "in_flight", "delayed"))

    assert counts() == (7, 5, 1, 1)
    again = {m.id: m for m in client.peek(name, max_messages=10)}
    assert list(again) == [m.id for m in peeked]
    assert again[leased.id].state == "in_flight" and again[leased.id].receive_count == 1
    assert again[leased.id].visible_at is not None and again[leased.id].visible_at >= time.time() * 1000 + 25_000
    assert [m.body for m in client.peek(name, max_messages=2)] == [b"m0", b"m1"]
    partition = int(leased.id.split(".")[0])
    assert {m.id.split(".")[0] for m in client.peek(name, partition=partition)} == {str(partition)}
    pages, last = [], None  # page through each partition, one message at a time
    for p in range(3):
        last = None
        for _ in range(10):
            page = client.peek(name, max_messages=1, partition=p, after=last)
            if not page:
                break
            pages += page
            last = page[0].id
    assert sorted(m.id for m in pages) == sorted(again)
    for address in dmq.addresses:  # the same answer through every node: partitions it does not lead are forwarded
        with Client([address]) as one:
            assert [m.id for m in one.peek(name, max_messages=10)] == list(again)
    assert counts() == (7, 5, 1, 1)  # peeks lease nothing ...
    received = client.receive(name, max_messages=10)
    assert sorted(m.receive_count for m in received) == [1] * 5  # ... and count no delivery
    with pytest.raises(QueueNotFound):
        client.peek(fresh("missing"))
    with pytest.raises(InvalidRequest):
        client.peek(name, partition=3)
    with pytest.raises(ValueError):
        client.peek(name, max_messages=0)
    with pytest.raises(ValueError):
        client.peek(name, after="not-an-id")
    with pytest.raises(ValueError):
        client.peek(name, partition=0, after="1.1")


def one_per_partition(dmq: LocalCluster, queue: str, bodies: list[bytes]) -> None:
    """Body i on partition i, named in the protocol's `partition`. Unkeyed SDK sends go to any partition with a
    known leader, so right after a create, while leaders move to their preferred replicas, two may land on one.
    Retried on the errors of a leader change, under a dedup id."""
    with dmq.connect(0) as conn:
        for partition, body in enumerate(bodies):
            message = {"body": body, "dedup_id": f"{queue}-{partition}"}
            deadline = time.monotonic() + 10
            while True:
                try:
                    [result] = conn.call("send", {"queue": queue, "partition": partition, "messages": [message]})
                    break
                except (Unavailable, NotLeader, Timeout):
                    if time.monotonic() >= deadline:
                        raise
                    time.sleep(0.05)
            assert "error" not in result, result


def test_a_peek_answer_keeps_to_its_byte_budget_over_partitions(dmq: LocalCluster, client: Client) -> None:
    """Each partition's share of the 3 MiB budget (768 KiB of 4) is smaller than one of these messages, and a
    partition always gives its first: the merged answer must still fit a frame (4 MiB), so it is cut."""
    name = fresh("bigpeek")
    client.create_queue(name, partitions=4, max_message_bytes=1 << 20)
    one_per_partition(dmq, name, [bytes([65 + i]) * 1_000_000 for i in range(4)])
    assert [len(client.peek(name, max_messages=10, partition=p)) for p in range(4)] == [1, 1, 1, 1]
    shown = client.peek(name, max_messages=10)
    assert len(shown) == 3 and all(len(m.body) == 1_000_000 for m in shown)
    client.delete_queue(name)


def test_a_receive_over_partitions_keeps_its_answer_within_a_frame(dmq: LocalCluster, client: Client) -> None:
    """Each of 8 partitions' share of the 3 MiB budget (384 KiB) is smaller than one of these messages, and a
    partition always gives its first: 8 of them (4.8 MB) would not fit the 4 MiB frame, and the leased messages
    would be lost to the caller until their visibility timeout. What is left of the whole budget bounds it."""
    name = fresh("bigreceive")
    client.create_queue(name, partitions=8, max_message_bytes=1 << 20)
    one_per_partition(dmq, name, [bytes([65 + i]) * 600_000 for i in range(8)])
    assert [len(client.peek(name, partition=p)) for p in range(8)] == [1] * 8
    received = client.receive(name, max_messages=100)
    assert 5 <= len(received) <= 6 and all(len(m.body) == 600_000 for m in received)
    client.delete_batch(name, [m.receipt for m in received])
    assert len(drain(client, name, 8 - len(received))) == 8 - len(received)
    client.delete_queue(name)


def test_fifo_groups_keep_order(client: Client) -> None:
    name = fresh("fifo")
    client.create_queue(name, partitions=3, fifo=True)
    for i in range(10):
        client.send_batch(name, [SendEntry(b"a%d" % i, group="a"), SendEntry(b"b%d" % i, group="b")])
    seen: dict[str, list[bytes]] = {"a": [], "b": []}
    deadline = time.monotonic() + 15
    while sum(map(len, seen.values())) < 20 and time.monotonic() < deadline:
        for message in client.receive(name, max_messages=10, wait_seconds=1):
            seen[message.group or ""].append(message.body)
            message.delete()
    assert seen == {"a": [b"a%d" % i for i in range(10)], "b": [b"b%d" % i for i in range(10)]}


def test_with_message_deletes_on_success_and_releases_on_error(client: Client) -> None:
    name = fresh("with")
    client.create_queue(name, visibility_timeout_ms=30_000)
    client.send(name, b"job")
    (message,) = client.receive(name, wait_seconds=2)
    with pytest.raises(RuntimeError):
        with message:
            raise RuntimeError("handler failed")
    # released: receivable again at once (not after 30 s), as a second delivery
    (again,) = client.receive(name, wait_seconds=2)
    assert again.id == message.id and again.receive_count == 2
    with again:
        pass
    assert client.receive(name, wait_seconds=0.5) == []
    assert client.get_queue(name).stats["count"] == 0


def test_extend_and_release(client: Client) -> None:
    name = fresh("extend")
    client.create_queue(name)
    client.send(name, b"m")
    (message,) = client.receive(name, wait_seconds=2, visibility_timeout=1)
    message.extend(3)
    time.sleep(1.5)
    assert client.receive(name, wait_seconds=0) == []  # the extension holds it past its first second
    message.release()
    (again,) = client.receive(name, wait_seconds=2)
    assert again.id == message.id
    again.delete()


def test_lease_keeper_keeps_a_slow_handler_invisible(dmq: LocalCluster, client: Client) -> None:
    name = fresh("lease")
    client.create_queue(name)
    client.send(name, b"slow")
    (message,) = client.receive(name, wait_seconds=2, visibility_timeout=1)
    stolen: list[Any] = []

    def other_worker() -> None:
        with Client(dmq.addresses) as other:
            deadline = time.monotonic() + 3.5
            while time.monotonic() < deadline:
                stolen.extend(other.receive(name, wait_seconds=0.5))

    thief = threading.Thread(target=other_worker)
    with message:  # a 3.5 s handler on a 1 s lease
        thief.start()
        thief.join(10)
    assert not thief.is_alive()
    assert stolen == [], "the lease keeper let another worker receive a message still being handled"
    assert not message.lease_lost
    assert client.receive(name, wait_seconds=1.5) == []  # and the block's success deleted it


def test_concurrent_sends_and_deletes_are_batched(client: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    name = fresh("auto")
    client.create_queue(name, partitions=2)
    requests: list[int] = []
    inner = client._async
    original = inner._send_request

    async def counting(queue: str, partition: int, messages: list[dict[str, Any]]) -> list[Any]:
        requests.append(len(messages))
        return await original(queue, partition, messages)

    monkeypatch.setattr(inner, "_send_request", counting)
    start = threading.Barrier(40)
    ids: list[str | None] = []

    def producer(i: int) -> None:
        start.wait(10)
        for j in range(10):
            ids.append(client.send(name, b"%d-%d" % (i, j)))

    threads = [threading.Thread(target=producer, args=(i,)) for i in range(40)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(ids) == 400 and len(set(ids)) == 400
    assert sum(requests) == 400
    assert len(requests) < 400, "400 concurrent sends travelled as 400 requests: nothing was batched"
    assert sorted(drain(client, name, 400)) == sorted(b"%d-%d" % (i, j) for i in range(40) for j in range(10))


def test_a_lost_answer_is_retried_without_a_duplicate(client: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    """The first attempt commits but its answer never arrives (a timeout): the retry must not enqueue again."""
    name = fresh("lost-answer")
    client.create_queue(name, partitions=2)
    router = client._async._router
    original = router.answer
    dropped: list[str] = []

    async def drop_first_send_answer(address: str, op: str, args: dict[str, Any], timeout: float | None = None) -> Any:
        answer = await original(address, op, args, timeout)
        if op == "send" and not dropped:
            dropped.append(args["batch_id"])
            raise Timeout("the answer was lost on the way back")
        return answer

    monkeypatch.setattr(router, "answer", drop_first_send_answer)
    ids = client.send_batch(name, [b"once-1", b"once-2", b"once-3"])
    assert dropped and len(ids) == 3
    monkeypatch.setattr(router, "answer", original)
    assert sorted(drain(client, name, 3)) == [b"once-1", b"once-2", b"once-3"]


def test_consume_handles_everything_and_stops(client: Client) -> None:
    name = fresh("consume")
    client.create_queue(name, partitions=2)
    client.send_batch(name, [b"%d" % i for i in range(60)])
    handled: list[bytes] = []
    failed_once: set[bytes] = set()
    lock = threading.Lock()
    stop = threading.Event()

    def handler(message: Any) -> None:
        if message.body in (b"7", b"8") and message.body not in failed_once:
            failed_once.add(message.body)
            raise ValueError("first attempt fails")  # released, then handled again
        with lock:
            handled.append(message.body)
            if len(handled) == 60:
                stop.set()

    count = client.consume(name, handler, concurrency=4, wait_seconds=0.5, stop=stop, handle_signals=False)
    assert count == 60
    assert sorted(handled) == sorted(b"%d" % i for i in range(60))
    assert client.get_queue(name).stats["count"] == 0


def test_invalid_arguments_fail_before_the_network(dmq: LocalCluster) -> None:
    with pytest.raises(ValueError):
        Client(["no-port"])
    with Client(dmq.addresses) as c:
        with pytest.raises(ValueError):
            c.receive("anything", max_messages=0)
        with pytest.raises(TypeError):
            c.send("anything", 12345)  # type: ignore[arg-type]
        with pytest.raises(InvalidRequest):
            c.create_queue(fresh("bad"), partitions=0)


# ---------------------------------------------------------------------------------------------- asyncio

def test_async_client_every_operation(dmq: LocalCluster) -> None:
    async def scenario() -> None:
        async with AsyncClient(dmq.addresses) as c:
            name = fresh("async")
            info = await c.create_queue(name, partitions=2)
            assert name in await c.list_queues() and info.name == name
            ids = await asyncio.gather(*(c.send(name, b"m%d" % i) for i in range(50)))
            assert len(set(ids)) == 50
            assert len(await c.send_batch(name, [b"b1", b"b2"])) == 2
            assert (await c.get_queue(name)).stats["count"] == 52
            assert (await c.update_queue(name, delay_ms=0, receive_wait_ms=100)).attributes["receive_wait_ms"] == 100
            assert len(await c.peek(name, max_messages=100)) == 52
            got: list[bytes] = []
            for _ in range(100):
                if len(got) == 52:
                    break
                for message in await c.receive(name, max_messages=20, wait_seconds=1):
                    async with message:
                        got.append(message.body)
            assert sorted(got) == sorted([b"m%d" % i for i in range(50)] + [b"b1", b"b2"])
            await c.send(name, b"fails")
            (message,) = await c.receive(name, wait_seconds=2)
            with pytest.raises(KeyError):
                async with message:
                    raise KeyError("boom")
            (again,) = await c.receive(name, wait_seconds=2)
            assert again.id == message.id and again.receive_count == 2
            await again.extend(5)
            await again.release()
            (third,) = await c.receive(name, wait_seconds=2)
            await c.delete_batch(name, [third.receipt])
            await c.send(name, b"purge me")
            assert await c.purge_queue(name) == 1
            status = await c.cluster_status()
            assert len(status["nodes"]) == 3 and status["metadata_leader"]
            await c.delete_queue(name)
            with pytest.raises(QueueNotFound):
                await c.get_queue(name)
    asyncio.run(scenario())


def test_async_consume_drains_on_stop(dmq: LocalCluster) -> None:
    async def scenario() -> None:
        async with AsyncClient(dmq.addresses) as c:
            name = fresh("aconsume")
            await c.create_queue(name)
            await c.send_batch(name, [b"%d" % i for i in range(20)])
            stop = asyncio.Event()
            done: list[bytes] = []

            async def handler(message: Any) -> None:
                await asyncio.sleep(0.05)
                done.append(message.body)
                if len(done) == 10:
                    stop.set()  # the handlers already running finish; nothing new is taken

            count = await c.consume(name, handler, concurrency=3, wait_seconds=0.5, stop=stop,
                                    handle_signals=False)
            assert count == len(done) and 10 <= count <= 13
            left = (await c.get_queue(name)).stats["count"]
            assert left == 20 - count  # drained work is deleted, the rest is still queued
    asyncio.run(scenario())


INTERRUPTED = """
import signal, sys, threading, time
from dmq_client import Client

signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with SIGINT ignored
with Client(sys.argv[1].split(",")) as client:
    client.create_queue(sys.argv[2])
    # The kernel may hand a process's SIGINT to any thread; here it goes to the client's loop thread on purpose.
    threading.Timer(0.5, signal.pthread_kill, (client._thread.ident, signal.SIGINT)).start()
    started = time.monotonic()
    try:
        client.receive(sys.argv[2], wait_seconds=20)
    except KeyboardInterrupt:
        print("interrupted after %.1f s" % (time.monotonic() - started), flush=True)
"""


def test_ctrl_c_during_a_long_poll_is_not_deferred_to_its_end(dmq: LocalCluster, tmp_path: Any) -> None:
    """A blocking call wakes the main thread now and then, so a SIGINT that the kernel delivered to another
    thread still interrupts it at once instead of when the long poll ends."""
    import subprocess
    import sys

    script = tmp_path / "interrupted.py"
    script.write_text(INTERRUPTED)
    done = subprocess.run([sys.executable, str(script), ",".join(dmq.addresses), fresh("ctrlc")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    seconds = float(done.stdout.split()[2])
    assert seconds < 3.0, done.stdout


WORKER = """
import sys, time
from dmq_client import Client

addresses, queue = sys.argv[1].split(","), sys.argv[2]
with Client(addresses) as client:
    def handler(message):
        print("start", message.body.decode(), flush=True)
        time.sleep(1.0)
    handled = client.consume(queue, handler, concurrency=2, wait_seconds=0.5)
    print("handled", handled, flush=True)
"""


def test_consume_drains_gracefully_on_sigterm(dmq: LocalCluster, client: Client, tmp_path: Any) -> None:
    import os
    import signal
    import subprocess
    import sys

    name = fresh("sigterm")
    client.create_queue(name)
    client.send_batch(name, [b"%d" % i for i in range(10)])
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    proc = subprocess.Popen([sys.executable, str(script), ",".join(dmq.addresses), name],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ))
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # a handler is running
        assert line.startswith("start"), line + proc.stderr.read() if proc.stderr else line
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        out = line + proc.stdout.read()  # not communicate(): it would skip what readline() buffered
        err = proc.stderr.read() if proc.stderr else ""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    handled = int(out.strip().splitlines()[-1].split()[1])
    started = out.count("start")
    assert 1 <= handled == started <= 4, out  # the running handlers finished; no new work was taken
    stats = client.get_queue(name).stats
    assert stats["count"] == 10 - handled and stats["in_flight"] == 0, stats  # nothing left leased
