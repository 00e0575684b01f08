"""Names shared by the metadata store, nodes and frontends."""

from __future__ import annotations

import re
from typing import TypeGuard

QUEUE_NAME = re.compile(r"[A-Za-z0-9_-]{1,80}")


def is_queue_name(name: object) -> TypeGuard[str]:
    return isinstance(name, str) and QUEUE_NAME.fullmatch(name) is not None


def partition_group_id(queue_id: int, partition: int) -> str:
    """The Raft group id of a queue's partition. Queue ids are never reused, so neither are group ids."""
    assert type(queue_id) is int and queue_id >= 1 and type(partition) is int and partition >= 0, \
        (queue_id, partition)
    return f"q{queue_id}.p{partition}"


_GROUP_ID = re.compile(r"q([0-9]{1,19})\.p[0-9]{1,5}")


def queue_id_of(group_id: str) -> int | None:
    """The queue id inside a partition's group id; None when `group_id` is not one (e.g. a stray directory)."""
    match = _GROUP_ID.fullmatch(group_id)
    return None if match is None else int(match.group(1))
