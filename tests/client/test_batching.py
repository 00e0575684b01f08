"""The SDK's automatic batching (dmq_client.batching.Coalescer), without a cluster: a fake flush records what
travels and how many requests of a key are out at once."""

from __future__ import annotations

import asyncio
from typing import Any

from dmq_client.batching import Coalescer
from dmq_client.errors import QueueFull


class RecordingFlush:
    def __init__(self) -> None:
        self.batches: list[list[Any]] = []
        self.out = 0
        self.most_out = 0

    async def __call__(self, key: str, items: list[Any]) -> list[Any]:
        self.batches.append(list(items))
        self.out += 1
        self.most_out = max(self.most_out, self.out)
        await asyncio.sleep(0.01)
        self.out -= 1
        return [QueueFull("full") if item == "bad" else item.upper() for item in items]


def run(coroutine: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coroutine, 10))


def test_full_batches_wait_for_a_free_request_slot() -> None:
    async def burst() -> tuple[RecordingFlush, list[Any]]:
        flush = RecordingFlush()
        coalescer: Coalescer[str] = Coalescer(flush, linger=0, max_items=2, max_bytes=1 << 20, max_in_flight=1)
        futures = [coalescer.add("k", f"m{i}", 2) for i in range(10)]
        return flush, await asyncio.gather(*futures)

    flush, results = run(burst())
    assert results == [f"M{i}" for i in range(10)]
    assert flush.most_out == 1, f"{flush.most_out} requests of one key were out at once (max_in_flight is 1)"
    assert [item for batch in flush.batches for item in batch] == [f"m{i}" for i in range(10)]  # in order
    assert all(len(batch) <= 2 for batch in flush.batches)


def test_a_lone_item_goes_out_at_once_and_errors_reach_only_their_item() -> None:
    async def two() -> tuple[RecordingFlush, Any, BaseException | None]:
        flush = RecordingFlush()
        coalescer: Coalescer[str] = Coalescer(flush, linger=0, max_items=10, max_bytes=1 << 20, max_in_flight=2)
        good, bad = coalescer.add("k", "ok", 2), coalescer.add("k", "bad", 3)
        done = await asyncio.gather(good, bad, return_exceptions=True)
        return flush, done[0], done[1]

    flush, good, bad = run(two())
    assert flush.batches == [["ok", "bad"]]  # added in one loop iteration: one request
    assert good == "OK" and isinstance(bad, QueueFull)


def test_drain_sends_everything_queued() -> None:
    async def drained() -> tuple[RecordingFlush, list[Any]]:
        flush = RecordingFlush()
        coalescer: Coalescer[str] = Coalescer(flush, linger=5.0, max_items=3, max_bytes=1 << 20, max_in_flight=1)
        futures = [coalescer.add(key, f"{key}{i}", 1) for i in range(7) for key in ("a", "b")]
        await coalescer.drain()
        assert all(future.done() for future in futures)
        return flush, [future.result() for future in futures]

    flush, results = run(drained())
    assert sorted(results) == sorted(f"{key}{i}".upper() for i in range(7) for key in ("A", "B"))
    assert flush.most_out <= 2  # one request per key at a time, also while draining
