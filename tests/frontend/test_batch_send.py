"""Sends with a batch id through the frontend's group commit (LocalPartition + PartitionBatcher) into a real
partition store: coalesced sends become segments of one enqueue command, and retries get the first results."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import msgpack
import pytest

from dmq_client.protocol import ErrorCode
from dmq_server.frontend.partition import LocalPartition
from dmq_server.frontend.requests import OutgoingMessage, RequestError
from dmq_server.raft.group import AckMode
from dmq_server.store import CommandError, PartitionStore, QueueConfig


class StoreGroup:
    """A partition group of one replica: commands travel as msgpack (as through Raft) into a real store."""

    def __init__(self, store: PartitionStore) -> None:
        self.store = store
        self.commands: list[dict[str, Any]] = []
        self.index = store.applied_index

    def submit(self, command: dict[str, Any], callback: Callable[[dict[str, Any]], None],
               ack: AckMode = AckMode.QUORUM) -> None:
        self.commands.append(command)
        self.index += 1
        try:
            outcome: dict[str, Any] = {"result": self.store.apply(self.index, msgpack.unpackb(msgpack.packb(command)))}
        except CommandError as exc:
            outcome = {"error": exc.code, "message": exc.message}
        callback({"accepted": {"index": self.index, "term": 1}} if ack == AckMode.LEADER else outcome)

    def query(self, fn: Callable[[PartitionStore], Any]) -> Any:
        return fn(self.store)


@pytest.fixture
def store(tmp_path) -> Iterator[PartitionStore]:
    opened = PartitionStore(str(tmp_path / "p"), initial_config=QueueConfig(max_messages=5))
    yield opened
    opened.close()


def local(store: PartitionStore, ack_mode: str = "quorum") -> tuple[LocalPartition, StoreGroup]:
    group = StoreGroup(store)
    partition = LocalPartition(asyncio.get_running_loop(), group,  # type: ignore[arg-type]
                               {"id": 7, "name": "q", "attrs": {"ack_mode": ack_mode}}, 2, lambda: None)
    return partition, group


def messages(*bodies: bytes, dedup: str | None = None) -> list[OutgoingMessage]:
    return [OutgoingMessage(body, None, None, dedup, None) for body in bodies]


def ids(*sequences: int, duplicate: bool = False) -> list[dict[str, Any]]:
    return [{"id": f"2.{sequence}", "duplicate": duplicate} for sequence in sequences]


def run(coroutine_factory: Callable[[], Any]) -> Any:
    return asyncio.run(coroutine_factory())


def test_coalesced_sends_become_segments_of_one_command(store: PartitionStore) -> None:
    async def scenario() -> None:
        partition, group = local(store)
        first = await asyncio.gather(partition.send(messages(b"a1", b"a2"), "A"),
                                     partition.send(messages(b"p1")),
                                     partition.send(messages(b"b1"), "B"))
        assert first == [ids(1, 2), ids(3), ids(4)]
        assert len(group.commands) == 1
        assert group.commands[0]["batches"] == [[b"A", 0, 2], [b"B", 3, 1]]
        # Retries of A and B (one coalesced with a new plain send) enqueue nothing and answer as the first time.
        again = await asyncio.gather(partition.send(messages(b"b1"), "B"),
                                     partition.send(messages(b"p2")),
                                     partition.send(messages(b"a1", b"a2"), "A"))
        assert again == [ids(4, duplicate=True), ids(5), ids(1, 2, duplicate=True)]
        assert group.commands[1]["batches"] == [[b"B", 0, 1], [b"A", 2, 2]]
        assert store.stats(0)["count"] == 5
        # A send without a batch id leaves the command as it was.
        await partition.send(messages(b"x"))
        assert "batches" not in group.commands[-1]

    run(scenario)


def test_a_retry_repeats_queue_full_entries(store: PartitionStore) -> None:
    async def scenario() -> None:
        partition, _ = local(store)
        first = await partition.send(messages(*[b"m%d" % i for i in range(6)]), "B")
        assert first[:5] == ids(1, 2, 3, 4, 5)
        assert first[5]["error"]["code"] == ErrorCode.QUEUE_FULL.value and "duplicate" not in first[5]
        again = await partition.send(messages(*[b"m%d" % i for i in range(6)]), "B")
        assert again[:5] == ids(1, 2, 3, 4, 5, duplicate=True)
        assert again[5]["error"]["code"] == ErrorCode.QUEUE_FULL.value and again[5]["duplicate"] is True

    run(scenario)


def test_a_batch_id_reused_for_another_send_is_refused_alone(store: PartitionStore) -> None:
    async def scenario() -> None:
        partition, _ = local(store)
        await partition.send(messages(b"a1", b"a2"), "A")
        mismatch, neighbour = await asyncio.gather(partition.send(messages(b"other"), "A"),
                                                   partition.send(messages(b"p1")), return_exceptions=True)
        assert isinstance(mismatch, RequestError) and mismatch.code is ErrorCode.INVALID_REQUEST
        assert "'batch_id'" in mismatch.message
        assert neighbour == ids(3)
        assert store.stats(0)["count"] == 3

    run(scenario)


def test_per_message_dedup_ids_inside_a_batch(store: PartitionStore) -> None:
    async def scenario() -> None:
        partition, _ = local(store)
        assert await partition.send(messages(b"a", b"b", dedup="k"), "A") == ids(1) + ids(1, duplicate=True)
        assert await partition.send(messages(b"c", dedup="k")) == ids(1, duplicate=True)
        assert await partition.send(messages(b"a", b"b", dedup="k"), "A") == ids(1, 1, duplicate=True)

    run(scenario)


def test_leader_ack_mode_passes_the_segments(store: PartitionStore) -> None:
    async def scenario() -> None:
        partition, group = local(store, ack_mode="leader")
        for _ in range(2):
            assert await partition.send(messages(b"a", b"b"), "A") == [{"id": None, "duplicate": None}] * 2
            assert group.commands[-1]["batches"] == [[b"A", 0, 2]]
        assert store.stats(0)["count"] == 2  # the retry was recognised by the store all the same

    run(scenario)
