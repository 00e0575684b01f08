"""`next_visible_at` and `next_due_at`: the cheap queries long polls and the node's ticks are scheduled by."""

from __future__ import annotations

from .harness import Driver


def test_an_empty_partition_has_nothing_to_wait_for(queue: Driver) -> None:
    assert queue.store.next_visible_at(queue.now) is None
    assert queue.store.next_due_at(queue.now) is None


def test_a_ready_message_is_visible_now(queue: Driver) -> None:
    queue.send(b"a")
    assert queue.store.next_visible_at(queue.now) == queue.now


def test_an_in_flight_message_is_visible_at_its_deadline(queue: Driver) -> None:
    queue.send(b"a")
    queue.receive(visibility=5_000)
    assert queue.store.next_visible_at(queue.now) == queue.now + 5_000
    assert queue.store.next_due_at(queue.now) == queue.now + 5_000
    queue.advance(5_000)
    assert queue.store.receivable(queue.now, 1) == [1]  # what the answer promised


def test_a_delayed_message_is_visible_when_its_delay_ends(queue: Driver) -> None:
    queue.send(b"a", delay=2_000)
    queue.send(b"b", delay=1_000)
    assert queue.store.next_visible_at(queue.now) == queue.now + 1_000
    queue.advance(1_000)
    queue.tick()
    assert queue.store.next_visible_at(queue.now) == queue.now


def test_retention_and_dedup_windows_make_a_tick_due(queue: Driver) -> None:
    queue.configure(retention_ms=60_000, dedup_window_ms=10_000)
    queue.send(b"a", dedup="k")
    # retention_due is a lower bound kept by advances: before the first one, a tick is due at once
    assert queue.store.next_due_at(queue.now) <= queue.now
    queue.tick()
    assert queue.store.next_due_at(queue.now) == queue.now + 10_000
    queue.advance(10_000)
    queue.tick()
    assert queue.store.next_due_at(queue.now) == queue.now + 50_000  # the message's retention


def test_fifo_group_in_flight_is_not_visible_until_its_deadline(fifo: Driver) -> None:
    fifo.send(b"a", b"b", group="g")
    assert fifo.store.next_visible_at(fifo.now) == fifo.now
    fifo.receive(visibility=3_000)
    # "b" is ready but its group has a message in flight: nothing is receivable before the deadline
    assert fifo.store.receivable(fifo.now, 1) == []
    assert fifo.store.next_visible_at(fifo.now) == fifo.now + 3_000
