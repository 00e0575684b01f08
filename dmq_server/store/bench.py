"""Store benchmark: throughput of `apply` for enqueue and receive+delete, and head-read latency after many
consumed messages. Run as `dmq bench-store`; figures go to docs/BENCHMARKS.md."""

from __future__ import annotations

import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

from .partition import PartitionStore

BASE_TIME_MS = 1_700_000_000_000


class _Clock:
    """Command time for the benchmark: real elapsed time, so retention and deadlines behave as in service."""

    def __init__(self) -> None:
        self._start = time.monotonic()

    def now(self) -> int:
        return BASE_TIME_MS + int((time.monotonic() - self._start) * 1000)


def _enqueue_command(now: int, batch: int, body: bytes, batch_id: bytes | None = None) -> dict[str, Any]:
    command = {"op": "enqueue", "now": now, "messages": [[body, None, None, None, None]] * batch}
    if batch_id is not None:  # the whole command is one send with an idempotency key
        command["batches"] = [[batch_id, 0, batch]]
    return command


def run(directory: str, *, messages: int, batch: int, body_bytes: int, consumed: int, batch_ids: bool = False,
        progress: Callable[[str], None] = lambda line: None) -> dict[str, Any]:
    """`batch_ids`: every enqueue command of the enqueue run carries a batch id (an idempotent send)."""
    clock = _Clock()
    body = os.urandom(body_bytes)
    store = PartitionStore(os.path.join(directory, "bench"))
    index = 0

    def apply(command: dict[str, Any]) -> Any:
        nonlocal index
        index += 1
        return store.apply(index, command)

    apply({"op": "configure", "now": clock.now(), "attrs": {"max_messages": 100_000_000}})
    results: dict[str, Any] = {"batch": batch, "body_bytes": body_bytes, "batch_ids": batch_ids}

    started = time.perf_counter()
    for number in range(messages // batch):
        apply(_enqueue_command(clock.now(), batch, body, b"bench-%d" % number if batch_ids else None))
    elapsed = time.perf_counter() - started
    results["enqueue_msgs_per_s"] = round(messages / elapsed)
    progress(f"enqueue{' with a batch id per command' if batch_ids else ''}: "
             f"{results['enqueue_msgs_per_s']:,} msgs/s")

    started = time.perf_counter()
    received = 0
    while received < messages:
        delivered = apply({"op": "receive", "now": clock.now(), "max": batch, "visibility_ms": 60_000})
        if not delivered:
            break
        received += len(delivered)
        apply({"op": "delete", "now": clock.now(), "receipts": [m["receipt"] for m in delivered]})
    elapsed = time.perf_counter() - started
    assert received == messages, f"received {received} of {messages}"
    results["receive_delete_msgs_per_s"] = round(received / elapsed)
    progress(f"receive+delete: {results['receive_delete_msgs_per_s']:,} msgs/s")

    # Head read after `consumed` messages went through the queue (consumed = received and deleted).
    remaining = max(0, consumed - messages)
    while remaining > 0:
        n = min(1000, remaining)
        apply({"op": "enqueue", "now": clock.now(), "messages": [[body, None, None, None, None]] * n})
        delivered = apply({"op": "receive", "now": clock.now(), "max": n, "visibility_ms": 60_000})
        apply({"op": "delete", "now": clock.now(), "receipts": [m["receipt"] for m in delivered]})
        remaining -= n
    apply({"op": "enqueue", "now": clock.now(), "messages": [[body, None, None, None, None]] * 200})
    latencies = []
    for _ in range(200):
        started = time.perf_counter()
        delivered = apply({"op": "receive", "now": clock.now(), "max": 1, "visibility_ms": 60_000})
        latencies.append((time.perf_counter() - started) * 1000)
        assert len(delivered) == 1
    latencies.sort()
    results["consumed_before_head_read"] = max(consumed, messages)
    results["head_read_p50_ms"] = round(statistics.median(latencies), 4)
    results["head_read_p99_ms"] = round(latencies[int(len(latencies) * 0.99) - 1], 4)
    progress(f"head read after {results['consumed_before_head_read']:,} consumed: "
             f"p50 {results['head_read_p50_ms']} ms, p99 {results['head_read_p99_ms']} ms")
    store.close()
    return results


def run_in_temp(**kwargs: Any) -> dict[str, Any]:
    directory = tempfile.mkdtemp(prefix="dmq-bench-")
    try:
        return run(directory, **kwargs)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
