"""A forwarded request gives up as soon as its node learns that the partition has another leader, or no longer
knows one."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace
from typing import Any

import pytest

from dmq_client.protocol import ErrorCode
from dmq_server.frontend.broker import Broker
from dmq_server.frontend.requests import RequestError
from dmq_server.metrics import NodeMetrics


class _StuckPeers:
    """Peer connections whose answers wait for `answer` (a link that was cut)."""

    def __init__(self) -> None:
        self.answer: asyncio.Future[Any] | None = None
        self.cancelled = False

    async def call(self, address: str, op: str, args: dict[str, Any], *, on_behalf: str) -> Any:
        self.answer = asyncio.get_running_loop().create_future()
        try:
            return await self.answer
        except asyncio.CancelledError:
            self.cancelled = True
            raise


class _Topology:
    def __init__(self, leader: str | None) -> None:
        self.leader = leader

    def leader_of(self, group_id: str) -> Any:
        return None if self.leader is None else SimpleNamespace(client=self.leader)


def _broker(topology: _Topology, peers: _StuckPeers) -> Broker:
    return Broker(asyncio.get_running_loop(), topology, peers, NodeMetrics("n1", ()),  # type: ignore[arg-type]
                  max_queues=1, max_partitions=1)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("now_known", ["10.0.0.2:7400", None], ids=["another leader", "no leader"])
def test_a_stuck_forward_answers_unavailable_once_its_leader_is_not_the_one_known(now_known: str | None) -> None:
    async def scenario() -> tuple[float, RequestError]:
        topology, peers = _Topology("10.0.0.1:7400"), _StuckPeers()
        forward = asyncio.ensure_future(_broker(topology, peers)._forward("g", "10.0.0.1:7400", "send", {}, "me"))
        await asyncio.sleep(0.5)
        assert not forward.done()
        # a new leader, or none: this node's replica stopped hearing the leader (cut off, or an election)
        topology.leader = now_known
        started = time.monotonic()
        with pytest.raises(RequestError) as raised:
            await asyncio.wait_for(forward, 5)
        assert peers.cancelled
        return time.monotonic() - started, raised.value

    waited, error = asyncio.run(scenario())
    assert error.code == ErrorCode.UNAVAILABLE and "outcome is unknown" in error.message
    assert waited < 1.0


@pytest.mark.timeout(30)
def test_a_forward_to_a_leader_that_stays_gets_its_answer() -> None:
    async def scenario() -> Any:
        topology, peers = _Topology("10.0.0.1:7400"), _StuckPeers()
        forward = asyncio.ensure_future(_broker(topology, peers)._forward("g", "10.0.0.1:7400", "send", {}, "me"))
        await asyncio.sleep(0.35)
        assert peers.answer is not None
        peers.answer.set_result({"ids": [1]})
        return await asyncio.wait_for(forward, 5)

    assert asyncio.run(scenario()) == {"ids": [1]}
