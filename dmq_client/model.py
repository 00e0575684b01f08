"""The SDK's value types: what a send carries, a peeked message, and a queue's description."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Union

import msgpack

AttributeValue = Union[str, bytes, int, float, bool]
Body = Union[bytes, bytearray, memoryview, str]


@dataclass(frozen=True)
class SendEntry:
    """One message of `send_batch` (plain bytes or str bodies are accepted there too)."""

    body: Body
    attributes: dict[str, AttributeValue] | None = None
    dedup_id: str | None = None
    group: str | None = None
    delay: float = 0  # seconds; FIFO queues refuse per-message delays


def as_entry(value: Body | SendEntry | dict[str, Any]) -> SendEntry:
    if isinstance(value, SendEntry):
        return value
    if isinstance(value, dict):
        unknown = set(value) - {"body", "attributes", "dedup_id", "group", "delay"}
        if unknown or "body" not in value:
            raise TypeError(f"a batch entry needs 'body' and may have attributes, dedup_id, group and delay; "
                            f"got {sorted(value)}")
        return SendEntry(**value)
    return SendEntry(value)


def wire_message(entry: SendEntry) -> tuple[dict[str, Any], int]:
    """The protocol's message map for `entry`, and its approximate size in a frame."""
    body = entry.body
    if isinstance(body, str):
        body = body.encode()
    elif isinstance(body, (bytearray, memoryview)):
        body = bytes(body)
    elif not isinstance(body, bytes):
        raise TypeError(f"a message body must be bytes or str, not {type(body).__name__}")
    message: dict[str, Any] = {"body": body}
    size = len(body) + 16
    if entry.attributes:
        message["attributes"] = entry.attributes
        size += len(msgpack.packb(entry.attributes))
    if entry.dedup_id is not None:
        message["dedup_id"] = entry.dedup_id
        size += len(entry.dedup_id) + 10
    if entry.group is not None:
        message["group"] = entry.group
        size += len(entry.group) + 8
    if entry.delay:
        if entry.delay < 0:
            raise ValueError("delay must be >= 0 seconds")
        message["delay_ms"] = int(round(entry.delay * 1000))
    return message, size


@dataclass(frozen=True)
class PartitionInfo:
    partition: int
    leader: str | None  # the client address of its leader, None while it has none
    replicas: list[str]


@dataclass(frozen=True)
class QueueInfo:
    """A queue as `create_queue` and `get_queue` describe it; `stats` only from get_queue."""

    name: str
    id: int
    attributes: dict[str, Any]
    partitions: list[PartitionInfo]
    created_at: int  # ms since the epoch
    stats: dict[str, int] = field(default_factory=dict)
    unavailable_partitions: int = 0

    @classmethod
    def from_wire(cls, description: dict[str, Any]) -> "QueueInfo":
        return cls(description["name"], description["id"], dict(description.get("attributes", {})),
                   [PartitionInfo(p["partition"], p.get("leader"), list(p.get("replicas", [])))
                    for p in description["partitions"]],
                   description.get("created_at", 0), dict(description.get("stats", {})),
                   description.get("unavailable_partitions", 0))


@dataclass(frozen=True)
class PeekedMessage:
    """A message as `peek` shows it: read, not received. It has no receipt, and peeking changed nothing (no
    lease, no receive count)."""

    id: str
    body: bytes
    attributes: dict[str, Any]
    group: str | None
    receive_count: int
    enqueued_at: int  # ms since the epoch
    state: str  # "ready", "in_flight" (received, its lease running) or "delayed"
    visible_at: int | None  # ms since the epoch: when an in-flight or delayed message becomes receivable again

    @classmethod
    def from_wire(cls, raw: dict[str, Any]) -> "PeekedMessage":
        return cls(raw["id"], raw["body"], dict(raw.get("attributes") or {}), raw.get("group"),
                   raw["receive_count"], raw["enqueued_at"], raw["state"], raw.get("visible_at"))
