"""A real three-node cluster started from the shipped config/node*.toml (ports moved, data under tmp_path),
driven only through the client protocol (dmq_client.connection.Connection) and the metrics endpoint.

Most tests share one module-scoped cluster and use queues of their own; the auth tests run their own cluster
with principals, and the failover test a fresh one it may break.
"""

from __future__ import annotations

import os
import random
import re
import socket
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import msgpack
import pytest
from prometheus_client.parser import text_string_to_metric_families
from rocksdict import AccessType, Options, ReadOptions, Rdict

from dmq_client import protocol
from dmq_client.connection import Connection
from dmq_client.errors import (DmqError, Forbidden, MessageTooLarge, QueueAlreadyExists, QueueNotFound,
                               Unauthorized, Unavailable)
from dmq_server.raft.log import group_keys
from dmq_server.store import PartitionStore

from .nodes import ADMIN_TOKEN, CONSUMER_TOKEN, PRODUCER_TOKEN, Cluster

pytestmark = pytest.mark.timeout(120)

T = TypeVar("T")
SETTLE_SECONDS = 15.0


# ---------------------------------------------------------------------------------------------- helpers

def eventually(check: Callable[[], T], timeout: float, what: str, interval: float = 0.1) -> T:
    """check() until it returns a truthy value without raising; fail naming `what` and the last outcome."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            value = check()
            if value:
                return value
            last = value
        except (DmqError, AssertionError, OSError) as exc:
            last = exc
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what}: not within {timeout} s; last outcome: {last!r}")
        time.sleep(interval)


def settled(conn: Connection, name: str) -> dict[str, Any]:
    """The queue's description once every partition is led by its preferred replica (the first one listed)."""
    def check() -> dict[str, Any] | None:
        queue = conn.call("lookup", {"name": name})
        return queue if all(p["leader"] == p["replicas"][0] for p in queue["partitions"]) else None
    return eventually(check, SETTLE_SECONDS, f"partitions of {name} led by their preferred replicas")


def create(conns: list[Connection], name: str, attributes: dict[str, Any] | None = None) -> dict[str, Any]:
    """Create a queue and wait until every node sees its partitions led where placement wants them."""
    description = conns[0].call("create_queue", {"name": name, "attributes": attributes or {}})
    for conn in conns:
        settled(conn, name)
    return description


def send(conn: Connection, queue: str, *bodies: bytes, **fields: Any) -> list[dict[str, Any]]:
    results = conn.call("send", {"queue": queue, "messages": [{"body": b, **fields} for b in bodies]})
    assert all("error" not in r for r in results), results
    return results


def receive_all(conns: list[Connection], queue: str, count: int, timeout: float = 10.0,
                **args: Any) -> list[dict[str, Any]]:
    """Exactly `count` messages, received round robin over `conns`, then nothing more."""
    got: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    turn = 0
    while len(got) < count and time.monotonic() < deadline:
        conn = conns[turn % len(conns)]
        turn += 1
        got += conn.call("receive", {"queue": queue, "max_messages": count - len(got), "wait_ms": 200, **args})
    assert len(got) == count, f"received {len(got)} of {count} messages of {queue}: {got}"
    assert conns[0].call("receive", {"queue": queue, "max_messages": 10, "wait_ms": 0}) == []
    return got


