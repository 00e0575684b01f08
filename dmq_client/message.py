"""A received message: its data, and the three things a worker does with it (delete, extend, release).

`async with msg:` (AsyncMessage) and `with msg:` (Message) hand the message to the client's lease keeper while
the block runs (a slow handler is not redelivered), then delete it when the block succeeds, or release it (visible
again at once) when it raises.
"""

from __future__ import annotations

import logging
import time
from types import TracebackType
from typing import TYPE_CHECKING, Any, Awaitable, Callable

if TYPE_CHECKING:
    from .aio import AsyncClient

log = logging.getLogger("dmq_client")


class _Fields:
    """The data of a delivery, shared by both message classes."""

    __slots__ = ("queue", "id", "body", "attributes", "group", "receive_count", "enqueued_at", "receipt",
                 "visibility_timeout", "lease_deadline", "lease_lost")

    def __init__(self, queue: str, raw: dict[str, Any], visibility_timeout: float) -> None:
        self.queue = queue
        self.id: str = raw["id"]
        self.body: bytes = raw["body"]
        self.attributes: dict[str, Any] = raw.get("attributes") or {}
        self.group: str | None = raw.get("group")
        self.receive_count: int = raw["receive_count"]
        self.enqueued_at: int = raw["enqueued_at"]  # ms since the epoch
        self.receipt: str = raw["receipt"]
        self.visibility_timeout = visibility_timeout  # seconds this delivery's lease lasts (and each extension)
        self.lease_deadline = time.monotonic() + visibility_timeout  # local clock
        self.lease_lost = False  # set when an extension found the message received again by someone else

    def __repr__(self) -> str:
        return (f"<{type(self).__name__} {self.queue}/{self.id} receive_count={self.receive_count} "
                f"{len(self.body)} B>")


class AsyncMessage(_Fields):
    __slots__ = ("_client",)

    def __init__(self, client: "AsyncClient", queue: str, raw: dict[str, Any], visibility_timeout: float) -> None:
        super().__init__(queue, raw, visibility_timeout)
        self._client = client

    async def delete(self) -> None:
        """Done with it: remove it from the queue (batched with other deletes of its partition)."""
        await self._client._delete_one(self)

    async def extend(self, seconds: float) -> None:
        """Keep it invisible for `seconds` from now (its lease)."""
        await self._client._change_visibility_one(self, seconds)

    async def release(self) -> None:
        """Give it back: receivable again at once."""
        await self._client._change_visibility_one(self, 0)

    async def __aenter__(self) -> "AsyncMessage":
        self._client._leases.hold(self)
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        self._client._leases.drop(self)
        if exc_type is None:
            await self.delete()
            return
        try:
            await self.release()
        except Exception as release_error:  # the handler's exception matters more; the lease ends anyway
            log.warning("could not release %s/%s after a failed handler: %s", self.queue, self.id, release_error)


class Message:
    """The blocking client's message: the same fields as AsyncMessage (read from it, so lease updates show), and
    methods that run on the client's event loop thread."""

    __slots__ = ("_inner", "_run")
    if TYPE_CHECKING:
        queue: str
        id: str
        body: bytes
        attributes: dict[str, Any]
        group: str | None
        receive_count: int
        enqueued_at: int
        receipt: str
        visibility_timeout: float
        lease_deadline: float
        lease_lost: bool

    def __init__(self, inner: AsyncMessage, run: Callable[[Awaitable[Any]], Any]) -> None:
        self._inner = inner
        self._run = run

    def __repr__(self) -> str:
        return repr(self._inner).replace("AsyncMessage", "Message", 1)

    def delete(self) -> None:
        self._run(self._inner.delete())

    def extend(self, seconds: float) -> None:
        self._run(self._inner.extend(seconds))

    def release(self) -> None:
        self._run(self._inner.release())

    def __enter__(self) -> "Message":
        self._run(self._inner.__aenter__())
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._run(self._inner.__aexit__(exc_type, exc, tb))


def _field(name: str) -> property:
    return property(lambda self: getattr(self._inner, name), doc=f"the delivery's {name}")


for _name in _Fields.__slots__:
    setattr(Message, _name, _field(_name))
