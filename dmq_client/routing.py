"""Where a request goes, and what happens when it fails: the SDK's connection pool, metadata cache and retries.

The router keeps one pipelined connection per node, a cache of each queue's partitions and their leaders (from
`lookup`), and one retry loop: NotLeader with a hint goes straight to the hinted node; NotLeader without one,
Unavailable, TooManyRequests, timeouts and broken connections back off (exponentially, with jitter) and look the
queue up again, until the operation's deadline. Everything here runs on one event loop's thread.
"""

from __future__ import annotations

import asyncio
import random
import ssl
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from .connection import AsyncConnection, split_address
from .errors import DmqError, InvalidRequest, NotLeader, QueueNotFound, Timeout, Unavailable

T = TypeVar("T")

BACKOFF_FIRST = 0.02  # seconds; doubles per failed attempt
BACKOFF_MAX = 1.0
MAX_ATTEMPTS = 1_000  # a bound on any retry loop, besides its deadline
LEADERLESS_RECHECK = 0.5  # seconds: how soon a route that named a partition without a leader is looked up again
ROUTE_MAX_AGE = 30.0  # seconds: a route is looked up again this often (leaders move, update_queue changes attributes)


@dataclass
class QueueRoute:
    """A queue's partitions as `lookup` described them; `leaders[p]` is a client address or None."""

    name: str
    id: int
    attributes: dict[str, Any]
    leaders: list[str | None]
    fetched_at: float = field(default_factory=time.monotonic)

    @property
    def partitions(self) -> int:
        return len(self.leaders)

    @property
    def fifo(self) -> bool:
        return bool(self.attributes.get("fifo", False))

    def learn_leaders(self, leaders: Any) -> None:
        """Take the leaders a node named when it forwarded parts of a request: the partitions' leaders moved
        since the lookup (the cluster hands leadership to preferred replicas after a create or a failover), and
        requests sent straight to them save the forwarding hop."""
        if not isinstance(leaders, list):
            return
        for pair in leaders:
            if isinstance(pair, list) and len(pair) == 2:
                partition, address = pair
                if type(partition) is int and 0 <= partition < len(self.leaders) and isinstance(address, str):
                    self.leaders[partition] = address

    @classmethod
    def from_description(cls, description: dict[str, Any]) -> "QueueRoute":
        return cls(description["name"], description["id"], dict(description.get("attributes", {})),
                   [p.get("leader") for p in description["partitions"]])


