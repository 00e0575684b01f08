"""One test per semantic of docs/STORE.md, against the real RocksDB-backed partition store."""

from __future__ import annotations

import pytest

from dmq_server.store import MessageTooLarge, PartitionStore, StoreOptions
from dmq_server.store import keys

from .harness import Driver


def ids(messages: list[dict]) -> list[int]:
    return [m["id"] for m in messages]


def test_delivers_in_sequence_order(queue: Driver) -> None:
    queue.send(*[b"m%d" % i for i in range(5)])
    assert ids(queue.receive(2)) == [1, 2]
    assert ids(queue.receive(10)) == [3, 4, 5]
    assert queue.receive(10) == []


def test_received_message_is_invisible_until_its_deadline_then_redelivered_first(queue: Driver) -> None:
    queue.send(b"a", b"b", b"c")
    first = queue.receive(1, visibility=1_000)[0]
    assert first["receive_count"] == 1 and first["deadline"] == queue.now + 1_000
    assert ids(queue.receive(1, visibility=60_000)) == [2]
    queue.advance(999)
    assert ids(queue.receive(1, visibility=60_000)) == [3]
    queue.advance(1)
    again = queue.receive(5)
    assert ids(again) == [1]
    assert again[0]["receive_count"] == 2 and again[0]["body"] == b"a"


def test_receipt_from_before_a_redelivery_is_rejected(queue: Driver) -> None:
    queue.send(b"a")
    old = queue.receive(1, visibility=100)[0]["receipt"]
    queue.advance(100)
    new = queue.receive(1, visibility=100)[0]["receipt"]
    assert old == [1, 1] and new == [1, 2]
    assert queue.delete(old) == [{"error": "ReceiptExpired"}]
    assert queue.stats()["count"] == 1
    assert queue.change_visibility(old, 5_000) == {"error": "ReceiptExpired"}
    assert queue.delete(new) == [{"ok": True}]
    assert queue.delete(new) == [{"ok": True, "gone": True}]  # a retried delete is not an error
    assert queue.stats()["count"] == 0


def test_delete_after_deadline_is_accepted_while_not_redelivered(queue: Driver) -> None:
    queue.send(b"a")
    receipt = queue.receive(1, visibility=100)[0]["receipt"]
    queue.advance(500)
    queue.tick()
    assert queue.stats()["ready"] == 1
    assert queue.delete(receipt) == [{"ok": True}]
    assert queue.receive(1) == []


def test_change_visibility_extends_and_releases(queue: Driver) -> None:
    queue.send(b"a", b"b")
    a, b = queue.receive(2, visibility=1_000)
    result = queue.change_visibility(a["receipt"], 10_000)
    assert result == {"ok": True, "deadline": queue.now + 10_000}
    assert queue.change_visibility(b["receipt"], 0)["ok"]
    queue.advance(1)
    assert ids(queue.receive(5)) == [2]  # released at once
    queue.advance(2_000)
    assert queue.receive(5) == []  # a's lease was extended
    queue.advance(10_000)
    assert ids(queue.receive(5)) == [1]


def test_change_visibility_of_expired_lease_is_rejected(queue: Driver) -> None:
    queue.send(b"a")
    receipt = queue.receive(1, visibility=100)[0]["receipt"]
    queue.advance(100)
    assert queue.change_visibility(receipt, 1_000) == {"error": "ReceiptExpired"}


def test_a_repeated_release_succeeds_until_the_message_is_received_again(queue: Driver) -> None:
    # The retry of a release whose answer was lost: the lease already ended, by that release or by its deadline.
    queue.send(b"a")
    receipt = queue.receive(1, visibility=1_000)[0]["receipt"]
    assert queue.change_visibility(receipt, 0) == {"ok": True, "deadline": queue.now}
    released_at = queue.now
    queue.advance(5)
    assert queue.change_visibility(receipt, 0) == {"ok": True, "deadline": released_at}  # in flight until a tick
    assert queue.change_visibility(receipt, 1_000) == {"error": "ReceiptExpired"}  # an extension comes too late
    queue.tick()
    assert queue.stats()["ready"] == 1
    assert queue.change_visibility(receipt, 0) == {"ok": True, "deadline": queue.now}  # ready, not received since
    assert queue.receive(1)[0]["receive_count"] == 2
    assert queue.change_visibility(receipt, 0) == {"error": "ReceiptExpired"}  # received again: not ours to give


