"""The SDK's router passes over nodes whose requests just failed (a node cut off from the majority answers
Unavailable until the network heals), without ever running out of nodes to ask."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from dmq_client import routing
from dmq_client.errors import Timeout, Unavailable
from dmq_client.routing import SUSPECT_SECONDS, Router

SEEDS = ["10.0.0.1:7400", "10.0.0.2:7400", "10.0.0.3:7400"]
CUT_OFF = SEEDS[0]


class FakeConnection:
    def __init__(self, address: str, fails: dict[str, Exception], calls: list[str]) -> None:
        self.address = address
        self.closed = False
        self._fails = fails
        self._calls = calls

    async def call(self, op: str, args: dict[str, Any], timeout: float) -> Any:
        self._calls.append(self.address)
        failure = self._fails.get(self.address)
        if failure is not None:
            raise failure
        if op == "lookup":
            return {"name": args["name"], "id": 1, "attributes": {}, "partitions": [{"leader": None}]}
        return {"served_by": self.address}

    async def close(self) -> None:
        self.closed = True


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(routing.time, "monotonic", fake)
    return fake


def make_router(fails: dict[str, Exception], calls: list[str]) -> Router:
    router = Router(SEEDS, None, None, request_timeout=1.0, retry_seconds=5.0, connect_timeout=1.0,
                    client_name="test")

    async def connection(address: str) -> FakeConnection:
        return FakeConnection(address, fails, calls)

    router.connection = connection  # type: ignore[method-assign]
    return router


@pytest.mark.parametrize("failure", [Unavailable("no leader here"), Timeout("no answer")])
def test_a_node_whose_request_failed_is_passed_over(clock: Clock, failure: Exception) -> None:
    calls: list[str] = []
    router = make_router({CUT_OFF: failure}, calls)
    with pytest.raises(type(failure)):
        asyncio.run(router.call(CUT_OFF, "status", {}))
    picked = [router.any_node() for _ in range(30)]
    assert CUT_OFF not in picked
    assert set(picked) == set(SEEDS[1:])  # the others still share the load

    clock.now += SUSPECT_SECONDS + 0.01
    assert CUT_OFF in [router.any_node() for _ in range(len(SEEDS))]


def test_a_success_clears_the_suspicion(clock: Clock) -> None:
    fails: dict[str, Exception] = {CUT_OFF: Unavailable("no leader here")}
    router = make_router(fails, [])
    with pytest.raises(Unavailable):
        asyncio.run(router.call(CUT_OFF, "status", {}))
    del fails[CUT_OFF]  # healed
    asyncio.run(router.call(CUT_OFF, "status", {}))
    assert CUT_OFF in [router.any_node() for _ in range(len(SEEDS))]


def test_with_every_node_suspect_each_is_still_asked_in_turn(clock: Clock) -> None:
    router = make_router({address: Unavailable("election") for address in SEEDS}, [])
    for address in SEEDS:
        with pytest.raises(Unavailable):
            asyncio.run(router.call(address, "status", {}))
    assert set(router.any_node() for _ in range(len(SEEDS))) == set(SEEDS)


def test_retries_do_not_return_to_a_cut_off_node(clock: Clock, monkeypatch: pytest.MonkeyPatch) -> None:
    """The retry loop of a request to a partition without a known leader: the cut-off node is asked at most once
    (its answer makes it suspect), the lookup and the request go to the others."""
    async def no_sleep(seconds: float) -> None:
        clock.now += seconds

    monkeypatch.setattr(routing.asyncio, "sleep", no_sleep)
    calls: list[str] = []
    router = make_router({CUT_OFF: Unavailable("no leader here")}, calls)
    for _ in range(20):
        answer = asyncio.run(router.on_partition("orders", 0, "receive", {}))
        assert answer["served_by"] != CUT_OFF
    assert calls.count(CUT_OFF) <= 1, calls


def test_a_request_to_any_partition_avoids_a_suspect_leader(clock: Clock, monkeypatch: pytest.MonkeyPatch) -> None:
    """An unkeyed send goes to any partition's leader: a cached route still naming the cut-off node as a leader
    (the cluster's metadata may lag the election) does not send the retries back to it."""
    async def no_sleep(seconds: float) -> None:
        clock.now += seconds

    monkeypatch.setattr(routing.asyncio, "sleep", no_sleep)
    calls: list[str] = []
    router = make_router({CUT_OFF: Unavailable("no leader here")}, calls)

    async def stale_lookup(queue: str, refresh: bool = False) -> routing.QueueRoute:
        return routing.QueueRoute("orders", 1, {}, [CUT_OFF, SEEDS[1], SEEDS[2]])

    router.route = stale_lookup  # type: ignore[method-assign]
    for _ in range(20):
        answer = asyncio.run(router.on_partition("orders", None, "send", {}))
        assert answer["served_by"] != CUT_OFF
    assert calls.count(CUT_OFF) <= 1, calls
