"""`dmq bench`: producers and consumers against a running cluster, through the SDK, as a user would run them.

Three phases on a fresh queue (deleted afterwards unless --keep-queue):
1. throughput send: `producers` tasks, each with one `send_batch` of `batch` messages in flight at a time;
2. receive+delete: `consumers` tasks, each receiving up to 100 and deleting them with one `delete_batch` (which
   runs while the consumer receives its next batch, as acknowledgements do in most clients: one in flight);
3. latency: sequential single `send`s (one in flight), then drained too.
Every body starts with a unique 8-byte number, so the run ends with an exact account: `lost` counts
acknowledged messages never received (must be 0), `duplicates` deliveries of one message beyond the first.
"""

from __future__ import annotations

import asyncio
import os
import struct
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from dmq_client import AsyncClient, BatchError, DmqError

_SEQ = struct.Struct(">Q")
HISTOGRAM_EDGES_MS = (0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)
IDLE_SECONDS = 10.0  # the receive phase ends when this long passes without a message (all lost then)
# A receive whose answer is lost (its partition's leader changed while it ran: outcome unknown to the consumer)
# leaves its messages invisible for their visibility timeout. Well below IDLE_SECONDS, they come back within the
# phase, so `lost` counts only messages that never come back.
RECEIVE_VISIBILITY_SECONDS = 5.0


@dataclass
class Latencies:
    samples: list[float] = field(default_factory=list)  # seconds

    def percentile(self, fraction: float) -> float:
        if not self.samples:
            return 0.0
        ordered = sorted(self.samples)
        return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] * 1000

    def histogram(self) -> dict[str, int]:
        counts = {f"<{edge:g}": 0 for edge in HISTOGRAM_EDGES_MS}
        counts[f">={HISTOGRAM_EDGES_MS[-1]:g}"] = 0
        for sample in self.samples:
            ms = sample * 1000
            for edge in HISTOGRAM_EDGES_MS:
                if ms < edge:
                    counts[f"<{edge:g}"] += 1
                    break
            else:
                counts[f">={HISTOGRAM_EDGES_MS[-1]:g}"] += 1
        return counts


class Progress:
    """A progress bar on stderr for phases longer than a moment (silent with --json)."""

    def __init__(self, enabled: bool, label: str, total: int) -> None:
        self.enabled = enabled and total > 0
        self.label = label
        self.total = total
        self.done = 0
        self._last = 0.0

    def advance(self, count: int) -> None:
        self.done += count
        now = time.monotonic()
        if self.enabled and (now - self._last > 0.5 or self.done >= self.total):
            self._last = now
            width = 30
            filled = int(width * min(1.0, self.done / self.total))
            sys.stderr.write(f"\r{self.label:<16} [{'#' * filled}{'.' * (width - filled)}] "
                             f"{self.done:>10,}/{self.total:,}")
            if self.done >= self.total:
                sys.stderr.write("\n")
            sys.stderr.flush()


def _body(sequence: int, body_bytes: int) -> bytes:
    return _SEQ.pack(sequence) + b"x" * max(0, body_bytes - _SEQ.size)


async def run(nodes: list[str], token: str | None, *, messages: int, body_bytes: int, batch: int, producers: int,
              consumers: int, receive_batch: int, partitions: int, latency_sends: int, queue: str | None,
              keep_queue: bool, show_progress: bool, log: Callable[[str], None]) -> dict[str, Any]:
    if body_bytes < _SEQ.size:
        raise ValueError(f"--body-bytes must be at least {_SEQ.size} (the message number)")
    name = queue or f"bench-{os.urandom(4).hex()}"
    async with AsyncClient(nodes, token) as client:
        # max_message_bytes sized to the bodies: a receive's answer is sized by it (see PROTOCOL.md receive)
        info = await client.create_queue(name, partitions=partitions, max_messages=max(1_000_000, 2 * messages),
                                         max_message_bytes=max(1024, body_bytes + 512))
        log(f"queue {name}: {len(info.partitions)} partitions, ack_mode "
            f"{info.attributes.get('ack_mode', 'quorum')}, replicas {len(info.partitions[0].replicas)}")
        try:
            sent: set[int] = set()
            send_seconds, batch_latency, failed = await _send_phase(
                client, name, messages, body_bytes, batch, producers, sent, Progress(show_progress, "send", messages))
            latency = Latencies()
            for i in range(latency_sends):
                sequence = messages + i
                started = time.perf_counter()
                await client.send(name, _body(sequence, body_bytes))
                latency.samples.append(time.perf_counter() - started)
                sent.add(sequence)
            received, duplicates, receive_seconds = await _receive_phase(
                client, name, len(sent), consumers, receive_batch,
                Progress(show_progress, "receive+delete", len(sent)))
        finally:
            if not keep_queue:
                await client.delete_queue(name)
    lost = len(sent - received)
    return {
        "nodes": nodes,
        "queue": name,
        "partitions": partitions,
        "messages": len(sent),
        "body_bytes": body_bytes,
        "batch": batch,
        "producers": producers,
        "consumers": consumers,
        "receive_batch": receive_batch,
        "send_msgs_per_s": round(messages / send_seconds) if send_seconds else 0,
        "send_failed": failed,
        "send_batch_p50_ms": round(batch_latency.percentile(0.5), 3),
        "send_batch_p99_ms": round(batch_latency.percentile(0.99), 3),
        "receive_msgs_per_s": round(len(received) / receive_seconds) if receive_seconds else 0,
        "send_p50_ms": round(latency.percentile(0.5), 3),
        "send_p99_ms": round(latency.percentile(0.99), 3),
        "send_latency_histogram_ms": latency.histogram(),
        "send_batch_latency_histogram_ms": batch_latency.histogram(),
        "lost": lost,
        "duplicates": duplicates,
    }