def test_receive_count_rises_on_every_delivery(queue: Driver) -> None:
    queue.send(b"a")
    counts = []
    for _ in range(4):
        counts.append(queue.receive(1, visibility=10)[0]["receive_count"])
        queue.advance(10)
    assert counts == [1, 2, 3, 4]


def test_queue_size_limit_is_exact(queue: Driver) -> None:
    queue.configure(max_messages=3)
    results = queue.send(b"1", b"2", b"3", b"4", b"5")
    assert results == [{"id": 1, "duplicate": False}, {"id": 2, "duplicate": False},
                       {"id": 3, "duplicate": False}, {"error": "QueueFull"}, {"error": "QueueFull"}]
    assert queue.stats()["count"] == 3
    message = queue.receive(1)[0]
    assert queue.send(b"6") == [{"error": "QueueFull"}]  # in-flight messages still count
    queue.delete(message["receipt"])
    assert queue.send(b"6") == [{"id": 4, "duplicate": False}]


def test_max_message_bytes_counts_body_and_attributes(queue: Driver) -> None:
    queue.configure(max_message_bytes=10)
    assert queue.send(b"x" * 10)[0]["id"] == 1
    before = queue.stats()
    with pytest.raises(MessageTooLarge):
        queue.send(b"ok", b"x" * 11)
    with pytest.raises(MessageTooLarge):
        queue.send(b"x" * 5, attrs={"key": "value"})
    assert queue.stats() | {"applied_index": 0} == before | {"applied_index": 0}


def test_attributes_round_trip(queue: Driver) -> None:
    attrs = {"s": "text", "b": b"\x00\xff", "i": -5, "f": 1.5, "t": True}
    queue.send(b"body", attrs=attrs, group="g1")
    message = queue.receive(1)[0]
    assert message["attrs"] == attrs and message["group"] == "g1" and message["body"] == b"body"


def test_dedup_id_inside_window_returns_original(queue: Driver) -> None:
    queue.configure(dedup_window_ms=10_000)
    assert queue.send(b"a", dedup="k1") == [{"id": 1, "duplicate": False}]
    assert queue.send(b"a", dedup="k1") == [{"id": 1, "duplicate": True}]
    receipt = queue.receive(1)[0]["receipt"]
    queue.delete(receipt)
    queue.advance(9_999)
    assert queue.send(b"again", dedup="k1") == [{"id": 1, "duplicate": True}]  # the original was deleted
    assert queue.stats()["count"] == 0
    queue.advance(1)
    assert queue.send(b"again", dedup="k1") == [{"id": 2, "duplicate": False}]
    queue.advance(10_000)
    assert queue.tick()["dedup_expired"] == 1  # the first window's entry went when the id was reused


def test_duplicate_inside_one_batch(queue: Driver) -> None:
    results = queue.send(b"a", b"b", dedup="same")
    assert results == [{"id": 1, "duplicate": False}, {"id": 1, "duplicate": True}]


def test_delayed_messages(queue: Driver) -> None:
    queue.send(b"later", delay=5_000)
    queue.send(b"now")
    assert queue.stats()["delayed"] == 1
    assert ids(queue.receive(5)) == [2]
    queue.advance(5_000)
    assert ids(queue.receive(5)) == [1]


def test_queue_delay_applies_when_message_has_none(queue: Driver) -> None:
    queue.configure(delay_ms=1_000)
    queue.send(b"a")
    queue.send(b"b", delay=0)
    assert ids(queue.receive(5)) == [2]
    queue.advance(1_000)
    assert ids(queue.receive(5)) == [1]


def test_due_message_below_the_fresh_cursor_is_delivered_by_id(queue: Driver) -> None:
    queue.send(b"d", delay=1_000)
    queue.send(b"a", b"b", b"c")
    assert ids(queue.receive(2)) == [2, 3]  # the cursor steps over the delayed message 1
    queue.advance(1_000)
    assert ids(queue.receive(5)) == [1, 4]


