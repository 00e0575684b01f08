"""Awaiting several calls at once without paying for it when there is one."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Sequence
from typing import Any


async def await_all(calls: Sequence[Awaitable[Any]]) -> None:
    """Await every call concurrently, raising the first failure as ``asyncio.gather`` does. The common single call
    (one partition) is awaited in place: gather would wrap it in a task and add two event-loop rounds to a
    request's latency."""
    if len(calls) == 1:
        await calls[0]
    elif calls:
        await asyncio.gather(*calls)
