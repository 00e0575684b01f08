"""Key layout of a partition database: a one-byte prefix, then big-endian fields, so byte order is id order.

See docs/STORE.md "Storage layout".
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Callable, Sequence

import msgpack

META = b"\x00"
MESSAGE = b"M"  # M id -> message record
BACK = b"B"  # B id -> b"" : ready again, below the fresh cursor (standard queues)
IN_FLIGHT = b"I"  # I deadline -> ids leased until then (pack_ids); see leased_ids for the older I deadline id
DELAYED = b"D"  # D visible_at id -> b""
HEAD = b"H"  # H id -> group : head of an eligible FIFO group
GROUP = b"G"  # G group -> (head, tail, in-flight id)
NEXT = b"N"  # N id -> next id of the same FIFO group
DEDUP = b"U"  # U dedup id -> (message id, window end)
DEDUP_EXPIRY = b"E"  # E window end dedup id -> b"" ; E window end mark (0xFF, 0xFE) batch or purge id -> b""
BATCH = b"S"  # S batch id -> window end (u64) + the segment's results (pack_batch_results / pack_batch_run)
PURGE = b"P"  # P purge id -> window end (u64) + the count it purged (u64)
DEAD = b"X"  # X id -> dead-letter record

# Message ids are below 2**63 (receipts are checked against it): a lower bound of an empty index.
ABOVE_EVERY_ID = 1 << 63

_U64 = struct.Struct(">Q")
_U64_PAIR = struct.Struct(">QQ")
_U64_TRIPLE = struct.Struct(">QQQ")
_PREFIX_ID = struct.Struct(">cQ")
_PREFIX_TIME_ID = struct.Struct(">cQQ")

# Key builders for the hot paths: partials of a C function, so building a key costs one call.
message: Callable[[int], bytes] = functools.partial(_PREFIX_ID.pack, MESSAGE)
back: Callable[[int], bytes] = functools.partial(_PREFIX_ID.pack, BACK)
head: Callable[[int], bytes] = functools.partial(_PREFIX_ID.pack, HEAD)
next_in_group: Callable[[int], bytes] = functools.partial(_PREFIX_ID.pack, NEXT)
dead: Callable[[int], bytes] = functools.partial(_PREFIX_ID.pack, DEAD)
in_flight: Callable[[int], bytes] = functools.partial(_PREFIX_ID.pack, IN_FLIGHT)  # deadline
delayed: Callable[[int, int], bytes] = functools.partial(_PREFIX_TIME_ID.pack, DELAYED)  # visible_at, id


def end_of(prefix: bytes) -> bytes:
    """The first key after every key with this one-byte prefix."""
    return bytes([prefix[0] + 1])


def by_id(prefix: bytes, ident: int) -> bytes:
    return _PREFIX_ID.pack(prefix, ident)


def time_and_id(key: bytes) -> tuple[int, int]:
    return _U64_PAIR.unpack_from(key, 1)


def id_of(key: bytes) -> int:
    return _U64.unpack_from(key, 1)[0]


# Mark batch and purge ids in the expiry index E (shared with dedup ids, one cursor for all). 0xFF and 0xFE never
# occur in UTF-8, so neither starts a dedup id (always valid UTF-8): `E end dedup_id`, `E end 0xFF batch_id` and
# `E end 0xFE purge_id` cannot be confused. Batch and purge ids are remembered under the prefix their mark names,
# as window end (u64) + what the id's first request answered.
BATCH_MARK = b"\xff"
PURGE_MARK = b"\xfe"
REMEMBERED_UNDER = {BATCH_MARK: BATCH, PURGE_MARK: PURGE}


def dedup_expiry(at: int, dedup_id: bytes) -> bytes:
    return DEDUP_EXPIRY + _U64.pack(at) + dedup_id


def marked_expiry(at: int, mark: bytes, ident: bytes) -> bytes:
    return DEDUP_EXPIRY + _U64.pack(at) + mark + ident


# The results a batch id remembers (after the window end in its S value), one int per message: the id, -id for a
# per-message dedup duplicate, 0 for QueueFull. Usually every message was enqueued, under consecutive ids: that
# run is stored as 0x00 + first id (u64) + count (u32); anything else as a msgpack array of the ints (an array
# never starts with the byte 0x00).
_BATCH_RUN = b"\x00"
_RUN = struct.Struct(">QI")


def pack_batch_run(first: int, count: int) -> bytes:
    return _BATCH_RUN + _RUN.pack(first, count)


def pack_batch_results(results: list[int]) -> bytes:
    return msgpack.packb(results)


def unpack_batch_results(raw: bytes) -> Sequence[int]:
    if raw[:1] == _BATCH_RUN:
        first, count = _RUN.unpack_from(raw, 1)
        return range(first, first + count)
    return msgpack.unpackb(raw)


def pack_u64(value: int) -> bytes:
    return _U64.pack(value)


def unpack_u64(raw: bytes) -> int:
    return _U64.unpack(raw)[0]


def pack_pair(first: int, second: int) -> bytes:
    return _U64_PAIR.pack(first, second)


def unpack_pair(raw: bytes) -> tuple[int, int]:
    return _U64_PAIR.unpack(raw)


def pack_triple(first: int, second: int, third: int) -> bytes:
    return _U64_TRIPLE.pack(first, second, third)


def unpack_triple(raw: bytes) -> tuple[int, int, int]:
    return _U64_TRIPLE.unpack(raw)


def pack_ids(ids: Sequence[int]) -> bytes:
    return struct.pack(f">{len(ids)}Q", *ids)


def leased_ids(key: bytes, value: bytes) -> list[int]:
    """The ids of an in-flight entry, ascending. Stores written before leases were grouped by deadline have one
    key per message, `I deadline id -> b""`; both kinds are read, new leases are written grouped."""
    if len(key) == _PREFIX_TIME_ID.size:
        return [_U64.unpack_from(key, 9)[0]]
    return list(struct.unpack(f">{len(value) // 8}Q", value))
