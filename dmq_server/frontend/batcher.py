"""Group commit: concurrent requests for one partition coalesce into one Raft command.

Requests of one kind (send, delete, change visibility, or receive with one visibility timeout) that arrive while
the partition already has `max_in_flight` commands of that kind waiting for commit, or in the same event-loop
iteration, are appended to one pending command. The command is submitted when a slot frees up or at the end of
the iteration; its per-entry results are split back to the requests in order. A lone request is submitted at once,
so coalescing adds no latency when there is no contention. A send with a batch id stays one segment of the merged
enqueue, named in the command's "batches" ([batch_id, first, count]), so the partition can recognise a retry.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from dmq_client.protocol import ErrorCode
from dmq_server.raft.group import AckMode, PartitionGroup, RaftUnavailable

from .requests import RequestError, error_code

MAX_COMMAND_ENTRIES = 1_000
MAX_COMMAND_BYTES = 1 << 20  # well under the group's 2 MiB command limit, with room for the envelope
COMMIT_TIMEOUT = 10.0


class _Batch:
    __slots__ = ("op", "field", "extra", "entries", "bytes", "waiters", "segments")

    def __init__(self, op: str, field: str, extra: dict[str, Any]) -> None:
        self.op = op
        self.field = field
        self.extra = extra
        self.entries: list[Any] = []
        self.bytes = 0
        # (future, first entry, entry count or receive share)
        self.waiters: list[tuple[asyncio.Future[list[Any]], int, int]] = []
        self.segments: list[list[Any]] = []  # enqueue: [batch_id, first entry, count] of sends with a batch id


class PartitionBatcher:
    """Coalesces the commands of one partition group. All methods run on the event loop's thread."""

    def __init__(self, loop: asyncio.AbstractEventLoop, group: PartitionGroup, ack: AckMode,
                 leader_hint: Callable[[], str | None], max_in_flight: int = 2) -> None:
        self._loop = loop
        self._group = group
        self.ack = ack  # of sends; the queue's ack_mode, which update_queue may change
        self._leader_hint = leader_hint
        self._max_in_flight = max_in_flight
        self._pending: dict[tuple[str, Any], _Batch] = {}
        self._in_flight: dict[tuple[str, Any], int] = {}
        self._scheduled: set[tuple[str, Any]] = set()
        self.on_enqueued: Callable[[], None] = lambda: None  # wakes long polls once new messages commit

    def enqueue(self, entries: list[list[Any]], size: int,
                batch_id: bytes | None = None) -> asyncio.Future[list[Any]]:
        """`batch_id`: the send's idempotency key (UTF-8), applied by the partition to exactly these entries."""
        if batch_id is None:
            return self._add(("enqueue", None), "messages", {}, entries, size, len(entries))
        return self._add(("enqueue", None), "messages", {}, entries, size + len(batch_id) + 16, len(entries),
                         batch_id)

    def delete(self, receipts: list[list[int]]) -> asyncio.Future[list[Any]]:
        return self._add(("delete", None), "receipts", {}, receipts, 24 * len(receipts), len(receipts))

    def change_visibility(self, entries: list[list[int]]) -> asyncio.Future[list[Any]]:
        return self._add(("change_visibility", None), "entries", {}, entries, 32 * len(entries), len(entries))

    def receive(self, count: int, visibility_ms: int | None, max_bytes: int) -> asyncio.Future[list[Any]]:
        """A share of one receive command: up to `count` messages, in the order the partition picks them.
        Shares merge only with equal byte budgets, and the command's budget is that one budget (not a sum): all
        shares together stay within it, so each answer does too."""
        key = ("receive", (visibility_ms, max_bytes))
        batch = self._pending.get(key)
        if batch is not None and sum(share for _, _, share in batch.waiters) + count > MAX_COMMAND_ENTRIES:
            self._flush(key, force=True)
        return self._add(key, "max", {"visibility_ms": visibility_ms, "max_bytes": max_bytes}, [], 0, count)

    # ------------------------------------------------------------------ batching

    def _add(self, key: tuple[str, Any], field: str, extra: dict[str, Any], entries: list[Any], size: int,
             share: int, batch_id: bytes | None = None) -> asyncio.Future[list[Any]]:
        batch = self._pending.get(key)
        if batch is not None and (len(batch.entries) + len(entries) > MAX_COMMAND_ENTRIES
                                  or batch.bytes + size > MAX_COMMAND_BYTES):
            self._flush(key, force=True)
            batch = None
        if batch is None:
            batch = self._pending[key] = _Batch(key[0], field, extra)
        future: asyncio.Future[list[Any]] = self._loop.create_future()
        batch.waiters.append((future, len(batch.entries), share))
        if batch_id is not None:
            batch.segments.append([batch_id, len(batch.entries), len(entries)])
        batch.entries.extend(entries)
        batch.bytes += size
        if key not in self._scheduled:
            self._scheduled.add(key)
            self._loop.call_soon(self._flush, key)
        return future

    def _flush(self, key: tuple[str, Any], force: bool = False) -> None:
        self._scheduled.discard(key)
        if not force and self._in_flight.get(key, 0) >= self._max_in_flight:
            return  # submitted when a command of this kind commits
        batch = self._pending.pop(key, None)
        if batch is None:
            return
        if batch.op == "receive":
            command = {"op": "receive", "now": _now_ms(), "max": sum(share for _, _, share in batch.waiters),
                       **batch.extra}
        else:
            command = {"op": batch.op, "now": _now_ms(), batch.field: batch.entries, **batch.extra}
            if batch.segments:
                command["batches"] = batch.segments
        self._in_flight[key] = self._in_flight.get(key, 0) + 1
        # Reads must see their own effects: receives and deletes wait for the commit even in leader-ack mode.
        ack = self.ack if batch.op == "enqueue" else AckMode.QUORUM
        handle = self._loop.call_later(COMMIT_TIMEOUT, self._timed_out, key, batch)
        try:
            self._group.submit(command, lambda outcome: self._loop.call_soon_threadsafe(
                self._committed, key, batch, outcome, handle), ack)
        except RaftUnavailable as exc:
            handle.cancel()
            self._committed(key, batch, {"error": exc.code, "message": str(exc)}, None)

    def _timed_out(self, key: tuple[str, Any], batch: _Batch) -> None:
        self._committed(key, batch, {"error": ErrorCode.TIMEOUT.value,
                                     "message": f"not committed within {COMMIT_TIMEOUT:.0f} s; the outcome is "
                                                "unknown, retry with the same batch_id or dedup ids"}, None)

    def _committed(self, key: tuple[str, Any], batch: _Batch, outcome: dict[str, Any],
                   handle: asyncio.TimerHandle | None) -> None:
        if handle is not None:
            handle.cancel()
        if not batch.waiters:  # already answered (timed out)
            return
        waiters, batch.waiters = batch.waiters, []
        self._in_flight[key] -= 1
        if key in self._pending and key not in self._scheduled:
            self._flush(key)
        if "accepted" in outcome:  # leader-ack mode: durable on the leader; ids are not known yet
            results: list[Any] = [{"accepted": True}] * len(batch.entries)
        elif "result" in outcome:
            results = outcome["result"]
        else:
            error = _error_of(outcome, self._leader_hint)
            for future, _, _ in waiters:
                if not future.done():
                    future.set_exception(error)
            return
        if batch.op == "enqueue" and results:
            self.on_enqueued()
        offset = 0
        for future, first, share in waiters:
            if batch.op == "receive":
                part, offset = results[offset:offset + share], offset + min(share, max(0, len(results) - offset))
            else:
                part = results[first:first + share]
            if not future.done():
                future.set_result(part)


def _error_of(outcome: dict[str, Any], leader_hint: Callable[[], str | None]) -> RequestError:
    code = outcome.get("error", ErrorCode.INTERNAL.value)
    typed = error_code(code)
    leader = leader_hint() if typed == ErrorCode.NOT_LEADER else None  # a client address, not a Raft one
    return RequestError(typed, str(outcome.get("message", code)), leader)


def _now_ms() -> int:
    return int(time.time() * 1000)