def test_retention_removes_old_messages_in_any_state(queue: Driver) -> None:
    queue.configure(retention_ms=60_000)
    queue.send(b"a", b"b")
    queue.receive(1, visibility=120_000)
    queue.advance(30_000)
    queue.send(b"c")
    queue.advance(30_000)
    assert queue.tick()["expired"] == 2
    stats = queue.stats()
    assert stats["count"] == 1 and stats["in_flight"] == 0 and stats["bytes"] == 1
    assert ids(queue.receive(5)) == [3]


def test_max_receives_hands_off_dead_letters(queue: Driver) -> None:
    queue.configure(max_receives=2)
    queue.send(b"poison", attrs={"k": "v"})
    queue.send(b"fine")
    for _ in range(2):
        assert ids(queue.receive(1, visibility=100)) == [1]
        queue.advance(100)
    assert queue.tick()["dead_lettered"] == 1
    assert queue.stats()["dead_letters"] == 1 and queue.stats()["count"] == 1
    letter = queue.store.dead_letters(10)[0]
    assert letter["id"] == 1 and letter["body"] == b"poison" and letter["receive_count"] == 2
    assert letter["attrs"] == {"k": "v"} and letter["dead_lettered_at"] == queue.now
    assert queue.apply("ack_dead_letters", upto=1) == {"removed": 1}
    assert queue.store.dead_letters(10) == [] and queue.stats()["dead_letters"] == 0


def test_purge_removes_every_message_and_keeps_ids_increasing(queue: Driver) -> None:
    queue.send(b"a", b"b", b"c")
    queue.send(b"d", delay=1_000)
    queue.receive(1)
    assert queue.apply("purge") == {"purged": 4, "duplicate": False}
    assert queue.stats()["count"] == 0 and queue.receive(5) == []
    queue.advance(2_000)
    assert queue.receive(5) == []
    assert queue.send(b"e") == [{"id": 5, "duplicate": False}]
    assert ids(queue.receive(5)) == [5]


def test_a_retried_purge_answers_its_first_count_and_spares_later_messages(queue: Driver) -> None:
    # A client retries a purge whose answer it lost (a leader change): the retry must neither report 0 nor
    # delete what was sent after the purge.
    queue.configure(dedup_window_ms=1_000)
    queue.send(b"a", b"b", b"c")
    assert queue.apply("purge", purge_id="x") == {"purged": 3, "duplicate": False}
    queue.send(b"d")
    assert queue.apply("purge", purge_id="x") == {"purged": 3, "duplicate": True}
    assert queue.stats()["count"] == 1
    queue.advance(999)
    assert queue.apply("purge", purge_id="x")["duplicate"]
    queue.advance(1)  # the window ended: the id names a new purge
    assert queue.apply("purge", purge_id="x") == {"purged": 1, "duplicate": False}
    assert queue.tick()["dedup_expired"] == 0  # the first memory was replaced, not forgotten
    queue.advance(1_000)
    assert queue.tick()["dedup_expired"] == 1
    assert not any(key[:1] in (keys.PURGE, keys.DEDUP_EXPIRY) for key in queue.store._database().keys())


def test_replayed_index_is_a_no_op(queue: Driver) -> None:
    queue.send(b"a")
    before = queue.stats()
    assert queue.store.apply(queue.index, {"op": "enqueue", "now": queue.now,
                                           "messages": [[b"b", None, None, None, None]]}) is None
    assert queue.store.apply(1, {"op": "purge", "now": queue.now}) is None
    assert queue.stats() == before


def test_time_never_moves_backwards(queue: Driver) -> None:
    queue.send(b"a")
    queue.receive(1, visibility=1_000)
    queue.advance(1_000)
    assert queue.apply("tick")["returned"] == 1
    # A new leader with a clock 10 s behind: the partition keeps its time.
    message = queue.apply("receive", now=queue.now - 10_000, max=1, visibility_ms=500)[0]
    assert message["deadline"] == queue.now + 500


