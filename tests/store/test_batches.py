"""Batch ids: one idempotency key per send (enqueue `batches`, docs/STORE.md), against the real store."""

from __future__ import annotations

from typing import Any

import pytest

from dmq_server.store import InvalidCommand, keys

from .harness import Driver

WINDOW = 10_000


def entry(body: bytes = b"m", dedup: str | None = None, group: str | None = None) -> list[Any]:
    return [body, None, None, dedup, group]


def enqueue(driver: Driver, messages: list[list[Any]], batches: Any = None) -> list[dict[str, Any]]:
    fields: dict[str, Any] = {"messages": messages}
    if batches is not None:
        fields["batches"] = batches
    return driver.apply("enqueue", **fields)


def send(driver: Driver, batch_id: bytes, *bodies: bytes, dedup: str | None = None) -> list[dict[str, Any]]:
    """One send under a batch id: the whole command is its segment."""
    return enqueue(driver, [entry(body, dedup) for body in bodies], [[batch_id, 0, len(bodies)]])


def new(*ids: int) -> list[dict[str, Any]]:
    return [{"id": ident, "duplicate": False} for ident in ids]


def dup(*ids: int) -> list[dict[str, Any]]:
    return [{"id": ident, "duplicate": True} for ident in ids]


def memory(driver: Driver) -> tuple[list[bytes], list[bytes]]:
    """The batch memory keys (S) and the expiry entries (E) in the database."""
    db = driver.store._database()
    batch = [key for key in db.keys() if key[:1] == keys.BATCH]
    expiry = [key for key in db.keys() if key[:1] == keys.DEDUP_EXPIRY]
    return batch, expiry


@pytest.fixture
def queue(queue: Driver) -> Driver:
    queue.configure(dedup_window_ms=WINDOW)
    return queue


def test_a_retried_batch_returns_the_same_ids_and_enqueues_nothing(queue: Driver) -> None:
    assert send(queue, b"B", b"a", b"b", b"c") == new(1, 2, 3)
    before = queue.stats()
    queue.advance(WINDOW - 1)
    assert send(queue, b"B", b"a", b"b", b"c") == dup(1, 2, 3)
    assert queue.stats() | {"applied_index": 0, "oldest_age_ms": 0} == \
        before | {"applied_index": 0, "oldest_age_ms": 0}
    assert [m["body"] for m in queue.receive(10)] == [b"a", b"b", b"c"]
    # The originals may be gone since: still the same answer.
    queue.delete(*[[ident, 1] for ident in (1, 2, 3)])
    assert send(queue, b"B", b"x", b"y", b"z") == dup(1, 2, 3)
    assert queue.stats()["count"] == 0


def test_after_the_window_the_batch_id_enqueues_again_and_is_forgotten_by_the_tick(queue: Driver) -> None:
    send(queue, b"B", b"a")
    queue.advance(WINDOW)
    assert send(queue, b"B", b"a") == new(2)  # the window [t0, t0 + WINDOW) has ended
    assert send(queue, b"B", b"a") == dup(2)
    assert queue.tick()["dedup_expired"] == 0  # the first memory went when the batch id was reused
    assert queue.store.next_due_at(queue.now) == queue.now + WINDOW  # the second memory's end
    queue.advance(WINDOW - 1)
    assert queue.tick()["dedup_expired"] == 0
    queue.advance(1)
    assert queue.tick()["dedup_expired"] == 1  # the first memory was replaced, not forgotten twice
    assert memory(queue) == ([], [])
    assert queue.store._meta.dedup_entries == 0
    assert queue.store.next_due_at(queue.now) is not None  # retention of the messages, nothing from batches
    assert send(queue, b"B", b"a") == new(3)


def test_queue_full_results_are_remembered(queue: Driver) -> None:
    queue.configure(max_messages=2)
    first = send(queue, b"B", b"a", b"b", b"c")
    assert first == new(1, 2) + [{"error": "QueueFull"}]
    receipt = queue.receive(1)[0]["receipt"]
    queue.delete(receipt)  # room for one more now
    assert send(queue, b"B", b"a", b"b", b"c") == dup(1, 2) + [{"error": "QueueFull", "duplicate": True}]
    assert queue.stats()["count"] == 1 and queue.stats()["next_id"] == 3
    assert send(queue, b"C", b"c") == new(3)  # the refused message, sent again under a new batch id