def scrape(address: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Sample name -> [(labels, value)] from a node's /metrics."""
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as response:
        text = response.read().decode()
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return samples


def total(scrapes: list[dict[str, list[tuple[dict[str, str], float]]]], name: str, **labels: str) -> float:
    return sum(value for samples in scrapes for sample_labels, value in samples.get(name, ())
               if all(sample_labels.get(k) == v for k, v in labels.items()))


# ---------------------------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    nodes = Cluster(tmp_path_factory.mktemp("cluster"))
    try:
        nodes.start_all()
        yield nodes
    finally:
        nodes.close()


@pytest.fixture(scope="module")
def conns(cluster: Cluster) -> Iterator[list[Connection]]:
    opened = [cluster.connect(i) for i in range(len(cluster))]
    yield opened
    for conn in opened:
        conn.close()


@pytest.fixture
def fresh_cluster(tmp_path: Path) -> Iterator[Cluster]:
    nodes = Cluster(tmp_path)
    try:
        nodes.start_all()
        yield nodes
    finally:
        nodes.close()


# ---------------------------------------------------------------------------------------------- operations

def test_create_queue_attributes_idempotence_and_conflicts(cluster: Cluster, conns: list[Connection]) -> None:
    attributes = {"partitions": 2, "visibility_timeout_ms": 15_000, "max_message_bytes": 1024,
                  "retention_ms": 3_600_000, "receive_wait_ms": 0}
    created = create(conns, "ops-attrs", attributes)
    assert created["name"] == "ops-attrs"
    for name, value in attributes.items():
        assert created["attributes"][name] == value
    assert created["attributes"]["replication"] == 3
    assert len(created["partitions"]) == 2
    assert all(sorted(p["replicas"]) == sorted(cluster.client_addresses) for p in created["partitions"])

    again = conns[1].call("create_queue", {"name": "ops-attrs", "attributes": attributes})  # forwarded
    assert again["id"] == created["id"]
    with pytest.raises(QueueAlreadyExists):
        conns[2].call("create_queue", {"name": "ops-attrs", "attributes": {**attributes,
                                                                            "visibility_timeout_ms": 20_000}})
    with pytest.raises(QueueAlreadyExists):
        conns[0].call("create_queue", {"name": "ops-attrs", "attributes": {**attributes, "partitions": 3}})

    for conn in conns:
        assert "ops-attrs" in conn.call("list_queues", {})
        assert conn.call("list_queues", {"prefix": "ops-attr"}) == ["ops-attrs"]
        looked_up = conn.call("lookup", {"name": "ops-attrs"})
        assert looked_up["id"] == created["id"]
        assert [p["replicas"] for p in looked_up["partitions"]] == [p["replicas"] for p in created["partitions"]]
    with pytest.raises(QueueNotFound):
        conns[1].call("lookup", {"name": "ops-missing"})
    # The attributes are in force: max_message_bytes.
    with pytest.raises(MessageTooLarge):
        conns[1].call("send", {"queue": "ops-attrs", "messages": [{"body": b"x" * 2000}], "partition": 0})


def test_send_batch_dedup_and_receive_on_another_node(conns: list[Connection]) -> None:
    create(conns, "ops-msg")
    sent = conns[0].call("send", {"queue": "ops-msg", "messages": [
        {"body": b"one", "attributes": {"kind": "a", "n": 1}},
        {"body": "two"},
        {"body": b"three", "dedup_id": "dedup-3"},
    ]})
    assert [r["duplicate"] for r in sent] == [False, False, False]
    assert len({r["id"] for r in sent}) == 3
    again = conns[1].call("send", {"queue": "ops-msg", "messages": [{"body": b"other", "dedup_id": "dedup-3"}]})
    assert again == [{"id": sent[2]["id"], "duplicate": True}]

    received = conns[2].call("receive", {"queue": "ops-msg", "max_messages": 10, "wait_ms": 1000})
    by_body = {m["body"]: m for m in received}
    assert sorted(by_body) == [b"one", b"three", b"two"]
    assert by_body[b"one"]["attributes"] == {"kind": "a", "n": 1}
    assert {m["id"] for m in received} == {r["id"] for r in sent}
    assert all(m["receive_count"] == 1 for m in received)

    deleted = conns[1].call("delete", {"queue": "ops-msg", "receipts": [m["receipt"] for m in received]})
    assert deleted == [{"ok": True}] * 3
    assert conns[0].call("get_queue", {"name": "ops-msg"})["stats"]["count"] == 0


def test_get_queue_stats_after_known_workload(conns: list[Connection]) -> None:
    create(conns, "ops-stats", {"partitions": 2})
    bodies = [b"a" * 10, b"b" * 20, b"c" * 30, b"d" * 40]
    for i, body in enumerate(bodies):
        send(conns[i % 3], "ops-stats", body)
    send(conns[1], "ops-stats", b"e" * 50, delay_ms=600_000)
    for i in range(2):
        got = conns[i].call("receive", {"queue": "ops-stats", "max_messages": 1, "visibility_timeout_ms": 600_000})
        assert len(got) == 1
    for conn in conns:
        queue = conn.call("get_queue", {"name": "ops-stats"})
        assert queue["unavailable_partitions"] == 0
        stats = queue["stats"]
        assert {k: stats[k] for k in ("count", "ready", "in_flight", "delayed", "dead_letters", "bytes")} == \
            {"count": 5, "ready": 2, "in_flight": 2, "delayed": 1, "dead_letters": 0, "bytes": 150}
        assert stats["oldest_age_ms"] >= 0


@pytest.mark.parametrize("partitions", [1, 3])
def test_long_poll_wakes_when_another_node_gets_a_send(conns: list[Connection], partitions: int) -> None:
    name = f"ops-poll-{partitions}"
    create(conns, name, {"partitions": partitions})
    # The poll goes to a node that does not lead partition 0 (so it waits through another node), the send to
    # a third one.
    leader = [c.address for c in conns].index(settled(conns[0], name)["partitions"][0]["leader"])
    poller, sender = [conns[(leader + 1) % 3], conns[(leader + 2) % 3]]
    outcome: dict[str, Any] = {}

    def poll() -> None:
        try:
            outcome["messages"] = poller.call("receive", {"queue": name, "max_messages": 1, "wait_ms": 10_000})
        except BaseException as exc:  # reported by the main thread
            outcome["error"] = exc
        outcome["at"] = time.monotonic()

    thread = threading.Thread(target=poll)
    thread.start()
    time.sleep(0.7)
    assert "at" not in outcome, f"the receive returned before any send: {outcome}"
    with Connection(sender.address) as other:
        sent_at = time.monotonic()
        send(other, name, b"wake up")
    thread.join(12)
    assert "error" not in outcome, outcome
    assert [m["body"] for m in outcome["messages"]] == [b"wake up"]
    assert outcome["at"] - sent_at < 1.0, f"the long poll woke {outcome['at'] - sent_at:.2f} s after the send"


@pytest.mark.parametrize("partitions", [1, 3])
def test_receive_returns_empty_after_wait(conns: list[Connection], partitions: int) -> None:
    name = f"ops-empty-{partitions}"
    create(conns, name, {"partitions": partitions})
    started = time.monotonic()
    assert conns[1].call("receive", {"queue": name, "max_messages": 5, "wait_ms": 600}) == []
    elapsed = time.monotonic() - started
    assert 0.55 <= elapsed < 3.0, elapsed


def test_change_visibility_and_stale_receipts(conns: list[Connection]) -> None:
    create(conns, "ops-vis")
    [sent] = send(conns[0], "ops-vis", b"again")
    [first] = conns[1].call("receive", {"queue": "ops-vis", "visibility_timeout_ms": 600_000})
    assert first["receive_count"] == 1 and first["id"] == sent["id"]
    assert conns[2].call("receive", {"queue": "ops-vis", "wait_ms": 0}) == []  # in flight

    [changed] = conns[2].call("change_visibility", {"queue": "ops-vis", "entries": [[first["receipt"], 0]]})
    assert changed["ok"] is True
    [second] = conns[0].call("receive", {"queue": "ops-vis", "wait_ms": 2000, "visibility_timeout_ms": 600_000})
    assert second["id"] == first["id"] and second["receive_count"] == 2
    assert second["receipt"] != first["receipt"]

    results = conns[1].call("delete", {"queue": "ops-vis",
                                       "receipts": [first["receipt"], second["receipt"], "not-a-receipt"]})
    assert results[0]["error"]["code"] == "ReceiptExpired"
    assert results[1] == {"ok": True}
    assert results[2]["error"]["code"] == "InvalidReceipt"
    [stale] = conns[0].call("change_visibility", {"queue": "ops-vis", "entries": [[first["receipt"], 0]]})
    assert stale["error"]["code"] == "ReceiptExpired"
    assert conns[0].call("get_queue", {"name": "ops-vis"})["stats"]["count"] == 0


def test_purge_queue(conns: list[Connection]) -> None:
    create(conns, "ops-purge", {"partitions": 2})
    for i in range(4):
        send(conns[i % 3], "ops-purge", b"m%d" % i)
    assert conns[2].call("purge_queue", {"name": "ops-purge"}) == {"purged": 4}
    assert conns[0].call("get_queue", {"name": "ops-purge"})["stats"]["count"] == 0
    assert conns[1].call("receive", {"queue": "ops-purge", "max_messages": 10, "wait_ms": 200}) == []


def test_a_retried_purge_reports_its_first_count_and_spares_later_messages(conns: list[Connection]) -> None:
    # The retry of a purge whose answer was lost (a leader change mid-request): through any node, under the same
    # purge id, it answers the first count and purges nothing sent since. Without the id it answered 0.
    create(conns, "ops-purge-retry", {"partitions": 3})
    for i in range(6):
        send(conns[i % 3], "ops-purge-retry", b"m%d" % i)
    request = {"name": "ops-purge-retry", "purge_id": "retry-1"}
    assert conns[0].call("purge_queue", request) == {"purged": 6}
    send(conns[1], "ops-purge-retry", b"after")
    assert conns[1].call("purge_queue", request) == {"purged": 6}
    assert conns[2].call("get_queue", {"name": "ops-purge-retry"})["stats"]["count"] == 1
    assert conns[2].call("purge_queue", {"name": "ops-purge-retry", "purge_id": "retry-2"}) == {"purged": 1}


def test_dead_letter_queue_and_redrive(conns: list[Connection]) -> None:
    source_attributes = {"max_receives": 1, "dead_letter_queue": "ops-dlq"}
    with pytest.raises(QueueNotFound):
        conns[0].call("create_queue", {"name": "ops-src", "attributes": source_attributes})
    create(conns, "ops-dlq")
    create(conns, "ops-src", source_attributes)

    send(conns[0], "ops-src", b"poison", attributes={"k": "v"})
    [message] = conns[1].call("receive", {"queue": "ops-src", "visibility_timeout_ms": 600_000})
    assert message["receive_count"] == 1
    [changed] = conns[2].call("change_visibility", {"queue": "ops-src", "entries": [[message["receipt"], 0]]})
    assert changed["ok"] is True

    eventually(lambda: conns[2].call("get_queue", {"name": "ops-dlq"})["stats"]["ready"] == 1, 5,
               "the message in the dead-letter queue")
    stats = eventually(lambda: (s := conns[0].call("get_queue", {"name": "ops-src"})["stats"])["count"] == 0
                       and s["dead_letters"] == 0 and s, 5, "the message gone from the source queue")
    assert stats["count"] == 0
    [letter] = conns[2].call("receive", {"queue": "ops-dlq", "visibility_timeout_ms": 600_000})
    assert letter["body"] == b"poison"
    assert letter["attributes"] == {"k": "v", "dmq-source-queue": "ops-src"}
    conns[0].call("change_visibility", {"queue": "ops-dlq", "entries": [[letter["receipt"], 0]]})

    assert conns[1].call("redrive", {"queue": "ops-dlq"}) == {"moved": 1, "skipped": 0}
    assert conns[0].call("get_queue", {"name": "ops-dlq"})["stats"]["count"] == 0
    [back] = conns[2].call("receive", {"queue": "ops-src", "wait_ms": 2000})
    assert back["body"] == b"poison" and back["attributes"] == {"k": "v"} and back["receive_count"] == 1


def _group_dirs(cluster: Cluster) -> list[set[str]]:
    return [set(os.listdir(data / "partitions")) for data in cluster.data_dirs]


def _log_keys_of(data: Path, group_id: str) -> int:
    """Keys of one group in a running node's shared Raft log (opened read-only: the node holds its lock)."""
    db = Rdict(str(data / "raftlog"), Options(raw_mode=True), access_type=AccessType.read_only())
    try:
        low, high = group_keys(group_id)
        bounded = ReadOptions()
        bounded.set_iterate_upper_bound(high)
        return sum(1 for _ in db.keys(from_key=low, read_opt=bounded))
    finally:
        db.close()


def test_delete_queue(cluster: Cluster, conns: list[Connection]) -> None:
    before = _group_dirs(cluster)
    create(conns, "ops-del")
    send(conns[0], "ops-del", b"doomed")
    groups = [after - seen for after, seen in zip(_group_dirs(cluster), before)]
    assert all(len(added) == 1 for added in groups), groups
    assert all(_log_keys_of(data, gid) > 0 for data, (gid,) in zip(cluster.data_dirs, groups))
    assert conns[1].call("delete_queue", {"name": "ops-del"}) == {"deleted": "ops-del"}
    for data, (gid,) in zip(cluster.data_dirs, groups):  # its data and its log are removed on every replica
        eventually(lambda: not (data / "partitions" / gid).exists() and _log_keys_of(data, gid) == 0, 10,
                   f"partition {gid} removed from {data}")
    for conn in conns:
        eventually(lambda: "ops-del" not in conn.call("list_queues", {}), 5, "the queue gone from list_queues")
        with pytest.raises(QueueNotFound):
            conn.call("get_queue", {"name": "ops-del"})
        with pytest.raises(QueueNotFound):
            conn.call("send", {"queue": "ops-del", "messages": [{"body": b"x"}]})
        with pytest.raises(QueueNotFound):
            conn.call("receive", {"queue": "ops-del"})
    with pytest.raises(QueueNotFound):
        conns[2].call("delete_queue", {"name": "ops-del"})


def test_cluster_status(cluster: Cluster, conns: list[Connection]) -> None:
    create(conns, "ops-status")
    leaders = set()
    for i, conn in enumerate(conns):
        status = conn.call("cluster_status", {})
        assert status["node"] == cluster.node_ids[i]
        leaders.add(status["metadata_leader"])
        assert [(n["id"], n["client"], n["alive"]) for n in status["nodes"]] == \
            [(node, cluster.client_addresses[j], True) for j, node in enumerate(cluster.node_ids)]
        partitions = [p for p in status["partitions"] if p["queue"] == "ops-status"]
        assert len(partitions) == 1 and sorted(partitions[0]["replicas"]) == sorted(cluster.node_ids)
    assert len(leaders) == 1 and leaders <= set(cluster.node_ids), leaders


def test_partition_leaders_spread_over_all_nodes(cluster: Cluster, conns: list[Connection]) -> None:
    conns[0].call("create_queue", {"name": "spread", "attributes": {"partitions": 4}})

    def leaders() -> set[str] | None:
        found = {p["leader"] for p in conns[1].call("lookup", {"name": "spread"})["partitions"]}
        return found if found == set(cluster.client_addresses) else None

    eventually(leaders, 15, "leaders of the 4 partitions of 'spread' on all 3 nodes")
    settled(conns[2], "spread")


def test_receives_without_a_partition_are_mostly_served_where_they_arrive(cluster: Cluster,
                                                                          conns: list[Connection]) -> None:
    """A receive without a partition tries the partitions its node leads first: no forwarding hop for most of
    them. The other partitions are still drained through that node."""
    description = create(conns, "local-first", {"partitions": 3})
    leaders = [p["leader"] for p in settled(conns[0], "local-first")["partitions"]]
    here = 0
    led_here = [p for p, leader in enumerate(leaders) if leader == conns[here].address]
    assert len(description["partitions"]) == 3 and len(led_here) == 1, leaders
    for partition in range(3):
        conns[0].call("send", {"queue": "local-first", "partition": partition,
                               "messages": [{"body": b"p%d-%d" % (partition, i)} for i in range(30)]})

    def forwarded_receives() -> float:
        return total([scrape(cluster.metrics_addresses[here])], "dmq_forwarded_requests_total", op="receive")

    before = forwarded_receives()
    bodies = [m["body"] for _ in range(20) for m in conns[here].call(
        "receive", {"queue": "local-first", "max_messages": 1, "visibility_timeout_ms": 600_000})]
    forwarded = forwarded_receives() - before
    local = sum(1 for body in bodies if body.startswith(b"p%d-" % led_here[0]))
    # Visiting the partitions from a rotating start forwarded 2 receives in 3 (about 13 of 20). Now only the
    # one turn in RECEIVE_SPREAD_EVERY (4) that visits them all that way may forward.
    assert len(bodies) == 20 and forwarded <= 8 and local >= 12, (forwarded, bodies)
    rest = receive_all([conns[here]], "local-first", 70, visibility_timeout_ms=600_000)
    assert sorted([m["body"] for m in rest] + bodies) == sorted(b"p%d-%d" % (p, i) for p in range(3) for i in range(30))


# ---------------------------------------------------------------------------------------------- metrics

def test_metrics_after_known_workload(cluster: Cluster, conns: list[Connection]) -> None:
    create(conns, "met-q", {"partitions": 2})
    for i in range(7):
        send(conns[i % 3], "met-q", b"metric %d" % i)
    for i in range(3):
        [message] = conns[(i + 1) % 3].call("receive", {"queue": "met-q", "visibility_timeout_ms": 600_000})
        assert conns[(i + 2) % 3].call("delete", {"queue": "met-q", "receipts": [message["receipt"]]}) == \
            [{"ok": True}]
    # Received with no visibility timeout: visible again at once, and its next delivery is a redelivery.
    [first] = conns[0].call("receive", {"queue": "met-q", "visibility_timeout_ms": 0})
    partition = int(first["id"].split(".")[0])
    [again] = conns[1].call("receive", {"queue": "met-q", "partition": partition, "visibility_timeout_ms": 600_000})
    assert (again["id"], again["receive_count"]) == (first["id"], 2)
    assert conns[2].call("delete", {"queue": "met-q", "receipts": [again["receipt"]]}) == [{"ok": True}]

    scrapes = [scrape(address) for address in cluster.metrics_addresses]
    assert total(scrapes, "dmq_messages_total", event="sent", queue="met-q") == 7
    assert total(scrapes, "dmq_messages_total", event="received", queue="met-q") == 5
    assert total(scrapes, "dmq_messages_total", event="redelivered", queue="met-q") == 1
    assert total(scrapes, "dmq_messages_total", event="deleted", queue="met-q") == 4

    def gauges() -> list[dict[str, Any]] | None:  # a scrape taken while no leadership moved
        found = [scrape(address) for address in cluster.metrics_addresses]
        for partition in ("0", "1"):
            if total(found, "dmq_partition_leader", queue="met-q", partition=partition) != 1:
                return None
        return found

    scrapes = eventually(gauges, 5, "one leader per partition of met-q in the metrics")
    assert total(scrapes, "dmq_queue_visible_messages", queue="met-q") == 3
    assert total(scrapes, "dmq_queue_in_flight_messages", queue="met-q") == 0
    for name in ("dmq_partition_leader", "dmq_partition_term", "dmq_partition_commit_index",
                 "dmq_partition_applied_index"):
        for samples in scrapes:  # every node hosts a replica of both partitions
            assert sorted(labels["partition"] for labels, _ in samples.get(name, ())
                          if labels["queue"] == "met-q") == ["0", "1"], name
    for partition in ("0", "1"):
        reporting = [samples for samples in scrapes if any(
            labels == {"queue": "met-q", "partition": partition}
            for labels, _ in samples.get("dmq_partition_follower_lag_entries", ()))]
        assert len(reporting) == 1, f"follower lag of partition {partition} reported by {len(reporting)} nodes"
        assert min(v for samples in scrapes for labels, v in samples.get("dmq_partition_commit_index", ())
                   if labels == {"queue": "met-q", "partition": partition}) > 0
    assert total(scrapes, "dmq_request_seconds_count", op="send") >= 7
    for samples in scrapes:
        assert total([samples], "dmq_raft_fsync_seconds_count") > 0

    # A send through a node that does not lead the partition is forwarded, and counted there.
    leader = [c.address for c in conns].index(settled(conns[0], "met-q")["partitions"][0]["leader"])
    other = (leader + 1) % 3
    before = total([scrape(cluster.metrics_addresses[other])], "dmq_forwarded_requests_total", op="send")
    conns[other].call("send", {"queue": "met-q", "partition": 0, "messages": [{"body": b"forwarded"}]})
    after = total([scrape(cluster.metrics_addresses[other])], "dmq_forwarded_requests_total", op="send")
    assert after - before == 1

    before = total([scrape(cluster.metrics_addresses[0])], "dmq_errors_total", code="QueueNotFound")
    with pytest.raises(QueueNotFound):
        conns[0].call("get_queue", {"name": "met-missing"})
    after = total([scrape(cluster.metrics_addresses[0])], "dmq_errors_total", code="QueueNotFound")
    assert after - before == 1

    # docs/METRICS.md names every metric the nodes serve, and nothing they do not.
    doc = (Path(__file__).resolve().parents[2] / "docs" / "METRICS.md").read_text()
    served = {re.sub(r"_(bucket|count|sum|created|total)$", "", name)
              for address in cluster.metrics_addresses for name in scrape(address)}
    documented = {re.sub(r"_total$", "", name) for name in re.findall(r"`((?:dmq|process)_[a-z_]+)`", doc)}
    assert served == documented, (served - documented, documented - served)


# ---------------------------------------------------------------------------------------------- fuzzing

FUZZ_OPS = ("create_queue", "delete_queue", "get_queue", "list_queues", "purge_queue", "send", "receive",
            "delete", "change_visibility", "redrive", "lookup", "cluster_status", "heartbeat",
            "metadata_snapshot", "partition_stats", "wait_messages", "purge_partition", "", "bogus")
FUZZ_FIELDS = ("queue", "name", "messages", "partition", "max_messages", "wait_ms", "visibility_timeout_ms",
               "receipts", "entries", "attributes", "prefix", "to", "body", "dedup_id", "node", "leading")
FUZZ_INTS = (0, 1, 2, -1, 7, 63, 64, 1024, 2**31, 2**63 - 1, -2**63, 2**64 - 1, 900_001, 43_200_001)
FUZZ_QUEUE = "fz-main"  # the one existing queue fuzzed requests may name


class Fuzz:
    """Random values for request fields, biased toward the edges the parser must handle."""

    def __init__(self, seed: int, queue_id: int = 1) -> None:
        self.rng = random.Random(seed)
        self.queue_id = queue_id

    def text(self) -> Any:
        rng = self.rng
        return rng.choice([
            "", FUZZ_QUEUE, "fz-nx-%d" % rng.randrange(10**6), "x" * rng.choice([80, 81, 129, 5000]),
            "é☃\U0001F600", "a.b.c.d", "1.0.1.1", "99.0.1.1", "0.0.0.0", "1.1.1.1", "fz main", "../etc",
            "".join(chr(rng.randrange(1, 0x2FFF)) for _ in range(rng.randrange(1, 12)))])

    def value(self, depth: int = 0) -> Any:
        rng = self.rng
        kind = rng.randrange(10 if depth < 3 else 7)
        if kind == 0:
            return rng.choice(FUZZ_INTS) if rng.random() < 0.7 else rng.randrange(-10**6, 10**6)
        if kind == 1:
            return self.text()
        if kind == 2:
            return rng.randbytes(rng.randrange(0, 40))
        if kind == 3:
            return rng.choice([None, True, False, 0.5, float("nan"), float("inf"), -0.0])
        if kind == 4:
            return self.message()
        if kind == 5:
            return "%d.%d.%d.%d" % tuple(rng.choice(FUZZ_INTS[:9]) % 2**64 for _ in range(4))  # receipt-like
        if kind == 6:
            return rng.choice([[], {}, [[]], [None], [["1.0.1.1", 0]], [[self.text(), 5]]])
        if kind in (7, 8):
            return [self.value(depth + 1) for _ in range(rng.randrange(0, 5))]
        return {rng.choice(FUZZ_FIELDS + ("fifo", "max_receives", "dead_letter_queue", "replication")):
                self.value(depth + 1) for _ in range(rng.randrange(0, 5))}

    def message(self) -> Any:
        rng = self.rng
        message: dict[str, Any] = {"body": rng.choice([b"", b"fuzz", "text", None, 5, b"x" * 300])}
        for field in ("attributes", "delay_ms", "dedup_id", "group", "extra"):
            if rng.random() < 0.3:
                message[field] = rng.choice([self.value(2), {"a": self.value(3)}, rng.choice(FUZZ_INTS)])
        return message

    def receipt(self) -> str:
        """Receipt-shaped text, mostly naming the fuzzed queue (its id is set by the test)."""
        rng = self.rng
        return "%d.%d.%d.%d" % (rng.choice([self.queue_id, self.queue_id, 0, 2**63 - 1]), rng.choice([0, 1, 2, 9]),
                                rng.choice([1, 2, 3, 5, 40, 2**62]), rng.choice([1, 1, 2, 2**31]))

    def template(self, op: str) -> dict[str, Any]:
        """A valid request for `op` on the fuzzed queue, to be mutated."""
        rng = self.rng
        return {
            "send": lambda: {"queue": FUZZ_QUEUE, "messages": [self.message() if rng.random() < 0.5 else
                                                               {"body": b"fuzz %d" % i} for i in range(3)]},
            "receive": lambda: {"queue": FUZZ_QUEUE, "max_messages": 3, "wait_ms": 0,
                                "visibility_timeout_ms": rng.choice([0, 100, 60_000])},
            "delete": lambda: {"queue": FUZZ_QUEUE, "receipts": [self.receipt() for _ in range(3)]},
            "change_visibility": lambda: {"queue": FUZZ_QUEUE, "entries": [[self.receipt(), 0] for _ in range(3)]},
            "create_queue": lambda: {"name": FUZZ_QUEUE, "attributes": {"partitions": 2}},
            "list_queues": lambda: {"prefix": "fz"},
            "redrive": lambda: {"queue": FUZZ_QUEUE, "to": FUZZ_QUEUE, "max_messages": 5},
            "cluster_status": lambda: {},
        }.get(op, lambda: {"name": FUZZ_QUEUE, "queue": FUZZ_QUEUE})()

    def mutate(self, value: Any) -> Any:
        """`value` with one random change somewhere inside it."""
        rng = self.rng
        if isinstance(value, dict) and value and rng.random() < 0.8:
            key = rng.choice(list(value) + [rng.choice(FUZZ_FIELDS)])
            if rng.random() < 0.2:
                value.pop(key, None)
            else:
                value[key] = self.mutate(value[key]) if key in value and rng.random() < 0.5 else self.value(1)
            return value
        if isinstance(value, list) and value and rng.random() < 0.8:
            index = rng.randrange(len(value))
            value[index] = self.mutate(value[index])
            return value
        return self.value(2)

    def args(self, op: str) -> Any:
        rng = self.rng
        roll = rng.random()
        if roll < 0.1:
            return self.value(1)
        if roll < 0.6:
            args = self.template(op)
            for _ in range(rng.randrange(0, 3)):
                args = self.mutate(args)
            if not isinstance(args, dict):
                return args
        else:
            args = {rng.choice(FUZZ_FIELDS): self.value() for _ in range(rng.randrange(0, 4))}
            if rng.random() < 0.6:
                args["queue" if op not in ("create_queue", "get_queue", "lookup") else "name"] = \
                    rng.choice([FUZZ_QUEUE, self.text()])
        if op == "create_queue" and rng.random() < 0.5:
            args["name"] = FUZZ_QUEUE  # exists: only the attributes are checked, nothing is created
        if op == "delete_queue" or (op == "create_queue" and args.get("name") != FUZZ_QUEUE):
            # Never delete the shared queues; never create real ones (a 64-partition queue would slow the rest).
            args["name"] = rng.choice(["", "fz-nx-%d" % rng.randrange(10**6), "bad name", None, 3])
            if op == "create_queue":
                args["attributes"] = {"partitions": rng.choice([0, -1, 2000, "1", None]), "bogus": 1}
        if op in ("receive", "redrive") or "wait_ms" in args:
            args["wait_ms"] = rng.choice([-1, 0, 1, 50, 20_001, "10", None, 2**64 - 1, 1.5])
        if op == "redrive":
            args["max_messages"] = rng.choice([0, 1, 5, -3, "x", 100_001])
        return args


def _frames(sock: socket.socket, decoder: protocol.FrameDecoder, wanted: int, timeout: float) -> list[dict]:
    """Read until `wanted` frames came, the server closed, or `timeout` passed."""
    messages: list[dict] = []
    deadline = time.monotonic() + timeout
    while len(messages) < wanted:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        sock.settimeout(left)
        try:
            data = sock.recv(1 << 16)
        except socket.timeout:
            break
        except ConnectionResetError:
            break
        if not data:
            break
        messages += decoder.feed(data)
    return messages


def _raw(address: str) -> socket.socket:
    host, port = address.rsplit(":", 1)
    return socket.create_connection((host, int(port)), timeout=5)


def _frame(obj: Any) -> bytes:
    payload = msgpack.packb(obj, use_bin_type=True)
    return protocol.HEADER.pack(len(payload)) + payload


SESSION_ERRORS = {"ProtocolError", "FrameTooLarge", "UnsupportedVersion", "Unauthorized"}


def _fuzz_garbage_bytes(address: str, fuzz: Fuzz) -> None:
    rng = fuzz.rng
    data = rng.randbytes(rng.randrange(0, 64))
    if rng.random() < 0.5:  # a plausible length, so the decoder reaches msgpack
        data = protocol.HEADER.pack(len(data)) + data
    with _raw(address) as sock:
        sock.sendall(data)
        for message in _frames(sock, protocol.FrameDecoder(), 1, 0.05):
            assert "dmq" in message or message["error"]["code"] in SESSION_ERRORS, message


def _fuzz_handshake(address: str, fuzz: Fuzz) -> None:
    rng = fuzz.rng
    hello = fuzz.value(1)
    if rng.random() < 0.5:
        hello = {"dmq": rng.choice([1, 2, 0, "1", None, 1.0]), "token": rng.choice([None, fuzz.value(2)]),
                 "client": fuzz.value(2)}
    with _raw(address) as sock:
        sock.sendall(_frame(hello))
        for message in _frames(sock, protocol.FrameDecoder(), 1, 0.3):
            assert "dmq" in message or message["error"]["code"] in SESSION_ERRORS, (hello, message)


def _fuzz_requests(address: str, fuzz: Fuzz) -> None:
    """A valid handshake, then well-formed envelopes with random operations and arguments: every request gets
    its own answer, and none is an internal error (an exception the node did not expect)."""
    rng = fuzz.rng
    with _raw(address) as sock:
        decoder = protocol.FrameDecoder()
        sock.sendall(_frame(protocol.hello(None, "fuzz")))
        [welcome] = _frames(sock, decoder, 1, 5)
        assert welcome.get("dmq") == protocol.VERSION, welcome
        requests = {}
        for request_id in range(1, rng.randrange(2, 12)):
            op = rng.choice(FUZZ_OPS)
            requests[request_id] = {"id": request_id, "op": op, "args": fuzz.args(op)}
            if rng.random() < 0.1:
                requests[request_id]["fwd"] = fuzz.value(2)  # only other nodes may forward: must be ignored
        sock.sendall(b"".join(_frame(request) for request in requests.values()))
        answers = _frames(sock, decoder, len(requests), 10)
        assert sorted(a.get("id") for a in answers) == sorted(requests), (requests, answers)
        for answer in answers:
            if "error" in answer:
                assert answer["error"]["code"] != "Internal", (requests[answer["id"]], answer)


def _fuzz_bad_envelope(address: str, fuzz: Fuzz) -> None:
    """A valid handshake, then a frame that is not a request: a ProtocolError answer, and the session ends."""
    rng = fuzz.rng
    bad = rng.choice([
        {"id": fuzz.rng.choice([-1, 2**63, True, "1", None, 1.5]), "op": "get_queue", "args": {}},
        {"id": 1, "op": rng.choice([None, 5, b"send", ["send"]]), "args": {}},
        {"op": "get_queue"},
        {},
    ])
    with _raw(address) as sock:
        decoder = protocol.FrameDecoder()
        sock.sendall(_frame(protocol.hello(None, "fuzz")))
        [welcome] = _frames(sock, decoder, 1, 5)
        assert welcome.get("dmq") == protocol.VERSION
        sock.sendall(_frame(bad))
        answers = _frames(sock, decoder, 2, 5)
        assert [a["error"]["code"] for a in answers] == ["ProtocolError"], (bad, answers)
        assert _frames(sock, decoder, 1, 2) == []  # closed


def _fuzz_special_cases(address: str) -> None:
    cases = [
        b"\xff\xff\xff\xff",  # a 4 GiB frame
        protocol.HEADER.pack(1 << 30) + b"x",
        protocol.HEADER.pack(5000) + b"\x91" * 5000,  # arrays nested 5000 deep
        protocol.HEADER.pack(4) + b"\xc1\xc1\xc1\xc1",  # never-used msgpack byte
        _frame([1, 2, 3]),  # not a map
        _frame({"dmq": 1, "token": "x" * 2000}),  # over-long token
        _frame({"dmq": 1, "token": 12345}),  # not text
        _frame({"dmq": 99}),
        protocol.HEADER.pack(2) + b"\x81\xa1",  # truncated map inside a complete frame
    ]
    for data in cases:
        with _raw(address) as sock:
            for i in range(0, len(data), 1000):  # in pieces, as a slow client would
                sock.sendall(data[i:i + 1000])
            answers = _frames(sock, protocol.FrameDecoder(), 2, 3)
            assert len(answers) == 1 and answers[0]["error"]["code"] in SESSION_ERRORS, (data[:40], answers)


def test_fuzz_client_port(cluster: Cluster, conns: list[Connection]) -> None:
    """Hundreds of sessions of garbage against one live node (seeded: DMQ_FUZZ_SEED picks other cases): raw
    bytes, random handshakes, random requests after a valid handshake, broken envelopes. Every answer is a
    protocol error or a per-request error other than Internal, and afterwards the node still serves."""
    queue_id = create(conns, FUZZ_QUEUE, {"partitions": 2})["id"]
    target = 1
    address = cluster.client_addresses[target]
    seed = int(os.environ.get("DMQ_FUZZ_SEED", "20240611"))  # another seed explores other cases
    fuzz = Fuzz(seed, queue_id)
    deadline = time.monotonic() + 40
    cases = 0
    try:
        _fuzz_special_cases(address)
        kinds = (_fuzz_garbage_bytes, _fuzz_handshake, _fuzz_requests, _fuzz_requests, _fuzz_bad_envelope)
        while cases < 600 and time.monotonic() < deadline:
            fuzz.rng.choice(kinds)(address, fuzz)
            cases += 1
    except Exception as exc:
        raise AssertionError(f"fuzz case {cases} with seed {seed} failed: {exc!r}") from exc
    assert cases >= 100, f"only {cases} fuzz cases ran in the time allowed"

    assert cluster.alive(target)
    with cluster.connect(target) as conn:
        conn.call("create_queue", {"name": "fz-after", "attributes": {}})
        settled(conn, "fz-after")
        send(conn, "fz-after", b"still here")
        [message] = conn.call("receive", {"queue": "fz-after", "wait_ms": 2000})
        assert message["body"] == b"still here"
    assert all(cluster.alive(i) for i in range(len(cluster)))


# ---------------------------------------------------------------------------------------------- auth

@pytest.fixture(scope="class")
def auth_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    nodes = Cluster(tmp_path_factory.mktemp("auth"), auth=True)
    try:
        nodes.start_all()
        with nodes.connect(0, ADMIN_TOKEN) as admin:
            for name in ("orders-x", "other-x"):
                admin.call("create_queue", {"name": name, "attributes": {}})
                settled(admin, name)
        yield nodes
    finally:
        nodes.close()


class TestAuth:
    def test_wrong_token_refused_at_handshake(self, auth_cluster: Cluster) -> None:
        for i in range(len(auth_cluster)):
            with pytest.raises(Unauthorized):
                auth_cluster.connect(i, "not-a-known-token-at-all")

    def test_anonymous_refused(self, auth_cluster: Cluster) -> None:
        with pytest.raises(Unauthorized):
            auth_cluster.connect(0, None)

    def test_producer_sends_only_to_its_queues(self, auth_cluster: Cluster) -> None:
        for i in range(len(auth_cluster)):  # forwarded to the leader from the other nodes
            with auth_cluster.connect(i, PRODUCER_TOKEN) as producer:
                [sent] = producer.call("send", {"queue": "orders-x", "messages": [{"body": b"order %d" % i}]})
                assert sent["duplicate"] is False
                with pytest.raises(Forbidden):
                    producer.call("receive", {"queue": "orders-x"})
                with pytest.raises(Forbidden):  # a peek shows bodies: it takes the receive permission
                    producer.call("peek", {"queue": "orders-x"})
                with pytest.raises(Forbidden):
                    producer.call("send", {"queue": "other-x", "messages": [{"body": b"nope"}]})
                with pytest.raises(Forbidden):
                    producer.call("create_queue", {"name": "orders-new", "attributes": {}})
                with pytest.raises(Forbidden):
                    producer.call("purge_queue", {"name": "orders-x"})
                assert producer.call("list_queues", {}) == ["orders-x"]

    def test_consumer_receives_but_cannot_send(self, auth_cluster: Cluster) -> None:
        with auth_cluster.connect(2, CONSUMER_TOKEN) as consumer:
            peeked = consumer.call("peek", {"queue": "orders-x", "max_messages": 10})
            assert sorted(m["body"] for m in peeked) == [b"order 0", b"order 1", b"order 2"]
            received = receive_all([consumer], "orders-x", 3, max_messages=10)
            assert sorted(m["body"] for m in received) == [b"order 0", b"order 1", b"order 2"]
            assert consumer.call("delete", {"queue": "orders-x", "receipts": [m["receipt"] for m in received]}) \
                == [{"ok": True}] * 3
            with pytest.raises(Forbidden):
                consumer.call("send", {"queue": "orders-x", "messages": [{"body": b"nope"}]})
            with pytest.raises(Forbidden):
                consumer.call("receive", {"queue": "other-x"})
        with auth_cluster.connect(1, ADMIN_TOKEN) as admin:
            assert admin.call("get_queue", {"name": "orders-x"})["stats"]["count"] == 0
            assert admin.call("list_queues", {}) == ["orders-x", "other-x"]


# ---------------------------------------------------------------------------------------------- failures

def test_failover_after_kill_and_rejoin(fresh_cluster: Cluster) -> None:
    """SIGKILL the node leading the metadata and a partition: the same send (its dedup id) and a receive succeed
    on the other nodes within 10 s, nothing acknowledged is lost, and the node rejoins after a restart."""
    cluster = fresh_cluster
    with cluster.connect(0) as first:
        first.call("create_queue", {"name": "fo", "attributes": {"partitions": 3, "replication": 3}})
        queue = settled(first, "fo")
        metadata_leader = first.call("cluster_status", {})["metadata_leader"]
    victim = cluster.node_ids.index(metadata_leader)
    others = [i for i in range(len(cluster)) if i != victim]
    led = [p["partition"] for p in queue["partitions"] if p["leader"] == cluster.client_addresses[victim]]
    assert led, f"the metadata leader {metadata_leader} leads no partition of {queue}"
    partition = led[0]

    conn = cluster.connect(victim)
    assert conn.call("send", {"queue": "fo", "partition": partition,
                              "messages": [{"body": b"before", "dedup_id": "before-1"}]})[0]["duplicate"] is False
    cluster.kill(victim)
    request = {"queue": "fo", "partition": partition, "messages": [{"body": b"after", "dedup_id": "after-1"}]}
    with pytest.raises(Unavailable):
        conn.call("send", request, timeout=5)
    conn.close()

    killed_at = time.monotonic()
    attempt = 0

    def retried_send() -> list[dict[str, Any]]:
        nonlocal attempt
        attempt += 1
        with cluster.connect(others[attempt % 2], connect_timeout=2) as other:
            return other.call("send", request, timeout=3)

    [sent] = eventually(retried_send, 10, "the send retried on the surviving nodes", interval=0.2)
    assert "error" not in sent, sent
    assert time.monotonic() - killed_at < 10.5

    def retried_receive() -> list[dict[str, Any]]:
        with cluster.connect(others[(attempt + 1) % 2], connect_timeout=2) as other:
            return receive_all([other], "fo", 2, timeout=3, max_messages=10)

    received = eventually(retried_receive, 10, "both messages received from a surviving node", interval=0.2)
    assert sorted(m["body"] for m in received) == [b"after", b"before"]

    restarted_at = time.monotonic()
    cluster.start(victim)

    def rejoined() -> bool:
        with cluster.connect(others[0], connect_timeout=2) as other:
            status = other.call("cluster_status", {}, timeout=3)
        [entry] = [n for n in status["nodes"] if n["id"] == cluster.node_ids[victim]]
        # alive on a heartbeat sent after the restart, not one from before the kill
        return entry["alive"] and entry["last_heartbeat_ms_ago"] / 1000 < time.monotonic() - restarted_at

    eventually(rejoined, 10, f"node {cluster.node_ids[victim]} alive again after its restart", interval=0.2)
    cluster.wait_ready([victim], timeout=10)
    with cluster.connect(victim) as back:
        send(back, "fo", b"after restart")
        [message] = back.call("receive", {"queue": "fo", "wait_ms": 2000})
        assert message["body"] == b"after restart"


def test_node_whose_client_port_is_taken_exits_with_status_1(tmp_path: Path) -> None:
    """The daemon's documented failure for a port in use: a logged error and status 1, not a crash, also while
    its Raft host already talks to running peers."""
    cluster = Cluster(tmp_path)
    host, port = cluster.client_addresses[2].rsplit(":", 1)
    with socket.socket() as squatter:
        squatter.bind((host, int(port)))
        squatter.listen()
        try:
            cluster.start(0)
            cluster.start(1)
            for i in (0, 1):  # the peers are up, so the third node's Raft host connects to them at once
                eventually(lambda: cluster.connect(i, connect_timeout=1).close() or True, 20, f"node {i} up")
            for attempt in range(8):  # a crash at exit depends on timing: give it several chances to show
                cluster.data_dirs[2] = tmp_path / f"data3-{attempt}"  # empty: busy catching up when it fails
                cluster.start(2)
                proc = cluster.procs[2]
                assert proc is not None
                code = proc.wait(20)
                assert code == 1, f"attempt {attempt}: exit status {code}\n{cluster.log_tail(2)}"
            log = cluster.log_paths[2].read_text()
            assert log.count("cannot start") == 8 and "address already in use" in log, cluster.log_tail(2)
        finally:
            cluster.close()


def test_graceful_stop_exits_zero(cluster: Cluster, conns: list[Connection]) -> None:
    """SIGTERM with long polls in flight: exit status 0 within 10 s, the polls end (not left hanging for their
    20 s), and the other nodes keep serving the queues the node led."""
    create(conns, "stop-q", {"partitions": 3})
    victim = 1
    [polled] = [p for p in settled(conns[0], "stop-q")["partitions"]
                if p["leader"] == cluster.client_addresses[victim]]
    outcomes: dict[str, Any] = {}

    def poll(key: str, conn: Connection, args: dict[str, Any]) -> None:
        try:
            outcomes[key] = conn.call("receive", {"queue": "stop-q", "wait_ms": 20_000, **args}, timeout=30)
        except DmqError as exc:
            outcomes[key] = exc
        outcomes[key + " at"] = time.monotonic()

    polls = [threading.Thread(target=poll, args=("on the node", conns[victim], {})),
             threading.Thread(target=poll, args=("forwarded to it", conns[0], {"partition": polled["partition"]}))]
    for thread in polls:
        thread.start()
    time.sleep(0.5)
    assert not outcomes, outcomes
    started = time.monotonic()
    cluster.stop(victim, timeout=10)
    assert time.monotonic() - started < 10
    for thread in polls:
        thread.join(15)
    for key in ("on the node", "forwarded to it"):
        assert key in outcomes, f"the long poll {key} did not end"
        assert outcomes[key + " at"] - started < 10, f"the long poll {key} ended only after the stop"
        assert outcomes[key] == [] or (isinstance(outcomes[key], DmqError) and outcomes[key].retryable), outcomes

    survivor = conns[0]
    for i in range(3):
        eventually(lambda: send(survivor, "stop-q", b"after stop %d" % i, dedup_id=f"stop-{i}"), 5,
                   "a send after the graceful stop")
    assert sorted(m["body"] for m in receive_all([survivor, conns[2]], "stop-q", 3, max_messages=10)) == \
        [b"after stop 0", b"after stop 1", b"after stop 2"]

    cluster.start(victim)
    cluster.wait_ready([victim])
    conns[victim].close()
    conns[victim] = cluster.connect(victim)  # for any test after this one


def test_send_with_batch_id_retried_on_another_node(cluster: Cluster, conns: list[Connection]) -> None:
    """An SDK's retry: the same send (batch_id, partition) to another node returns the same ids, enqueues nothing."""
    create(conns, "batch-retry", {"partitions": 2})
    leader = settled(conns[0], "batch-retry")["partitions"][1]["leader"]
    at_leader = cluster.client_addresses.index(leader)
    elsewhere = (at_leader + 1) % len(conns)  # forwards to the leader
    args = {"queue": "batch-retry", "partition": 1, "batch_id": "sdk-7f3a-42",
            "messages": [{"body": b"one"}, {"body": b"two", "dedup_id": "two"}, {"body": b"three"}]}
    first = conns[elsewhere].call("send", args)
    assert [r["duplicate"] for r in first] == [False, False, False]
    assert all(r["id"].startswith("1.") for r in first) and len({r["id"] for r in first}) == 3
    again = conns[at_leader].call("send", args)
    assert again == [{"id": r["id"], "duplicate": True} for r in first]
    assert conns[0].call("get_queue", {"name": "batch-retry"})["stats"]["count"] == 3
    received = receive_all(conns, "batch-retry", 3)
    assert sorted(m["body"] for m in received) == [b"one", b"three", b"two"]
    assert {m["id"] for m in received} == {r["id"] for r in first}

    with pytest.raises(DmqError, match="partition") as refused:  # a retry must reach the partition remembering it
        conns[0].call("send", {**args, "partition": None})
    assert refused.value.code == protocol.ErrorCode.INVALID_REQUEST
    with pytest.raises(DmqError, match="batch_id") as refused:  # not a retry of that send
        conns[elsewhere].call("send", {**args, "messages": [{"body": b"one"}]})
    assert refused.value.code == protocol.ErrorCode.INVALID_REQUEST
    assert conns[0].call("get_queue", {"name": "batch-retry"})["stats"]["count"] == 3  # in flight; no new one


def test_a_replica_that_starts_after_an_update_replays_the_log_as_the_others_did(fresh_cluster: Cluster) -> None:
    """A node down while a queue is created and then updated builds its replica later, by replaying the
    partition's log. It must start from the attributes the queue was created with: starting from the updated
    ones, it would judge the old sends by the new limit and hold other messages than the replicas that took
    them (here max_messages 10 → 2: 2 of the first 5 sends instead of 5)."""
    cluster = fresh_cluster
    late = 2
    cluster.stop(late)
    with cluster.connect(0) as conn:
        created = conn.call("create_queue", {"name": "late", "attributes": {"max_messages": 10}})
        assert cluster.client_addresses[late] in created["partitions"][0]["replicas"]
        send(conn, "late", *[b"m%d" % i for i in range(5)])
        updated = conn.call("update_queue", {"name": "late", "attributes": {"max_messages": 2}})
        assert updated["attributes"]["max_messages"] == 2 and updated["id"] == created["id"]
        accepted = 5

        def full() -> bool:  # the partition's leader has applied the update once a send is refused
            nonlocal accepted
            [result] = conn.call("send", {"queue": "late", "messages": [{"body": b"more"}]})
            accepted += "error" not in result
            return result.get("error", {}).get("code") == "QueueFull"

        eventually(full, 10, "a send refused under the updated max_messages", interval=0.1)
        count = conn.call("get_queue", {"name": "late"})["stats"]["count"]
        assert count == accepted >= 5
    group_id = f"q{created['id']}.p0"
    cluster.start(late)
    cluster.wait_ready([late], timeout=20)

    def applied(i: int) -> float:
        return total([scrape(cluster.metrics_addresses[i])], "dmq_partition_applied_index", queue="late")

    leader_commit = total([scrape(cluster.metrics_addresses[0])], "dmq_partition_commit_index", queue="late")
    eventually(lambda: applied(late) >= leader_commit, 20, "the late replica to apply the partition's log")
    cluster.stop(late)
    store = PartitionStore(str(cluster.data_dirs[late] / "partitions" / group_id / "store"))
    try:
        assert store.config()["max_messages"] == 2
        assert store.stats(int(time.time() * 1000))["count"] == count
    finally:
        store.close()