def test_state_survives_reopen(queue: Driver) -> None:
    queue.configure(max_messages=10, fifo=False)
    queue.send(b"a", b"b", dedup=None)
    queue.send(b"c", dedup="x")
    receipt = queue.receive(1, visibility=1_000)[0]["receipt"]
    before = queue.stats()
    queue.reopen()
    assert queue.stats() == before and queue.store.config()["max_messages"] == 10
    assert queue.send(b"c", dedup="x") == [{"id": 3, "duplicate": True}]
    assert queue.delete(receipt) == [{"ok": True}]
    assert ids(queue.receive(5)) == [2, 3]


def test_receivable_predicts_receive_and_writes_nothing(queue: Driver) -> None:
    queue.send(b"a", b"b", b"c")
    queue.receive(1, visibility=100)
    queue.advance(100)
    before = queue.stats()
    assert queue.store.receivable(queue.now, 2) == [1, 2]
    assert queue.stats() == before
    assert ids(queue.receive(2)) == [1, 2]


def test_peek_lists_messages_without_changing_them(queue: Driver) -> None:
    queue.send(b"a", b"b")
    queue.receive(1)
    peeked = queue.store.peek(5)
    assert [(m["id"], m["receive_count"]) for m in peeked] == [(1, 1), (2, 0)]
    assert "receipt" not in peeked[0]
    assert queue.store.peek(5) == peeked  # nothing changed: no lease, no receive count


def test_peek_tells_each_messages_state_and_when_it_becomes_receivable(queue: Driver) -> None:
    queue.send(b"leased", b"ready")
    queue.send(b"delayed", delay=5_000)
    queue.receive(1, visibility=2_000)
    states = [(m["body"], m["state"], m["visible_at"]) for m in queue.store.peek(5)]
    assert states == [(b"leased", "in_flight", queue.now + 2_000), (b"ready", "ready", None),
                      (b"delayed", "delayed", queue.now + 5_000)]


def test_peek_pages_on_after_a_given_id(queue: Driver) -> None:
    queue.send(*[b"m%d" % i for i in range(1, 8)])
    queue.delete(queue.receive(1)[0]["receipt"])  # id 1 gone: the first page starts at 2
    assert [m["id"] for m in queue.store.peek(3)] == [2, 3, 4]
    assert [m["id"] for m in queue.store.peek(3, after=4)] == [5, 6, 7]
    assert queue.store.peek(3, after=7) == []
    assert [m["id"] for m in queue.store.peek(3, after=0)] == [2, 3, 4]  # a page past the end moved no cursor


def test_peek_stops_at_its_byte_budget_but_always_returns_the_first_message(queue: Driver) -> None:
    queue.send(b"x" * 300, b"y" * 300, b"z" * 300)
    assert [m["id"] for m in queue.store.peek(5, max_bytes=100)] == [1]  # larger than the budget, alone
    assert [m["id"] for m in queue.store.peek(5, max_bytes=700)] == [1, 2]
    assert [m["id"] for m in queue.store.peek(2, max_bytes=10_000)] == [1, 2]


def test_fresh_cursor_skips_consumed_messages(queue: Driver) -> None:
    for _ in range(20):
        queue.send(*[b"x"] * 50)
        queue.delete(*[m["receipt"] for m in queue.receive(50)])
    queue.send(b"head")
    meta = queue.store._meta
    assert meta.fresh == 1_001  # past the 1,000 consumed ids
    assert meta.back_low == keys.ABOVE_EVERY_ID  # B is empty, so receives skip it without a scan
    assert queue.receive(1)[0]["body"] == b"head"


def test_checkpoint_and_restore(queue: Driver, tmp_path) -> None:
    queue.send(b"a", b"b", b"c")
    queue.receive(1)
    queue.store.checkpoint(str(tmp_path / "snap"))
    snapshot_stats = queue.stats()
    queue.send(b"after the snapshot")
    restored = PartitionStore.restore(str(tmp_path / "snap"), str(tmp_path / "restored"))
    try:
        assert restored.stats(queue.now) == snapshot_stats
        assert restored.applied_index == snapshot_stats["applied_index"]
    finally:
        restored.close()


def test_compacting_consumed_ranges_keeps_state(queue: Driver) -> None:
    queue.send(*[b"x"] * 200)
    queue.delete(*[m["receipt"] for m in queue.receive(150)])
    before = queue.stats()
    queue.store.compact_consumed()
    assert queue.stats() == before
    assert ids(queue.receive(100)) == list(range(151, 201))