async def _send_phase(client: AsyncClient, queue: str, messages: int, body_bytes: int, batch: int,
                      producers: int, sent: set[int], progress: Progress) -> tuple[float, Latencies, int]:
    latency = Latencies()
    next_sequence = 0
    failed = 0

    async def producer() -> None:
        nonlocal next_sequence, failed
        while next_sequence < messages:
            first = next_sequence
            count = min(batch, messages - first)
            next_sequence += count
            started = time.perf_counter()
            try:
                await client.send_batch(queue, [_body(first + i, body_bytes) for i in range(count)])
                sent.update(range(first, first + count))
            except BatchError as exc:  # count what failed; the rest was acknowledged
                for i, result in enumerate(exc.results):
                    if isinstance(result, DmqError):
                        failed += 1
                    else:
                        sent.add(first + i)
            except DmqError:
                failed += count
            latency.samples.append(time.perf_counter() - started)
            progress.advance(count)

    started = time.perf_counter()
    await asyncio.gather(*(producer() for _ in range(producers)))
    return time.perf_counter() - started, latency, failed


async def _receive_phase(client: AsyncClient, queue: str, expected: int, consumers: int, receive_batch: int,
                         progress: Progress) -> tuple[set[int], int, float]:
    received: set[int] = set()
    duplicates = 0
    last_message = time.monotonic()

    async def consumer() -> None:
        nonlocal duplicates, last_message
        deleting: asyncio.Future[None] | None = None  # the previous batch's delete, overlapping this receive
        while len(received) < expected and time.monotonic() - last_message < IDLE_SECONDS:
            batch = await client.receive(queue, max_messages=receive_batch, wait_seconds=1,
                                         visibility_timeout=RECEIVE_VISIBILITY_SECONDS)
            if not batch:
                continue
            last_message = time.monotonic()
            if deleting is not None:
                await deleting
            deleting = asyncio.ensure_future(client.delete_batch(queue, [m.receipt for m in batch]))
            for message in batch:
                sequence = _SEQ.unpack_from(message.body)[0]
                if sequence in received:
                    duplicates += 1
                received.add(sequence)
            progress.advance(len(batch))
        if deleting is not None:
            await deleting

    started = time.perf_counter()
    await asyncio.gather(*(consumer() for _ in range(consumers)))
    return received, duplicates, time.perf_counter() - started - (
        IDLE_SECONDS if len(received) < expected else 0)


def report(results: dict[str, Any]) -> str:
    lines = [
        f"{results['messages']:,} messages of {results['body_bytes']} B on {results['partitions']} partitions "
        f"({', '.join(results['nodes'])})",
        f"send            {results['send_msgs_per_s']:>10,} msgs/s   ({results['producers']} producers, batches of "
        f"{results['batch']}; batch p50 {results['send_batch_p50_ms']} ms, p99 {results['send_batch_p99_ms']} ms)",
        f"receive+delete  {results['receive_msgs_per_s']:>10,} msgs/s   ({results['consumers']} consumers)",
        f"single send     p50 {results['send_p50_ms']} ms, p99 {results['send_p99_ms']} ms",
        f"lost {results['lost']}, duplicates {results['duplicates']}, send failures {results['send_failed']}",
        "single-send latency histogram (ms):",
    ]
    total = sum(results["send_latency_histogram_ms"].values()) or 1
    for bucket, count in results["send_latency_histogram_ms"].items():
        if count:
            lines.append(f"  {bucket:>7} {count:>8,} {'#' * max(1, round(40 * count / total))}")
    return "\n".join(lines)
