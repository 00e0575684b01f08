"""The in-flight index: one lease entry per deadline (`I deadline -> ids`), kept exact by every command that ends a
lease, and still readable when it was written by a store that kept one key per message."""

from __future__ import annotations

import struct

from dmq_server.store import keys

from .harness import Driver


def _leases(queue: Driver) -> dict[bytes, bytes]:
    db = queue.store._db
    return {key: value for key, value in db.items(from_key=keys.IN_FLIGHT) if key[:1] == keys.IN_FLIGHT}


def _ids(value: bytes) -> list[int]:
    return list(struct.unpack(f">{len(value) // 8}Q", value))


def test_a_receive_writes_one_lease_entry_for_all_its_messages(queue: Driver) -> None:
    queue.send(*[b"m"] * 5)
    queue.receive(5, visibility=1_000)
    assert list(_leases(queue).items()) == [(keys.in_flight(queue.now + 1_000), keys.pack_ids([1, 2, 3, 4, 5]))]


def test_deleting_received_messages_leaves_no_lease_behind(queue: Driver) -> None:
    queue.send(*[b"m"] * 6)
    delivered = queue.receive(6, visibility=1_000)
    queue.delete(*[m["receipt"] for m in delivered[:2]])
    assert [_ids(value) for value in _leases(queue).values()] == [[3, 4, 5, 6]]
    queue.delete(*[m["receipt"] for m in delivered[2:]])
    assert _leases(queue) == {}
    assert queue.store.next_due_at(queue.now) is None  # no tick is scheduled for a lease that ended


def test_leases_ending_in_the_same_millisecond_share_an_entry(queue: Driver) -> None:
    queue.send(b"a", b"b", b"c")
    first = queue.receive(1, visibility=2_000)
    queue.advance(1_000)
    queue.receive(2, visibility=1_000)  # the same deadline
    assert [_ids(value) for value in _leases(queue).values()] == [[1, 2, 3]]
    queue.delete(first[0]["receipt"])
    queue.advance(1_000)
    assert queue.tick()["returned"] == 2
    assert _leases(queue) == {}


def test_a_message_extended_twice_in_one_command_keeps_only_its_last_lease(queue: Driver) -> None:
    queue.send(b"a")
    receipt = queue.receive(1, visibility=1_000)[0]["receipt"]
    results = queue.apply("change_visibility", entries=[[*receipt, 2_000], [*receipt, 5_000]])
    assert [result["deadline"] for result in results] == [queue.now + 2_000, queue.now + 5_000]
    assert list(_leases(queue)) == [keys.in_flight(queue.now + 5_000)]
    queue.advance(4_999)
    assert queue.tick()["returned"] == 0
    queue.advance(1)
    assert queue.tick()["returned"] == 1


def test_leases_written_one_key_per_message_are_still_honoured(queue: Driver) -> None:
    """A store written before leases were grouped: `I deadline id -> b""` keys and a cursor with an id."""
    queue.send(b"kept", b"deleted")
    kept, deleted = queue.receive(2, visibility=1_000)
    deadline = queue.now + 1_000
    db = queue.store._db
    db.delete(keys.in_flight(deadline))
    for ident in (1, 2):
        db.put(keys.IN_FLIGHT + keys.pack_pair(deadline, ident), b"")
    meta = queue.store._meta.copy()
    meta.in_flight_cursor = keys.IN_FLIGHT + keys.pack_pair(queue.now, 0)
    db.put(keys.META, meta.encode())
    queue.reopen()

    queue.delete(deleted["receipt"])  # its old key stays: nothing reads it as a lease of this deadline
    queue.advance(1_000)
    assert queue.tick()["returned"] == 1  # the deleted message's leftover key is skipped, not an error
    assert _leases(queue) == {}
    again = queue.receive(2)
    assert [(m["body"], m["receive_count"]) for m in again] == [(b"kept", 2)]
