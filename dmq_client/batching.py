"""Automatic batching: many concurrent single operations become one request per partition, the way Kafka
producers batch.

An item waits until its key's batch is flushed: after `linger` seconds (0: at the end of the current event-loop
iteration), at once when the batch is full, or — when `max_in_flight` requests of that key are already
unanswered — as soon as one of them returns. Under load batches grow by themselves; a lone item goes out
without delay. Full batches wait their turn too: a key never has more than `max_in_flight` requests out, so a
burst of concurrent callers queues here instead of piling requests onto one partition leader.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Awaitable, Callable, Hashable
from typing import Any, Generic, TypeVar

from .errors import DmqError

Key = TypeVar("Key", bound=Hashable)

# flush(key, items) -> one outcome per item: a value, or the DmqError for that item alone
Flush = Callable[[Any, list[Any]], Awaitable[list[Any]]]


class _Pending:
    __slots__ = ("items", "futures", "bytes", "timer", "due")

    def __init__(self) -> None:
        self.items: list[Any] = []
        self.futures: list[asyncio.Future[Any]] = []
        self.bytes = 0
        self.timer: asyncio.Handle | None = None
        self.due = False  # its linger ended (or it is full) while max_in_flight requests were out


class Coalescer(Generic[Key]):
    def __init__(self, flush: Flush, *, linger: float, max_items: int, max_bytes: int, max_in_flight: int) -> None:
        assert linger >= 0 and max_items >= 1 and max_bytes >= 1 and max_in_flight >= 1
        self._flush_fn = flush
        self._linger = linger
        self._max_items = max_items
        self._max_bytes = max_bytes
        self._max_in_flight = max_in_flight
        self._pending: dict[Key, _Pending] = {}  # the batch still taking items, per key
        self._full: dict[Key, collections.deque[_Pending]] = {}  # full batches waiting for a free request slot
        self._in_flight: dict[Key, int] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def add(self, key: Key, item: Any, size: int) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        pending = self._pending.get(key)
        if pending is not None and (len(pending.items) >= self._max_items
                                    or pending.bytes + size > self._max_bytes):
            self._seal(key)  # full: this one starts the next batch
            pending = None
        if pending is None:
            pending = self._pending[key] = _Pending()
            pending.timer = (loop.call_soon(self._due, key) if self._linger == 0
                             else loop.call_later(self._linger, self._due, key))
        future: asyncio.Future[Any] = loop.create_future()
        pending.items.append(item)
        pending.futures.append(future)
        pending.bytes += size
        if len(pending.items) >= self._max_items:
            self._seal(key)
        return future

    def _due(self, key: Key) -> None:
        pending = self._pending.get(key)
        if pending is None:
            return
        pending.due = True
        if self._slot_free(key):
            self._send(key, self._pending.pop(key))
        # else: the next answer for this key sends it (_landed)

    def _seal(self, key: Key) -> None:
        """The key's open batch is full: send it if a request slot is free, else queue it behind the others."""
        pending = self._pending.pop(key)
        if self._slot_free(key):
            self._send(key, pending)
            return
        if pending.timer is not None:
            pending.timer.cancel()  # its linger no longer matters: it goes out when a slot frees up
        self._full.setdefault(key, collections.deque()).append(pending)

    def _slot_free(self, key: Key) -> bool:
        """A request of this key may go out now: fewer than max_in_flight are out and no full batch waits."""
        return self._in_flight.get(key, 0) < self._max_in_flight and key not in self._full

    def _send(self, key: Key, pending: _Pending) -> None:
        if pending.timer is not None:
            pending.timer.cancel()
        self._in_flight[key] = self._in_flight.get(key, 0) + 1
        task = asyncio.ensure_future(self._run(key, pending))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, key: Key, pending: _Pending) -> None:
        try:
            outcomes = await self._flush_fn(key, pending.items)
            assert len(outcomes) == len(pending.items), "one outcome per item"
            for future, outcome in zip(pending.futures, outcomes):
                if future.done():
                    continue
                if isinstance(outcome, DmqError):
                    future.set_exception(outcome)
                else:
                    future.set_result(outcome)
        except BaseException as exc:  # the whole request failed: every item gets the error
            for future in pending.futures:
                if not future.done():
                    future.set_exception(exc if isinstance(exc, Exception) else DmqError(repr(exc)))
            if not isinstance(exc, Exception):
                raise
        finally:
            self._landed(key)

    def _landed(self, key: Key) -> None:
        self._in_flight[key] -= 1
        if not self._in_flight[key]:
            del self._in_flight[key]
        waiting = self._full.get(key)
        if waiting:
            self._send(key, waiting.popleft())
            if not waiting:
                del self._full[key]
            return
        pending = self._pending.get(key)
        if pending is not None and pending.due:
            self._send(key, self._pending.pop(key))

    async def drain(self) -> None:
        """Send everything pending, as request slots free up, and wait for the answers (close() calls this)."""
        for _ in range(1_000_000):  # each round waits for at least one answer
            for key in list(self._pending):
                self._due(key)
            if not self._tasks:
                return
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
