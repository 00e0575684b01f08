"""A receive's byte budget: the partition picks no more than its answer can carry (one frame), whatever the
queue's max_message_bytes, and a message larger than the budget is still delivered, alone."""

from __future__ import annotations

import pytest

from dmq_server.store import InvalidCommand

from .harness import Driver


def test_the_budget_stops_the_pick(queue: Driver) -> None:
    queue.send(*[b"x" * 1_000] * 10)
    first = queue.apply("receive", max=10, max_bytes=2_500)
    assert len(first) == 2  # two ~1 KB records fit 2,500 bytes, a third would not
    assert len(queue.apply("receive", max=10)) == 8  # no budget: everything left
    assert queue.stats()["in_flight"] == 10


def test_a_message_larger_than_the_budget_comes_alone(queue: Driver) -> None:
    queue.send(b"y" * 5_000, b"small")
    assert [len(m["body"]) for m in queue.apply("receive", max=10, max_bytes=100)] == [5_000]
    assert [m["body"] for m in queue.apply("receive", max=10, max_bytes=100)] == [b"small"]


def test_the_budget_applies_to_redeliveries_and_fifo_heads(queue: Driver, fifo: Driver) -> None:
    queue.send(*[b"z" * 1_000] * 4)
    for message in queue.apply("receive", max=4, visibility_ms=10):
        assert message["receive_count"] == 1
    queue.advance(20)
    assert len(queue.apply("receive", max=4, max_bytes=1_500)) == 1  # timed-out messages come back in budget
    fifo.send(b"a" * 1_000, group="a")
    fifo.send(b"b" * 1_000, group="b")
    fifo.send(b"c" * 1_000, group="c")
    assert len(fifo.apply("receive", max=3, max_bytes=2_100)) == 2


@pytest.mark.parametrize("bad", [0, -1, "10", 1.5, 1 << 31])
def test_a_bad_budget_is_refused_and_changes_nothing(queue: Driver, bad: object) -> None:
    queue.send(b"m")
    before = {k: v for k, v in queue.stats().items() if k != "applied_index"}  # the index is used up regardless
    with pytest.raises(InvalidCommand):
        queue.apply("receive", max=1, max_bytes=bad)
    assert {k: v for k, v in queue.stats().items() if k != "applied_index"} == before