class Router:
    def __init__(self, nodes: Sequence[str] | str, token: str | None, tls: ssl.SSLContext | None, *,
                 request_timeout: float, retry_seconds: float, connect_timeout: float, client_name: str) -> None:
        seeds = [nodes] if isinstance(nodes, str) else list(nodes)
        if not seeds:
            raise ValueError("nodes must name at least one node as 'host:port'")
        for address in seeds:
            split_address(address)  # a clear ValueError now rather than at the first request
        self.seeds = seeds
        self.request_timeout = request_timeout
        self.retry_seconds = retry_seconds
        self._token = token
        self._tls = tls
        self._connect_timeout = connect_timeout
        self._client_name = client_name
        self._connections: dict[str, AsyncConnection] = {}
        self._opening: dict[str, asyncio.Future[AsyncConnection]] = {}
        self._routes: dict[str, QueueRoute] = {}
        self._stale: dict[str, bool] = {}  # queues to look up again before the next attempt
        self._seed_turn = random.randrange(len(seeds))
        self._rechecks: set[asyncio.Future[None]] = set()
        self._closed = False

    # ------------------------------------------------------------------ connections

    async def connection(self, address: str) -> AsyncConnection:
        if self._closed:
            raise Unavailable("the client is closed")
        conn = self._connections.get(address)
        if conn is not None and not conn.closed:
            return conn
        opening = self._opening.get(address)
        if opening is None:  # one handshake per node, however many requests wait for it
            opening = asyncio.ensure_future(AsyncConnection.open(
                address, self._token, tls=self._tls, connect_timeout=self._connect_timeout,
                client=self._client_name))
            self._opening[address] = opening
            try:
                conn = await asyncio.shield(opening)
            finally:
                self._opening.pop(address, None)
            self._connections[address] = conn
            return conn
        return await asyncio.shield(opening)

    def any_node(self) -> str:
        """A seed, in turn: each attempt of a retry loop asks the next one, so a dead seed costs one attempt."""
        self._seed_turn += 1
        return self.seeds[self._seed_turn % len(self.seeds)]

    async def close(self) -> None:
        self._closed = True
        for recheck in list(self._rechecks):
            recheck.cancel()
        connections, self._connections = list(self._connections.values()), {}
        await asyncio.gather(*(conn.close() for conn in connections), return_exceptions=True)

    # ------------------------------------------------------------------ the retry loop

    async def retrying(self, attempt: Callable[[int], Awaitable[T]], what: str,
                       deadline: float | None = None) -> T:
        """attempt(n) until it returns, a non-retryable error, or the deadline (then the last error)."""
        deadline = time.monotonic() + self.retry_seconds if deadline is None else deadline
        delay = BACKOFF_FIRST
        for number in range(MAX_ATTEMPTS):
            try:
                return await attempt(number)
            except DmqError as exc:
                if not exc.retryable:
                    raise
                if isinstance(exc, NotLeader) and exc.leader:
                    continue  # the attempt already moved to the hinted leader: retry at once
                left = deadline - time.monotonic()
                if left <= 0:
                    raise exc
                await asyncio.sleep(min(left, delay * random.uniform(0.5, 1.0)))
                delay = min(BACKOFF_MAX, delay * 2)
        raise Unavailable(f"{what}: gave up after {MAX_ATTEMPTS} attempts")

    async def call(self, address: str, op: str, args: dict[str, Any], timeout: float | None = None) -> Any:
        return (await self.answer(address, op, args, timeout)).get("result")

    async def answer(self, address: str, op: str, args: dict[str, Any],
                     timeout: float | None = None) -> dict[str, Any]:
        """The whole answer: the result and the node's hints."""
        conn = await self.connection(address)
        return await conn.answer(op, args, self.request_timeout if timeout is None else timeout)

    async def call_any(self, op: str, args: dict[str, Any], timeout: float | None = None) -> Any:
        """An operation any node serves (metadata, cluster status): a seed per attempt, retried."""
        return await self.retrying(lambda n: self.call(self.any_node(), op, args, timeout), op)

    # ------------------------------------------------------------------ queues and partition leaders

    async def route(self, queue: str, refresh: bool = False) -> QueueRoute:
        route = self._routes.get(queue)
        if route is None or refresh:
            description = await self.call_any("lookup", {"name": queue})
            route = self._routes[queue] = QueueRoute.from_description(description)
        else:
            age = time.monotonic() - route.fetched_at
            if age >= ROUTE_MAX_AGE or (age >= LEADERLESS_RECHECK and None in route.leaders):
                self._recheck(queue, route)
        return route

    def _recheck(self, queue: str, route: QueueRoute) -> None:
        """Look a route up again in the background. Unkeyed sends only go to partitions with a known leader, and
        requests to those succeed: without this, a partition seen leaderless during an election would get no
        unkeyed traffic until some error refreshed the route, and a long-lived client would never see a change of
        the queue's attributes."""
        route.fetched_at = time.monotonic()  # one lookup per interval, however many requests pass by

        async def lookup() -> None:
            try:
                description = await self.call(self.any_node(), "lookup", {"name": queue})
            except DmqError:
                return  # the next request after the interval tries again
            if self._routes.get(queue) is route:
                self._routes[queue] = QueueRoute.from_description(description)

        recheck = asyncio.ensure_future(lookup())
        self._rechecks.add(recheck)
        recheck.add_done_callback(self._rechecks.discard)

    def forget(self, queue: str) -> None:
        self._routes.pop(queue, None)

    async def on_partition(self, queue: str, partition: int | None, op: str, args: dict[str, Any],
                           timeout: float | None = None, deadline: float | None = None) -> Any:
        """`op` at the leader of `partition` (None: the leader of any partition; the node spreads the request),
        following NotLeader hints and refreshing the queue's route on other retryable errors. A queue re-created
        under the same name (another id) is looked up again once."""
        recreated_check = True

        async def attempt(number: int) -> Any:
            nonlocal recreated_check
            route = await self.route(queue, refresh=self._stale.pop(queue, False))
            if partition is not None and partition >= route.partitions:
                raise InvalidRequest(f"queue {queue!r} has {route.partitions} partitions, not {partition + 1}")
            address = self._address_for(route, partition)
            try:
                answer = await self.answer(address, op, args, timeout)
            except NotLeader as exc:
                if exc.leader and partition is not None:
                    route.leaders[partition] = exc.leader
                else:
                    self._stale[queue] = True
                raise
            except (QueueNotFound, InvalidRequest):
                if not recreated_check:
                    raise
                recreated_check = False  # the cache may predate a delete and re-create: look once more
                fresh = await self.route(queue, refresh=True)
                if fresh.id == route.id:
                    raise
                raise Unavailable(f"queue {queue!r} was re-created; retrying on its new partitions") from None
            except (Unavailable, Timeout):
                self._stale[queue] = True
                if partition is not None and route.leaders[partition] == address:
                    route.leaders[partition] = None  # ask elsewhere next time
                raise
            route.learn_leaders(answer.get("leaders"))
            return answer.get("result")

        return await self.retrying(attempt, f"{op} on {queue!r}", deadline)

    def _address_for(self, route: QueueRoute, partition: int | None) -> str:
        if partition is None:
            known = [leader for leader in route.leaders if leader]
            return random.choice(known) if known else self.any_node()
        return route.leaders[partition] or self.any_node()