def test_per_message_dedup_ids_inside_a_batch(queue: Driver) -> None:
    assert queue.send(b"earlier", dedup="k") == new(1)
    results = enqueue(queue, [entry(b"a", "k"), entry(b"b", "j"), entry(b"c", "j"), entry(b"d")], [[b"B", 0, 4]])
    assert results == dup(1) + new(2) + dup(2) + new(3)
    # A retry replays all four, the per-message duplicates with their original ids.
    assert enqueue(queue, [entry(b"a", "k"), entry(b"b", "j"), entry(b"c", "j"), entry(b"d")],
                   [[b"B", 0, 4]]) == dup(1, 2, 2, 3)
    # The dedup ids of the batch are remembered for sends without a batch id too.
    assert queue.send(b"again", dedup="j") == dup(2)
    assert queue.stats()["count"] == 3


def test_batch_ids_and_dedup_ids_do_not_collide(queue: Driver) -> None:
    assert send(queue, b"same", b"a") == new(1)
    assert queue.send(b"b", dedup="same") == new(2)  # not the batch's memory
    assert send(queue, b"same", b"c") == dup(1)
    assert queue.send(b"d", dedup="same") == dup(2)
    assert send(queue, b"\xff", b"e") == new(3)  # the marker byte as a batch id
    assert queue.store._meta.dedup_entries == 3
    queue.advance(WINDOW)
    assert queue.tick()["dedup_expired"] == 3
    assert memory(queue) == ([], [])
    assert queue.store._meta.dedup_entries == 0
    assert queue.send(b"f", dedup="same") == new(4) and send(queue, b"same", b"g") == new(5)


def test_merged_command_with_two_segments_and_unbatched_messages(queue: Driver) -> None:
    # What the frontend makes of five coalesced sends: plain, A (2 messages), plain, B (1 message), plain.
    messages = [entry(b"p1"), entry(b"a1"), entry(b"a2"), entry(b"p2"), entry(b"b1"), entry(b"p3")]
    assert enqueue(queue, messages, [[b"A", 1, 2], [b"B", 4, 1]]) == new(1, 2, 3, 4, 5, 6)
    # Retries of A and B coalesced with a new send C and plain messages: only those are enqueued, in order.
    messages = [entry(b"b1"), entry(b"p4"), entry(b"c1"), entry(b"c2"), entry(b"a1"), entry(b"a2")]
    assert enqueue(queue, messages, [[b"B", 0, 1], [b"C", 2, 2], [b"A", 4, 2]]) == \
        dup(5) + new(7, 8, 9) + dup(2, 3)
    assert [m["body"] for m in queue.store.peek(20)] == [b"p1", b"a1", b"a2", b"p2", b"b1", b"p3", b"p4", b"c1",
                                                         b"c2"]


def test_the_same_batch_twice_in_one_command(queue: Driver) -> None:
    # A client retry coalesced with the original still pending in the leader's batcher.
    assert enqueue(queue, [entry(b"a"), entry(b"b"), entry(b"a"), entry(b"b")], [[b"B", 0, 2], [b"B", 2, 2]]) == \
        new(1, 2) + dup(1, 2)
    assert queue.stats()["count"] == 2


def test_another_message_count_under_a_remembered_batch_id_is_a_mismatch(queue: Driver) -> None:
    send(queue, b"B", b"a", b"b")
    assert send(queue, b"B", b"a") == [{"error": "BatchMismatch"}]
    assert enqueue(queue, [entry(b"x"), entry(b"a"), entry(b"b"), entry(b"c")], [[b"B", 1, 3]]) == \
        new(3) + [{"error": "BatchMismatch"}] * 3  # the plain message of the command is not affected
    assert send(queue, b"B", b"a", b"b") == dup(1, 2)  # the memory is unchanged
    assert queue.stats()["count"] == 3


def test_fifo_batch(fifo: Driver) -> None:
    fifo.configure(dedup_window_ms=WINDOW)
    assert enqueue(fifo, [entry(b"a", group="g"), entry(b"b", group="g")], [[b"B", 0, 2]]) == new(1, 2)
    assert enqueue(fifo, [entry(b"a", group="g"), entry(b"b", group="g")], [[b"B", 0, 2]]) == dup(1, 2)
    assert [m["id"] for m in fifo.receive(10)] == [1]