def test_advance_limit_spreads_work_over_commands(tmp_path) -> None:
    driver = Driver(str(tmp_path / "p"), StoreOptions(advance_limit=2))
    try:
        driver.send(*[b"x"] * 5)
        driver.receive(5, visibility=10)
        driver.advance(10)
        assert [driver.tick()["returned"] for _ in range(4)] == [2, 2, 1, 0]
        assert driver.stats()["ready"] == 5
    finally:
        driver.close()


def test_scan_limit_still_makes_progress(tmp_path) -> None:
    driver = Driver(str(tmp_path / "p"), StoreOptions(scan_limit=3))
    try:
        for _ in range(10):
            driver.send(b"delayed", delay=60_000)
        driver.send(b"ready")
        got = []
        for _ in range(10):
            got += driver.receive(1)
            if got:
                break
        assert ids(got) == [11]
    finally:
        driver.close()


# ---------------------------------------------------------------- FIFO


def test_fifo_one_in_flight_per_group_without_blocking_others(fifo: Driver) -> None:
    for i in range(3):
        fifo.send(b"a%d" % i, group="a")
    fifo.send(b"b0", group="b")
    fifo.send(b"c0")  # no group: the default group ""
    first = fifo.receive(10)
    assert [(m["id"], m["group"]) for m in first] == [(1, "a"), (4, "b"), (5, "")]
    assert fifo.receive(10) == []
    fifo.delete(first[0]["receipt"])
    assert ids(fifo.receive(10)) == [2]


def test_fifo_redelivers_group_head_before_later_messages(fifo: Driver) -> None:
    fifo.send(b"1", b"2", group="g")
    head = fifo.receive(1, visibility=100)[0]
    fifo.advance(100)
    again = fifo.receive(5, visibility=100)
    assert ids(again) == [1] and again[0]["receive_count"] == 2
    assert fifo.delete(head["receipt"]) == [{"error": "ReceiptExpired"}]
    fifo.delete(again[0]["receipt"])
    assert ids(fifo.receive(5)) == [2]


def test_fifo_rejects_per_message_delay_and_uses_queue_delay(fifo: Driver) -> None:
    from dmq_server.store import InvalidCommand
    with pytest.raises(InvalidCommand):
        fifo.send(b"x", delay=10, group="g")
    fifo.configure(delay_ms=1_000)
    fifo.send(b"1", b"2", group="g")
    assert fifo.receive(5) == []
    fifo.advance(1_000)
    assert ids(fifo.receive(5)) == [1]


def test_fifo_dead_letter_unblocks_group(fifo: Driver) -> None:
    fifo.configure(max_receives=1)
    fifo.send(b"poison", b"next", group="g")
    fifo.receive(1, visibility=10)
    fifo.advance(10)
    assert ids(fifo.receive(5)) == [2]
    assert fifo.store.dead_letters(5)[0]["id"] == 1


def test_fifo_retention_removes_heads_in_order(fifo: Driver) -> None:
    fifo.configure(retention_ms=60_000)
    fifo.send(b"1", b"2", group="g")
    fifo.receive(1, visibility=120_000)
    fifo.advance(30_000)
    fifo.send(b"3", group="g")
    fifo.advance(30_000)
    assert fifo.tick()["expired"] == 2
    assert ids(fifo.receive(5)) == [3]


def test_fifo_flag_is_fixed_once_messages_were_held(queue: Driver) -> None:
    from dmq_server.store import InvalidCommand
    queue.send(b"a")
    with pytest.raises(InvalidCommand):
        queue.configure(fifo=True)


def test_background_compactor_compacts_after_many_removals(tmp_path) -> None:
    import time

    from dmq_server.store.compactor import Compactor

    compactor = Compactor()
    driver = Driver(str(tmp_path / "p"), StoreOptions(compactor=compactor, compact_after_deletes=100))
    try:
        driver.send(*[b"x"] * 250)
        driver.delete(*[m["receipt"] for m in driver.receive(250)])
        deadline = time.monotonic() + 10
        while compactor.compactions == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert compactor.compactions == 1
        driver.send(b"after")
        assert ids(driver.receive(5)) == [251]
    finally:
        driver.close()
        compactor.stop()
