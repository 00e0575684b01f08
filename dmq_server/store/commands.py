"""Validation of partition commands: every field type- and range-checked before the command touches state.

Each parser returns plain tuples for the state machine and raises a CommandError subclass with a message that
says what to fix. Size limits that depend on the queue configuration are checked here too, so a command either
passes whole or changes nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple, TypeVar

import msgpack

from . import limits
from .config import QueueConfig
from .errors import InvalidCommand, InvalidReceipt, MessageTooLarge, UnknownOperation

ATTRIBUTE_TYPES = (str, bytes, int, float, bool)


class NewMessage(NamedTuple):
    body: bytes
    attrs: bytes  # msgpack-encoded, b"" when there are none
    delay_ms: int | None
    dedup_id: bytes | None
    group: bytes | None


Handler = TypeVar("Handler")


def dispatch(command: Any, handlers: Mapping[str, Handler]) -> tuple[Handler, int]:
    """The handler for a command's 'op' and the command's 'now'; InvalidCommand or UnknownOperation otherwise."""
    if not isinstance(command, dict):
        raise InvalidCommand("a command is a map with at least 'op' and 'now'")
    op = command.get("op")
    handler = handlers.get(op) if isinstance(op, str) else None  # a list op is unhashable
    if handler is None:
        raise UnknownOperation(f"unknown operation {op!r}; known: {', '.join(handlers)}")
    return handler, now_of(command)


def now_of(command: dict[str, Any]) -> int:
    now = command.get("now")
    if type(now) is not int or not 0 <= now < limits.MAX_TIME_MS:
        raise InvalidCommand("'now' must be an integer count of milliseconds since the epoch")
    return now


def int_field(value: Any, name: str, low: int, high: int) -> int:
    if type(value) is not int or not low <= value <= high:
        raise InvalidCommand(f"{name} must be an integer from {low} to {high}")
    return value


def _entries(command: dict[str, Any], field: str) -> list[Any]:
    entries = command.get(field)
    if not isinstance(entries, list) or not 0 < len(entries) <= limits.MAX_BATCH_ENTRIES:
        raise InvalidCommand(f"'{field}' must be a list of 1 to {limits.MAX_BATCH_ENTRIES} entries")
    return entries


def _key(value: Any, name: str) -> bytes | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidCommand(f"{name} must be a string or null")
    try:
        raw = value.encode()
    except UnicodeEncodeError:
        raise InvalidCommand(f"{name} must be valid UTF-8 text") from None
    if not 0 < len(raw) <= limits.MAX_KEY_BYTES:
        raise InvalidCommand(f"{name} must be 1 to {limits.MAX_KEY_BYTES} bytes of UTF-8")
    return raw


def _attributes(value: Any) -> bytes:
    if value is None or value == {}:
        return b""
    if not isinstance(value, dict) or len(value) > limits.MAX_ATTRIBUTES:
        raise InvalidCommand(f"attributes must be a map of at most {limits.MAX_ATTRIBUTES} entries")
    for name, item in value.items():
        if not isinstance(name, str) or not 0 < len(name) <= limits.MAX_ATTRIBUTE_NAME:
            raise InvalidCommand(f"attribute names must be strings of 1 to {limits.MAX_ATTRIBUTE_NAME} characters")
        if not isinstance(item, ATTRIBUTE_TYPES):
            raise InvalidCommand(f"attribute {name!r} must be a string, bytes, integer, float or boolean")
    try:
        return msgpack.packb(value)
    except (OverflowError, ValueError) as exc:
        raise InvalidCommand(f"attributes cannot be encoded: {exc}") from None


_new_message = tuple.__new__  # NewMessage(...) runs a Python __new__: 3x slower, once per message enqueued


def parse_enqueue(command: dict[str, Any], config: QueueConfig) -> list[NewMessage]:
    messages = []
    for entry in _entries(command, "messages"):
        if not isinstance(entry, (list, tuple)) or len(entry) != 5:
            raise InvalidCommand("each message must be [body, attrs, delay_ms, dedup_id, group]")
        body, attrs, delay, dedup_id, group = entry
        if not isinstance(body, bytes):
            raise InvalidCommand("message body must be bytes")
        if delay is not None:
            if config.fifo:
                raise InvalidCommand("FIFO queues take no per-message delay; set the queue's delay_ms instead")
            int_field(delay, "delay_ms", 0, limits.MAX_DELAY_MS)
        encoded_attrs = b"" if attrs is None else _attributes(attrs)
        size = len(body) + len(encoded_attrs)
        if size > config.max_message_bytes:
            raise MessageTooLarge(
                f"message of {size} bytes (body and attributes) exceeds the queue's max_message_bytes "
                f"of {config.max_message_bytes}; send a smaller message or raise the limit")
        messages.append(_new_message(NewMessage, (
            body, encoded_attrs, delay, None if dedup_id is None else _key(dedup_id, "dedup_id"),
            None if group is None else _key(group, "group"))))
    return messages


class Segment(NamedTuple):
    batch_id: bytes
    first: int  # index of its first message in the command's 'messages'
    count: int


def parse_batches(command: dict[str, Any], message_count: int) -> list[Segment]:
    """An enqueue's optional 'batches': [[batch_id, first, count], ...], the segments of 'messages' sent under a
    batch id, in order and not overlapping; [] when absent or null."""
    raw = command.get("batches")
    if raw is None:
        return []
    if not isinstance(raw, list) or not 0 < len(raw) <= message_count:
        raise InvalidCommand(f"'batches' must be null or a list of 1 to {message_count} (the number of messages) "
                             "segments [batch_id, first, count]")
    segments = []
    end = 0  # of the previous segment
    for entry in raw:
        if not isinstance(entry, (list, tuple)) or len(entry) != 3:
            raise InvalidCommand("each segment of 'batches' must be [batch_id, first, count]")
        batch_id, first, count = entry
        if not isinstance(batch_id, bytes) or not 0 < len(batch_id) <= limits.MAX_KEY_BYTES:
            raise InvalidCommand(f"a batch_id must be 1 to {limits.MAX_KEY_BYTES} bytes")
        if type(first) is not int or type(count) is not int or first < 0 or count < 1 \
                or first + count > message_count:
            raise InvalidCommand(f"a segment [batch_id, first, count] needs first >= 0, count >= 1 and "
                                 f"first + count <= {message_count} (the number of messages)")
        if first < end:
            raise InvalidCommand("the segments of 'batches' must be in message order and must not overlap")
        end = first + count
        segments.append(Segment(batch_id, first, count))
    return segments


def parse_purge(command: dict[str, Any]) -> bytes | None:
    """A purge's optional 'purge_id': its idempotency key, so that a retry purges nothing sent since."""
    return _key(command.get("purge_id"), "purge_id")


