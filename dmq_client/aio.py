"""AsyncClient: the asyncio SDK. Client (dmq_client.client) runs one of these on a background event loop.

    async with AsyncClient(["127.0.0.1:7400"]) as dmq:
        await dmq.create_queue("jobs", partitions=4)
        await dmq.send("jobs", b"hello")
        for msg in await dmq.receive("jobs", max_messages=10, wait_seconds=5):
            async with msg:          # deleted when the block succeeds, released when it raises
                await handle(msg.body)

Sends are idempotent across retries: every send request carries a batch id the partition remembers for the
queue's dedup window, so a retry after a failover or a timeout returns the first attempt's ids instead of
enqueueing again. Concurrent sends and deletes are batched per partition (`linger`, `max_batch`).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import signal
import ssl
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from types import TracebackType
from typing import Any

from . import protocol
from .batching import Coalescer
from .concurrency import await_all
from .connection import CLIENT_NAME
from .errors import (DmqError, InvalidReceipt, NotLeader, QueueNotFound, TooManyRequests, error_from,
                     raise_for_batch)
from .leases import LeaseKeeper
from .message import AsyncMessage
from .model import Body, PeekedMessage, QueueInfo, SendEntry, as_entry, wire_message
from .routing import QueueRoute, Router

log = logging.getLogger("dmq_client")

MAX_BATCH = 1_000  # the protocol's per-request message limit
MAX_BATCH_BYTES = 1 << 20  # well under a partition command's 2 MiB
DEFAULT_VISIBILITY_MS = 30_000  # a queue's visibility_timeout_ms when created without one (docs/PROTOCOL.md)
RECEIVE_MARGIN = 5.0  # seconds a receive may take beyond its wait before it counts as timed out
CONSUME_WAIT = 5.0  # consume()'s long poll: also the longest a drain waits for a receive in flight
MAX_CONSUME_FETCH = 100


class AsyncClient:
    """The asyncio client. Connections open on first use; use `async with` or `await close()`.

    nodes: seed nodes, "host:port" (one is enough; the rest of the cluster is found through it).
    request_timeout: seconds one attempt may take. retry_seconds: how long an operation keeps retrying
    NotLeader / Unavailable / timeouts before it raises. linger: seconds a send or delete waits for others to
    batch with (0: only those issued in the same event-loop iteration, or while earlier batches are out).
    max_in_flight_batches: requests of automatic batches out at once per queue partition; more concurrent sends
    or deletes wait in the client (and fill bigger batches) rather than pile onto the partition's leader.
    """

    def __init__(self, nodes: Sequence[str] | str, token: str | None = None, tls: ssl.SSLContext | None = None,
                 *, request_timeout: float = 10.0, retry_seconds: float = 30.0, connect_timeout: float = 5.0,
                 linger: float = 0.0, max_batch: int = MAX_BATCH, max_in_flight_batches: int = 4,
                 client_name: str = CLIENT_NAME) -> None:
        if not 1 <= max_batch <= MAX_BATCH:
            raise ValueError(f"max_batch must be from 1 to {MAX_BATCH}")
        if linger < 0 or request_timeout <= 0 or retry_seconds < 0:
            raise ValueError("linger, request_timeout and retry_seconds must be positive")
        self._router = Router(nodes, token, tls, request_timeout=request_timeout, retry_seconds=retry_seconds,
                              connect_timeout=connect_timeout, client_name=client_name)
        self._sends: Coalescer[tuple[str, int | None]] = Coalescer(
            self._flush_sends, linger=linger, max_items=max_batch, max_bytes=MAX_BATCH_BYTES,
            max_in_flight=max_in_flight_batches)
        self._deletes: Coalescer[tuple[str, int]] = Coalescer(
            self._flush_deletes, linger=linger, max_items=MAX_BATCH, max_bytes=1 << 30,
            max_in_flight=max_in_flight_batches)
        self._leases = LeaseKeeper(self._change_visibility_one)
        # Batch and purge ids: unique per client instance (random) and per request (counter); at most 33 characters.
        self._batch_prefix = os.urandom(8).hex()
        self._batch_numbers = itertools.count(1)
        self._turn = itertools.count()
        self._closed = False

    # ------------------------------------------------------------------ lifecycle

    async def close(self) -> None:
        """Send what is batched, wait for it, then close every connection."""
        if self._closed:
            return
        await self._sends.drain()
        await self._deletes.drain()
        await self._leases.close()
        self._closed = True
        await self._router.close()

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    # ------------------------------------------------------------------ queues

    async def create_queue(self, name: str, **attributes: Any) -> QueueInfo:
        """Create a queue (attributes as in the protocol: partitions, max_messages, visibility_timeout_ms, fifo,
        dead_letter_queue, max_receives, ...). Creating an existing queue with the same attributes returns it."""
        description = await self._router.call_any("create_queue", {"name": name, "attributes": attributes})
        self._router.forget(name)
        return QueueInfo.from_wire(description)

    async def update_queue(self, name: str, **attributes: Any) -> QueueInfo:
        """Change attributes of an existing queue: ack_mode, receive_wait_ms, dead_letter_queue, max_receives,
        max_messages, max_message_bytes, retention_ms, visibility_timeout_ms, delay_ms, dedup_window_ms (None:
        back to the default). Its messages stay; the partitions apply the change within about a second. The
        attributes left out keep their values; partitions, replication and fifo cannot change."""
        description = await self._router.call_any("update_queue", {"name": name, "attributes": attributes})
        self._router.forget(name)  # its cached attributes are older
        return QueueInfo.from_wire(description)

    async def delete_queue(self, name: str) -> None:
        """Delete the queue; QueueNotFound when there is none. Retried: after an attempt whose outcome is unknown
        (its answer lost), a retry that finds the queue gone succeeds, as that attempt deleted it (or someone
        else did meanwhile: it is gone either way)."""
        outcome_unknown = False

        async def attempt(number: int) -> None:
            nonlocal outcome_unknown
            conn = await self._router.connection(self._router.any_node())  # failing here, nothing was sent
            try:
                await conn.call("delete_queue", {"name": name}, self._router.request_timeout)
            except QueueNotFound:
                if not outcome_unknown:
                    raise
            except (NotLeader, TooManyRequests):
                raise  # refused: nothing was done
            except DmqError:
                outcome_unknown = True
                raise

        try:
            await self._router.retrying(attempt, "delete_queue")
        finally:
            self._router.forget(name)

    async def list_queues(self, prefix: str = "") -> list[str]:
        return list(await self._router.call_any("list_queues", {"prefix": prefix} if prefix else {}))

    async def get_queue(self, name: str) -> QueueInfo:
        """The queue's description with `stats` summed over its partitions (count, ready, in_flight, delayed,
        bytes, dead_letters, oldest_age_ms)."""
        return QueueInfo.from_wire(await self._router.call_any("get_queue", {"name": name}))

    async def purge_queue(self, name: str) -> int:
        """Delete every message of the queue; returns how many there were. Retried under one purge id: a retry
        after a lost answer reports the first count and deletes nothing sent since."""
        args = {"name": name, "purge_id": f"{self._batch_prefix}-{next(self._batch_numbers)}"}
        return int((await self._router.call_any("purge_queue", args))["purged"])

    async def redrive(self, dead_letter_queue: str, to: str | None = None, max_messages: int = 1_000) -> dict[str, int]:
        """Move messages from a dead-letter queue back to where they came from (or all to `to`)."""
        args: dict[str, Any] = {"queue": dead_letter_queue, "max_messages": max_messages}
        if to is not None:
            args["to"] = to
        return dict(await self._router.call_any("redrive", args))

    async def cluster_status(self) -> dict[str, Any]:
        """Nodes (alive, last heartbeat, partitions led), the metadata leader, and every partition's leader."""
        return dict(await self._router.call_any("cluster_status", {}))

    # ------------------------------------------------------------------ send

    async def send(self, queue: str, body: Body, *, attributes: dict[str, Any] | None = None,
                   dedup_id: str | None = None, group: str | None = None, delay: float = 0) -> str | None:
        """Enqueue one message; returns its id (None on `ack_mode = "leader"` queues, which acknowledge before
        the id is assigned). Concurrent sends to one partition travel in one request."""
        message, size = wire_message(SendEntry(body, attributes, dedup_id, group, delay))
        route = await self._router.route(queue)
        return await self._sends.add((queue, self._keyed_partition(route, message)), message, size)

    async def send_batch(self, queue: str, entries: Iterable[Body | SendEntry | dict[str, Any]]) -> list[str | None]:
        """Enqueue many messages at once: one request per partition involved (up to 1,000 messages each), sent
        together. Returns the ids in order; if some entries failed (e.g. QueueFull) raises BatchError, whose
        `results` hold each entry's id or error."""
        wire = [wire_message(as_entry(entry)) for entry in entries]
        if not wire:
            return []
        route = await self._router.route(queue)
        unkeyed = self._next_partition(route)
        by_partition: dict[int, list[int]] = {}
        for index, (message, _) in enumerate(wire):
            partition = self._keyed_partition(route, message)
            by_partition.setdefault(unkeyed if partition is None else partition, []).append(index)
        requests: list[tuple[int, list[int]]] = []
        for partition, indexes in by_partition.items():
            chunk: list[int] = []
            size = 0
            for index in indexes:
                if chunk and (len(chunk) == MAX_BATCH or size + wire[index][1] > MAX_BATCH_BYTES):
                    requests.append((partition, chunk))
                    chunk, size = [], 0
                chunk.append(index)
                size += wire[index][1]
            requests.append((partition, chunk))
        results: list[Any] = [None] * len(wire)

        async def one(partition: int, indexes: list[int]) -> None:
            try:
                outcomes = await self._send_request(queue, partition, [wire[i][0] for i in indexes])
            except DmqError as exc:
                outcomes = [exc] * len(indexes)
            for index, outcome in zip(indexes, outcomes):
                results[index] = outcome

        await await_all([one(partition, indexes) for partition, indexes in requests])
        return raise_for_batch(f"send_batch to {queue!r}", results)  # type: ignore[return-value]

    def _keyed_partition(self, route: QueueRoute, message: dict[str, Any]) -> int | None:
        """Where the server would route a keyed message (protocol.partition_of_key); None if it has no key."""
        if route.fifo and "group" in message:
            return protocol.partition_of_key(message["group"], route.partitions)
        if "dedup_id" in message:
            return protocol.partition_of_key(message["dedup_id"], route.partitions)
        return None

    def _next_partition(self, route: QueueRoute) -> int:
        """Unkeyed messages: a partition per request, in turn, over the partitions with a known leader."""
        turn = next(self._turn)
        led = [p for p, leader in enumerate(route.leaders) if leader]
        return led[turn % len(led)] if led else turn % route.partitions

    async def _flush_sends(self, key: tuple[str, int | None], messages: list[dict[str, Any]]) -> list[Any]:
        queue, partition = key
        if partition is None:
            partition = self._next_partition(await self._router.route(queue))
        return await self._send_request(queue, partition, messages)

    async def _send_request(self, queue: str, partition: int, messages: list[dict[str, Any]]) -> list[Any]:
        """One send request, retried with the same batch id until it is answered: exactly once."""
        args = {"queue": queue, "partition": partition, "messages": messages,
                "batch_id": f"{self._batch_prefix}-{next(self._batch_numbers)}"}
        answers = await self._router.on_partition(queue, partition, "send", args)
        return [error_from(a["error"]) if "error" in a else a.get("id") for a in answers]

    # ------------------------------------------------------------------ receive

    async def receive(self, queue: str, max_messages: int = 1, wait_seconds: float = 0,
                      visibility_timeout: float | None = None) -> list[AsyncMessage]:
        """Up to `max_messages` messages from any partition, waiting up to `wait_seconds` for the first one.
        Each is invisible to other receivers for `visibility_timeout` seconds (default: the queue's)."""
        if not 1 <= max_messages <= MAX_BATCH:
            raise ValueError(f"max_messages must be from 1 to {MAX_BATCH}")
        args: dict[str, Any] = {"queue": queue, "max_messages": max_messages,
                                "wait_ms": int(round(wait_seconds * 1000))}
        route = await self._router.route(queue)
        # Always explicit: the lease the node grants is then the one the lease keeper times its extensions by,
        # even while this client's copy of the queue's attributes is older than an update_queue.
        if visibility_timeout is None:
            visibility_ms = route.attributes.get("visibility_timeout_ms", DEFAULT_VISIBILITY_MS)
        else:
            visibility_ms = int(round(visibility_timeout * 1000))
        args["visibility_timeout_ms"] = visibility_ms
        visibility = visibility_ms / 1000
        timeout = self._router.request_timeout + wait_seconds + RECEIVE_MARGIN
        deadline = time.monotonic() + self._router.retry_seconds + wait_seconds
        raw = await self._router.on_partition(queue, None, "receive", args, timeout=timeout, deadline=deadline)
        return [AsyncMessage(self, queue, item, visibility) for item in raw]

    async def peek(self, queue: str, max_messages: int = 10, *, partition: int | None = None,
                   after: str | None = None) -> list[PeekedMessage]:
        """The queue's oldest messages in any state (ready, in flight, delayed), without receiving them: no lease
        and no receive count, so a peek never delays or dead-letters a message. Up to `max_messages` of one
        `partition`, or of every partition merged by enqueue time; an answer holds at most about 3 MiB of them.
        `after` (a message id) pages through its partition: the messages that follow it there."""
        if not 1 <= max_messages <= MAX_BATCH:
            raise ValueError(f"max_messages must be from 1 to {MAX_BATCH}")
        args: dict[str, Any] = {"queue": queue, "max_messages": max_messages}
        if after is not None:
            position = protocol.parse_message_id(after)
            if position is None or partition not in (None, position[0]):
                raise ValueError(f"after={after!r} is not the id of a message of the partition peeked")
            partition = position[0]
            args["after"] = after
        if partition is not None:
            args["partition"] = partition
        raw = await self._router.on_partition(queue, partition, "peek", args)
        return [PeekedMessage.from_wire(item) for item in raw]

    # ------------------------------------------------------------------ delete and visibility

    async def delete_batch(self, queue: str, receipts: Iterable[str]) -> None:
        """Delete received messages by receipt (one request per partition). Deleting one already gone is fine;
        a receipt from before a redelivery fails with ReceiptExpired inside a BatchError."""
        receipts = list(receipts)
        results: list[Any] = [None] * len(receipts)
        by_partition: dict[int, list[int]] = {}
        for index, receipt in enumerate(receipts):
            parsed = protocol.parse_receipt(receipt)
            if parsed is None:
                results[index] = InvalidReceipt(f"{receipt!r} is not a receipt")
            else:
                by_partition.setdefault(parsed[1], []).append(index)

        async def one(partition: int, indexes: list[int]) -> None:
            for start in range(0, len(indexes), MAX_BATCH):
                chunk = indexes[start:start + MAX_BATCH]
                try:
                    outcomes = await self._flush_deletes((queue, partition), [receipts[i] for i in chunk])
                except DmqError as exc:
                    outcomes = [exc] * len(chunk)
                for index, outcome in zip(chunk, outcomes):
                    results[index] = outcome

        await await_all([one(p, ix) for p, ix in by_partition.items()])
        raise_for_batch(f"delete_batch on {queue!r}", results)

    async def _delete_one(self, message: AsyncMessage) -> None:
        parsed = protocol.parse_receipt(message.receipt)
        if parsed is None:
            raise InvalidReceipt(f"{message.receipt!r} is not a receipt")
        self._leases.drop(message)
        await self._deletes.add((message.queue, parsed[1]), message.receipt, len(message.receipt))

    async def _flush_deletes(self, key: tuple[str, int], receipts: list[str]) -> list[Any]:
        queue, partition = key
        answers = await self._router.on_partition(queue, partition, "delete", {"queue": queue, "receipts": receipts})
        return [error_from(a["error"]) if "error" in a else None for a in answers]

    async def _change_visibility_one(self, message: AsyncMessage, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("a visibility timeout must be >= 0 seconds")
        parsed = protocol.parse_receipt(message.receipt)
        if parsed is None:
            raise InvalidReceipt(f"{message.receipt!r} is not a receipt")
        started = time.monotonic()
        answers = await self._router.on_partition(
            message.queue, parsed[1], "change_visibility",
            {"queue": message.queue, "entries": [[message.receipt, int(round(seconds * 1000))]]})
        if "error" in answers[0]:
            raise error_from(answers[0]["error"])
        message.lease_deadline = started + seconds
        if seconds == 0:
            self._leases.drop(message)

    # ------------------------------------------------------------------ workers

    async def consume(self, queue: str, handler: Callable[[AsyncMessage], Awaitable[Any]], concurrency: int = 1,
                      *, visibility_timeout: float | None = None, wait_seconds: float = CONSUME_WAIT,
                      stop: asyncio.Event | None = None, handle_signals: bool = True) -> int:
        """Run `handler` on every message of `queue`, up to `concurrency` at a time, each inside `async with
        msg:` (deleted on success, released on an exception, its lease kept while it runs). Returns the number
        handled successfully once `stop` is set or, with `handle_signals`, SIGTERM/SIGINT arrives: no new
        messages are taken, and the handlers running are awaited (a graceful drain)."""
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        stop = stop or asyncio.Event()
        loop = asyncio.get_running_loop()
        installed = _install_stop_signals(loop, stop) if handle_signals else []
        slots = asyncio.Semaphore(concurrency)
        running: set[asyncio.Task[bool]] = set()
        handled = 0

        async def run(message: AsyncMessage) -> bool:
            try:
                async with message:
                    await handler(message)
                return True
            except Exception as exc:
                log.exception("handler failed on %s/%s: %s", queue, message.id, exc)
                return False
            finally:
                slots.release()

        def finished(task: asyncio.Task[bool]) -> None:
            nonlocal handled
            running.discard(task)
            if not task.cancelled() and task.exception() is None and task.result():
                handled += 1

        try:
            while not stop.is_set():
                if not await _acquire_or_stop(slots, stop):
                    break
                if stop.is_set():
                    slots.release()
                    break
                free = 1
                while free < min(concurrency, MAX_CONSUME_FETCH) and not slots.locked():
                    await slots.acquire()
                    free += 1
                try:
                    messages = await self.receive(queue, max_messages=free, wait_seconds=wait_seconds,
                                                  visibility_timeout=visibility_timeout)
                except QueueNotFound:
                    raise
                except DmqError as exc:  # retries are spent: wait a little and go on, a worker must not die
                    log.warning("receive from %s failed: %s", queue, exc)
                    messages = []
                    await _sleep_or_stop(1.0, stop)
                for _ in range(free - len(messages)):
                    slots.release()
                for message in messages:
                    if stop.is_set():  # arrived during the drain: give it back untouched
                        slots.release()
                        await _quietly(message.release())
                        continue
                    task = asyncio.ensure_future(run(message))
                    running.add(task)
                    task.add_done_callback(finished)
        finally:
            for signum in installed:
                loop.remove_signal_handler(signum)
            if running:
                await asyncio.gather(*list(running), return_exceptions=True)
        return handled


def _install_stop_signals(loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> list[int]:
    installed = []
    for signum in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(signum, stop.set)
            installed.append(signum)
        except (NotImplementedError, RuntimeError, ValueError):  # not the main thread's loop
            pass
    return installed


async def _acquire_or_stop(slots: asyncio.Semaphore, stop: asyncio.Event) -> bool:
    """Take a handler slot; False (holding none) once stop is set first."""
    if stop.is_set():
        return False
    acquire = asyncio.ensure_future(slots.acquire())
    stopped = asyncio.ensure_future(stop.wait())
    await asyncio.wait({acquire, stopped}, return_when=asyncio.FIRST_COMPLETED)
    stopped.cancel()
    if acquire.done():
        return True
    acquire.cancel()
    try:
        await acquire
    except asyncio.CancelledError:
        return False
    return True  # acquired just before the cancel took effect


async def _sleep_or_stop(seconds: float, stop: asyncio.Event) -> None:
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except asyncio.TimeoutError:
        pass


async def _quietly(operation: Awaitable[Any]) -> None:
    try:
        await operation
    except DmqError as exc:
        log.warning("during the drain: %s", exc)