def test_batch_memory_survives_a_reopen(queue: Driver) -> None:
    send(queue, b"B", b"a", b"b")
    queue.reopen()
    assert send(queue, b"B", b"a", b"b") == dup(1, 2)
    queue.tick()
    assert queue.store.next_due_at(queue.now) == queue.now + WINDOW


def test_the_memory_costs_two_keys_per_batch_whatever_its_size(queue: Driver) -> None:
    send(queue, b"B", *[b"m"] * 1000)
    batch, expiry = memory(queue)
    assert len(batch) == 1 and len(expiry) == 1
    assert batch == [keys.BATCH + b"B"] and expiry[0].endswith(keys.BATCH_MARK + b"B")
    # Every message enqueued: the ids are a run, stored as first id and count.
    assert len(queue.store._database()[keys.BATCH + b"B"]) == 8 + 13
    assert send(queue, b"B", *[b"m"] * 1000) == dup(*range(1, 1001))


def test_results_other_than_a_run_are_stored_one_by_one(queue: Driver) -> None:
    queue.configure(max_messages=3)
    queue.send(b"first", dedup="k")
    results = enqueue(queue, [entry(b"a"), entry(b"b", "k"), entry(b"c"), entry(b"d")], [[b"B", 0, 4]])
    assert results == new(2) + dup(1) + new(3) + [{"error": "QueueFull"}]
    assert keys.unpack_batch_results(queue.store._database()[keys.BATCH + b"B"][8:]) == [2, -1, 3, 0]
    assert enqueue(queue, [entry(b"a"), entry(b"b", "k"), entry(b"c"), entry(b"d")], [[b"B", 0, 4]]) == \
        dup(2, 1, 3) + [{"error": "QueueFull", "duplicate": True}]


BAD_BATCHES = [
    "x", b"B", 5, {"B": [0, 1]}, [], [[b"B", 0]], [[b"B", 0, 1, 0]], [b"B"], [None],
    [["B", 0, 1]], [[b"", 0, 1]], [[b"x" * 129, 0, 1]], [[None, 0, 1]], [[bytearray(b"B"), 0, 1]],
    [[b"B", -1, 1]], [[b"B", 0, 0]], [[b"B", 0, -1]], [[b"B", 0, 4]], [[b"B", 3, 1]], [[b"B", 2, 2]],
    [[b"B", True, 1]], [[b"B", 0, True]], [[b"B", 0.0, 1]], [[b"B", "0", 1]], [[b"B", 2**64, 1]],
    [[b"B", 0, 2], [b"C", 1, 2]],  # overlapping
    [[b"B", 0, 1], [b"C", 0, 1]],  # the same range twice
    [[b"C", 2, 1], [b"B", 0, 1]],  # out of order
    [[b"B", 0, 1]] * 4,  # more segments than messages
]


@pytest.mark.parametrize("batches", BAD_BATCHES, ids=repr)
def test_bad_segments_are_rejected_and_change_nothing(queue: Driver, batches: Any) -> None:
    send(queue, b"old", b"a")
    before = queue.stats(), queue.store.peek(10), memory(queue), queue.store._meta.dedup_entries
    with pytest.raises(InvalidCommand) as raised:
        enqueue(queue, [entry(b"x", "d"), entry(b"y"), entry(b"z")], batches)
    assert raised.value.code == "InvalidCommand" and str(raised.value)
    after = queue.stats(), queue.store.peek(10), memory(queue), queue.store._meta.dedup_entries
    assert after[0].pop("applied_index") == before[0].pop("applied_index") + 1  # recorded: a replay skips it
    assert after == before
    # Nothing was remembered: neither the batch ids nor the dedup id.
    assert send(queue, b"B", b"x") == new(2)
    assert send(queue, b"C", b"x") == new(3)
    assert queue.send(b"x", dedup="d") == new(4)


def test_null_batches_is_no_batch(queue: Driver) -> None:
    assert queue.apply("enqueue", messages=[entry(b"a")], batches=None) == new(1)
    assert queue.store._meta.dedup_entries == 0