def parse_receive(command: dict[str, Any]) -> tuple[int, int | None, int | None]:
    """(max messages, visibility ms or None, max bytes or None): a receive picks messages until either limit;
    the byte budget (records' sizes) keeps an answer inside one frame, and one message is always picked."""
    count = int_field(command.get("max"), "'max'", 1, limits.MAX_RECEIVE)
    visibility = command.get("visibility_ms")
    if visibility is not None:
        int_field(visibility, "'visibility_ms'", 0, limits.MAX_VISIBILITY_MS)
    max_bytes = command.get("max_bytes")
    if max_bytes is not None:
        int_field(max_bytes, "'max_bytes'", 1, 1 << 30)
    return count, visibility, max_bytes


def _receipt(entry: list[Any] | tuple[Any, ...]) -> tuple[int, int]:
    ident, count = entry[0], entry[1]
    if type(ident) is not int or type(count) is not int or not 1 <= ident < 2**63 or not 1 <= count < 2**32:
        raise InvalidReceipt("a receipt is [message id, receive count], two positive integers")
    return ident, count


def parse_delete(command: dict[str, Any]) -> list[tuple[int, int]]:
    receipts = []
    for entry in _entries(command, "receipts"):
        if not isinstance(entry, (list, tuple)) or len(entry) != 2:
            raise InvalidReceipt("a receipt is [message id, receive count] as returned by receive")
        receipts.append(_receipt(entry))
    return receipts


def parse_change_visibility(command: dict[str, Any]) -> list[tuple[int, int, int]]:
    parsed = []
    for entry in _entries(command, "entries"):
        if not isinstance(entry, (list, tuple)) or len(entry) != 3:
            raise InvalidCommand("each entry must be [message id, receive count, visibility_ms]")
        ident, count = _receipt(entry[:2])
        parsed.append((ident, count, int_field(entry[2], "visibility_ms", 0, limits.MAX_VISIBILITY_MS)))
    return parsed


def parse_ack_dead_letters(command: dict[str, Any]) -> int:
    return int_field(command.get("upto"), "'upto'", 0, 2**63 - 1)
