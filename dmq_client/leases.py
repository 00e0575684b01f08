"""The lease keeper: while a handler holds a message, extend its visibility before it runs out.

A held message is extended by its own visibility timeout once less than half of its lease is left, so a handler
of any length keeps the message invisible, and a crashed worker's messages come back after one timeout. An
extension that finds the message received by someone else (ReceiptExpired) marks it `lease_lost`: the handler's
final delete will then fail loudly instead of pretending it was the only one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from .errors import DmqError, InvalidReceipt, ReceiptExpired

if TYPE_CHECKING:
    from .message import AsyncMessage

log = logging.getLogger("dmq_client")

MIN_VISIBILITY = 0.2  # seconds; shorter leases are not kept (they could not be extended in time)
MIN_SLEEP = 0.02
MAX_SLEEP = 5.0


class LeaseKeeper:
    def __init__(self, extend: Callable[["AsyncMessage", float], Awaitable[None]]) -> None:
        self._extend = extend
        self._held: dict[str, "AsyncMessage"] = {}
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None

    def hold(self, message: "AsyncMessage") -> None:
        if message.visibility_timeout < MIN_VISIBILITY:
            return
        self._held[message.receipt] = message
        if self._task is None or self._task.done():
            self._wake = asyncio.Event()
            self._task = asyncio.ensure_future(self._run())
        else:
            assert self._wake is not None
            self._wake.set()

    def drop(self, message: "AsyncMessage") -> None:
        self._held.pop(message.receipt, None)

    @property
    def held(self) -> int:
        return len(self._held)

    async def _run(self) -> None:
        assert self._wake is not None
        while self._held:
            now = time.monotonic()
            due = [m for m in self._held.values() if m.lease_deadline - now < m.visibility_timeout / 2]
            if due:
                await asyncio.gather(*(self._renew(m) for m in due))
                continue
            next_due = min(m.lease_deadline - m.visibility_timeout / 2 for m in self._held.values())
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), max(MIN_SLEEP, min(MAX_SLEEP, next_due - now)))
            except asyncio.TimeoutError:
                pass

    async def _renew(self, message: "AsyncMessage") -> None:
        try:
            await self._extend(message, message.visibility_timeout)
        except (ReceiptExpired, InvalidReceipt) as exc:
            message.lease_lost = True
            self._held.pop(message.receipt, None)
            log.warning("lease of %s/%s lost: %s", message.queue, message.id, exc.message)
        except DmqError as exc:  # unreachable for now: try again soon, the lease may still hold
            log.warning("could not extend the lease of %s/%s: %s", message.queue, message.id, exc.message)
            message.lease_deadline = min(message.lease_deadline, time.monotonic() + message.visibility_timeout / 2
                                         - 0.05)
            await asyncio.sleep(MIN_SLEEP * 5)

    async def close(self) -> None:
        self._held.clear()
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
