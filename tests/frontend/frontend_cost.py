"""The frontend's own work per message, without Raft or a store (a measurement, not a test).

    valgrind --tool=callgrind python -m tests.frontend.frontend_cost send|receive ROUNDS

`send`: parse a send request of 100 messages of 100 B and turn the partition's answers into results.
`receive`: turn a receive of 100 messages into results, then parse the delete of their receipts and submit it.
The partition's batcher answers at once with what the store would answer. Instructions per message are
(instructions at ROUNDS=600 minus at ROUNDS=100) / 50,000: the difference drops start-up and imports.
"""

from __future__ import annotations

import argparse
import asyncio
import os
from typing import Any

from dmq_server.frontend import requests
from dmq_server.frontend.partition import LocalPartition
from dmq_server.store import records
from dmq_server.store.config import QueueConfig

BATCH = 100
BODY = os.urandom(100)
RECORD = records.encode(records.READY, 1_000, 0, 0, None, b"", BODY)
DELIVERED = [records.deliver(1_000 + i, RECORD, 5_000)[1] for i in range(BATCH)]


def _answered(result: Any) -> asyncio.Future[Any]:
    future = asyncio.get_running_loop().create_future()
    future.set_result(result)
    return future


class _AnsweringBatcher:
    """Stands in for PartitionBatcher: every command is answered at once, as a store applying it would."""

    def enqueue(self, entries: list[Any], size: int, batch_id: bytes | None = None) -> asyncio.Future[Any]:
        return _answered([{"id": 1_000 + i, "duplicate": False} for i in range(len(entries))])

    def receive(self, count: int, visibility_ms: int | None, max_bytes: int) -> asyncio.Future[Any]:
        return _answered(DELIVERED[:count])

    def delete(self, receipts: list[list[int]]) -> asyncio.Future[Any]:
        return _answered([{"ok": True} for _ in receipts])


class _ReadyGroup:
    def query(self, reader: Any) -> int:
        return 0  # next_visible_at: a message is ready now


def _partition() -> LocalPartition:
    partition = object.__new__(LocalPartition)  # without a Raft group: only the request-to-command work runs
    partition.config = QueueConfig()
    partition.partition = 3
    partition.queue_id = 17
    partition.batcher = _AnsweringBatcher()
    partition.group = _ReadyGroup()
    return partition


async def _send(rounds: int) -> None:
    partition = _partition()
    args = {"queue": "orders", "partition": 3, "batch_id": "b-1", "messages": [{"body": BODY}] * BATCH}
    for _ in range(rounds):
        request = requests.parse("send", args)
        results = await partition.send(list(request.messages), request.batch_id)
        assert len(results) == BATCH


async def _receive(rounds: int) -> None:
    partition = _partition()
    for _ in range(rounds):
        request = requests.parse("receive", {"queue": "orders", "max_messages": BATCH, "partition": 3})
        messages = await partition.receive(request.max_messages, request.visibility_ms, 0, request.max_bytes)
        delete = requests.parse("delete", {"queue": "orders", "receipts": [m["receipt"] for m in messages]})
        results = await partition.delete(list(delete.receipts))
        assert results == [{"ok": True}] * BATCH


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("path", choices=("send", "receive"))
    parser.add_argument("rounds", type=int)
    options = parser.parse_args()
    asyncio.run((_send if options.path == "send" else _receive)(options.rounds))


if __name__ == "__main__":
    main()
