"""The message record stored under `M id`: a fixed header, then group, attributes (msgpack) and body.

A fixed struct header keeps the hot fields cheap to read and rewrite; receives rewrite only the header and copy
the rest unchanged.
"""

from __future__ import annotations

import struct
from typing import Any, NamedTuple

import msgpack

DELAYED = 0
READY = 1
IN_FLIGHT = 2

# state, enqueued_at, timer (visible_at when delayed, deadline when in flight, else 0), receive_count,
# group length + 1 (0 = no group), attributes length
_HEADER = struct.Struct(">BQQIHI")
HEADER_SIZE = _HEADER.size


class Header(NamedTuple):
    state: int
    enqueued_at: int
    timer: int
    receive_count: int
    group_len: int  # length + 1; 0 when the message has no group
    attrs_len: int


def encode(state: int, enqueued_at: int, timer: int, receive_count: int, group: bytes | None, attrs: bytes,
           body: bytes) -> bytes:
    if group is None:
        return _HEADER.pack(state, enqueued_at, timer, receive_count, 0, len(attrs)) + attrs + body
    header = _HEADER.pack(state, enqueued_at, timer, receive_count, len(group) + 1, len(attrs))
    return b"".join((header, group, attrs, body))


_new_header = tuple.__new__


def header(record: bytes) -> Header:
    return _new_header(Header, _HEADER.unpack_from(record))


def with_header(record: bytes, old: Header, state: int, timer: int, receive_count: int) -> bytes:
    """The record with a new state, timer and receive count; `old` is its current header."""
    return _HEADER.pack(state, old.enqueued_at, timer, receive_count, old.group_len, old.attrs_len) + \
        record[HEADER_SIZE:]


def group_of(record: bytes, head: Header) -> bytes | None:
    if head.group_len == 0:
        return None
    return record[HEADER_SIZE:HEADER_SIZE + head.group_len - 1]


def size_of(head: Header, record: bytes) -> int:
    """Message size as the limit counts it: body plus encoded attributes."""
    group = head.group_len - 1 if head.group_len else 0
    return len(record) - HEADER_SIZE - group


def deliver(ident: int, record: bytes, deadline: int) -> tuple[bytes, dict[str, Any]]:
    """One delivery of a ready message: its record in flight until `deadline` with the receive count raised, and
    the message as a receive returns it. One header unpack for both (the hot path of every receive)."""
    _, enqueued_at, _, receive_count, group_len, attrs_len = _HEADER.unpack_from(record)
    receive_count += 1
    start = HEADER_SIZE + group_len - 1 if group_len else HEADER_SIZE
    updated = _HEADER.pack(IN_FLIGHT, enqueued_at, deadline, receive_count, group_len, attrs_len) + \
        record[HEADER_SIZE:]
    return updated, {
        "id": ident,
        "body": record[start + attrs_len:],
        "attrs": msgpack.unpackb(record[start:start + attrs_len]) if attrs_len else {},
        "group": record[HEADER_SIZE:start].decode() if group_len else None,
        "receive_count": receive_count,
        "enqueued_at": enqueued_at,
        "deadline": deadline,
        "receipt": [ident, receive_count],
    }


def decode(ident: int, record: bytes, head: Header | None = None) -> dict[str, Any]:
    """The message as a receive or peek returns it (without a receipt); `head` saves re-reading the header."""
    state, enqueued_at, timer, receive_count, group_len, attrs_len = head or header(record)
    if group_len:
        start = HEADER_SIZE + group_len - 1
        group: str | None = record[HEADER_SIZE:start].decode()
    else:
        start = HEADER_SIZE
        group = None
    return {
        "id": ident,
        "body": record[start + attrs_len:],
        "attrs": msgpack.unpackb(record[start:start + attrs_len]) if attrs_len else {},
        "group": group,
        "receive_count": receive_count,
        "enqueued_at": enqueued_at,
        "deadline": timer if state == IN_FLIGHT else 0,
    }
