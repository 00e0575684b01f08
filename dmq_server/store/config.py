"""Queue attributes a partition enforces, with their defaults and allowed ranges (docs/STORE.md)."""

from __future__ import annotations

import dataclasses
from typing import Any

from . import limits
from .errors import InvalidCommand


@dataclasses.dataclass(frozen=True, slots=True)
class QueueConfig:
    fifo: bool = False
    max_messages: int = 1_000_000
    max_message_bytes: int = 262_144
    retention_ms: int = 345_600_000
    visibility_timeout_ms: int = 30_000
    delay_ms: int = 0
    max_receives: int = 0
    dedup_window_ms: int = 300_000

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "QueueConfig":
        return cls(**values)


# attribute -> (low, high), inclusive
INT_RANGES: dict[str, tuple[int, int]] = {
    "max_messages": (1, 100_000_000),
    "max_message_bytes": (1, limits.HARD_MAX_MESSAGE_BYTES),
    "retention_ms": (60_000, 1_209_600_000),
    "visibility_timeout_ms": (0, limits.MAX_VISIBILITY_MS),
    "delay_ms": (0, limits.MAX_DELAY_MS),
    "max_receives": (0, 1_000),
    "dedup_window_ms": (1_000, 86_400_000),
}


def partition_config(attrs: dict[str, Any], partitions: int) -> QueueConfig:
    """A partition's configuration from its queue's attributes (the frontend's map, which holds more than the
    store's): attributes left out take their defaults, and max_messages is the queue's, split over partitions."""
    values = {name: attrs[name] for name in ("fifo", *INT_RANGES) if attrs.get(name) is not None}
    if "max_messages" in values:
        values["max_messages"] = max(1, -(-values["max_messages"] // partitions))
    return QueueConfig.from_dict({**QueueConfig().to_dict(), **values})


def updated_config(current: QueueConfig, attrs: Any, *, ever_had_messages: bool) -> QueueConfig:
    """Validate a `configure` update and return the new configuration; raise InvalidCommand otherwise."""
    if not isinstance(attrs, dict):
        raise InvalidCommand("configure needs 'attrs': a map of attribute name to value")
    changes: dict[str, Any] = {}
    for name, value in attrs.items():
        if name == "fifo":
            if not isinstance(value, bool):
                raise InvalidCommand("attribute 'fifo' must be true or false")
            if value != current.fifo and ever_had_messages:
                raise InvalidCommand("'fifo' cannot change once the partition has held messages")
        elif name in INT_RANGES:
            low, high = INT_RANGES[name]
            if type(value) is not int or not low <= value <= high:
                raise InvalidCommand(f"attribute {name!r} must be an integer from {low} to {high}")
        else:
            known = ", ".join(["fifo", *INT_RANGES])
            raise InvalidCommand(f"unknown attribute {name!r}; known attributes: {known}")
        changes[name] = value
    return dataclasses.replace(current, **changes)
