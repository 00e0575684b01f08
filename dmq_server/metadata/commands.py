"""Validation of metadata commands: every field checked before the command touches state (docs/METADATA.md)."""

from __future__ import annotations

from typing import Any, NamedTuple

import msgpack

from dmq_server.store.commands import int_field
from dmq_server.store.errors import InvalidCommand

from . import limits
from .naming import QUEUE_NAME, is_queue_name


class NewQueue(NamedTuple):
    name: str
    attrs: dict[Any, Any]  # as msgpack decodes it, so the record in memory equals the one read back from disk
    partitions: list[list[str]]
    max_queues: int


def queue_name(command: dict[str, Any]) -> str:
    name = command.get("name")
    if not is_queue_name(name):
        raise InvalidCommand(f"'name' must match {QUEUE_NAME.pattern}")
    return name


def _identifier(value: Any, what: str) -> str:
    # Printable text excludes lone surrogates, so the id always encodes into a RocksDB key.
    if not isinstance(value, str) or not 0 < len(value) <= limits.MAX_IDENTIFIER or not value.isprintable():
        raise InvalidCommand(f"{what} must be printable text of 1 to {limits.MAX_IDENTIFIER} characters")
    return value


def _list(value: Any, what: str, low: int, high: int) -> list[Any] | tuple[Any, ...]:
    if not isinstance(value, (list, tuple)) or not low <= len(value) <= high:
        raise InvalidCommand(f"{what} must be a list of {low} to {high} entries")
    return value


def _attrs(value: Any) -> dict[Any, Any]:
    if not isinstance(value, dict):
        raise InvalidCommand("'attrs' must be a map")
    try:
        encoded = msgpack.packb(value)
        attrs = msgpack.unpackb(encoded)  # strict: map keys are strings or bytes at every level
    except (TypeError, ValueError, OverflowError) as exc:
        raise InvalidCommand(f"'attrs' cannot be encoded as msgpack with string keys: {exc}") from None
    if len(encoded) > limits.MAX_ATTRS_BYTES:
        raise InvalidCommand(f"'attrs' must encode to at most {limits.MAX_ATTRS_BYTES} bytes")
    return attrs


def _replica_set(value: Any) -> list[str]:
    nodes = [_identifier(node, "a node id") for node in _list(value, "a replica set", 1, limits.MAX_REPLICAS)]
    if len(set(nodes)) != len(nodes):
        raise InvalidCommand("the nodes of a replica set must be distinct")
    return nodes


def parse_create_queue(command: dict[str, Any]) -> NewQueue:
    name = queue_name(command)
    attrs = _attrs(command.get("attrs"))
    partitions = [_replica_set(entry)
                  for entry in _list(command.get("partitions"), "'partitions'", 1, limits.MAX_PARTITIONS)]
    max_queues = int_field(command.get("max_queues"), "'max_queues'", 1, limits.MAX_QUEUES)
    return NewQueue(name, attrs, partitions, max_queues)


class QueueUpdate(NamedTuple):
    name: str
    queue_id: int
    attrs: dict[Any, Any]
    previous: dict[Any, Any]  # the attributes `attrs` was computed from


def parse_update_queue(command: dict[str, Any]) -> QueueUpdate:
    return QueueUpdate(queue_name(command), int_field(command.get("id"), "'id'", 1, 2**63 - 1),
                       _attrs(command.get("attrs")), _attrs(command.get("previous")))


def parse_heartbeat(command: dict[str, Any]) -> tuple[str, tuple[str, ...]]:
    """The node and the sorted, distinct group ids it leads."""
    node = _identifier(command.get("node"), "'node'")
    leading = _list(command.get("leading"), "'leading'", 0, limits.MAX_LEADING)
    return node, tuple(sorted({_identifier(group, "a group id") for group in leading}))
