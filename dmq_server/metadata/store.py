"""The metadata state machine: queue definitions and node liveness, replicated by the metadata Raft group.

Same contract as the partition store (docs/STORE.md): `apply(index, command)` is the only way state changes, time
comes inside the command, and a command's writes with the new applied index are one WriteBatch (WAL, no fsync:
the Raft log is the durable record). The state is small, so all of it is also held in memory for queries; memory
changes only after its batch is written. Semantics: docs/METADATA.md.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import msgpack
from rocksdict import Checkpoint, Options, Rdict, WriteBatch

from dmq_server.store.commands import dispatch
from dmq_server.store.db import replace_with_checkpoint, unsynced_writes
from dmq_server.store.errors import CommandError

from . import commands, limits
from .errors import QueueAlreadyExists, QueueChanged, QueueNotFound, TooManyNodes, TooManyQueues

FORMAT_VERSION = 1
# Keys: one meta record, then one record per queue (by name) and per node (by id).
_META = b"M"
_QUEUE = b"Q"
_NODE = b"N"


@dataclasses.dataclass(frozen=True, slots=True)
class _Meta:
    applied: int = 0  # last Raft index applied
    last_now: int = 0  # effective time never moves backwards
    version: int = 0  # index of the last create, update or delete of a queue
    leaders_version: int = 0  # index of the last change of a node's leading list
    next_queue_id: int = 1  # queue ids are never reused

    def encode(self) -> bytes:
        return msgpack.packb([FORMAT_VERSION, dataclasses.astuple(self)])

    @classmethod
    def decode(cls, raw: bytes) -> "_Meta":
        version, fields = msgpack.unpackb(raw)
        if version != FORMAT_VERSION:
            raise RuntimeError(f"metadata format {version} is not supported by this dmq (expects {FORMAT_VERSION})")
        return cls(*fields)


@dataclasses.dataclass(frozen=True, slots=True)
class NodeRecord:
    seen: int  # time of the last heartbeat
    leading: tuple[str, ...]  # sorted group ids the node last reported leading
    started_at: int  # time of its first heartbeat

    def to_dict(self) -> dict[str, Any]:
        return {"seen": self.seen, "leading": list(self.leading), "started_at": self.started_at}

    def encode(self) -> bytes:
        return msgpack.packb([self.seen, self.leading, self.started_at])

    @classmethod
    def decode(cls, raw: bytes) -> "NodeRecord":
        seen, leading, started_at = msgpack.unpackb(raw)
        return cls(seen, tuple(leading), started_at)


@dataclasses.dataclass(slots=True)
class _Changes:
    """One command's effect, written as one batch and then applied to memory."""

    meta: _Meta
    queues: dict[str, bytes | None] = dataclasses.field(default_factory=dict)  # encoded record; None: deleted
    nodes: dict[str, NodeRecord] = dataclasses.field(default_factory=dict)


def _options() -> Options:
    """Like a partition's options (dmq_server/store/db.py), sized for a database of a few megabytes."""
    options = Options(raw_mode=True)
    options.create_if_missing(True)
    options.set_write_buffer_size(4 << 20)
    options.set_max_write_buffer_number(2)
    options.set_max_total_wal_size(16 << 20)
    options.set_max_background_jobs(1)
    options.set_keep_log_file_num(2)
    return options


class MetadataStore:
    def __init__(self, path: str) -> None:
        self.path = path
        self._db: Rdict | None = Rdict(path, _options())
        self._write_options = unsynced_writes()
        self._meta = _Meta()
        # Queue records stay encoded, exactly as on disk: each query decodes its own copy for the caller.
        self._queues: dict[str, bytes] = {}
        self._nodes: dict[str, NodeRecord] = {}
        for key, value in self._db.items():
            prefix, name = key[:1], key[1:].decode()
            if prefix == _META:
                self._meta = _Meta.decode(value)
            elif prefix == _QUEUE:
                self._queues[name] = value
            else:
                assert prefix == _NODE, key
                self._nodes[name] = NodeRecord.decode(value)
        self._handlers: dict[str, Callable[[_Changes, dict[str, Any], int], Any]] = {
            "create_queue": self._create_queue,
            "update_queue": self._update_queue,
            "delete_queue": self._delete_queue,
            "heartbeat": self._heartbeat,
        }

    # ------------------------------------------------------------------ applying

    @property
    def applied_index(self) -> int:
        return self._meta.applied

    def apply(self, index: int, command: Any) -> Any:
        assert type(index) is int and index >= 1, f"raft index must be a positive int, got {index!r}"
        if index <= self._meta.applied:
            return None
        try:
            handler, now = dispatch(command, self._handlers)
            now = max(now, self._meta.last_now)
            changes = _Changes(dataclasses.replace(self._meta, applied=index, last_now=now))
            result = handler(changes, command, now)
        except CommandError:
            # A rejected command changes nothing but the applied index, so a replay skips it.
            self._commit(_Changes(dataclasses.replace(self._meta, applied=index)))
            raise
        self._commit(changes)
        return result

    def _commit(self, changes: _Changes) -> None:
        batch = WriteBatch(raw_mode=True)
        for name, record in changes.queues.items():
            if record is None:
                batch.delete(_QUEUE + name.encode())
            else:
                batch.put(_QUEUE + name.encode(), record)
        for node, node_record in changes.nodes.items():
            batch.put(_NODE + node.encode(), node_record.encode())
        batch.put(_META, changes.meta.encode())
        self._database().write(batch, self._write_options)
        for name, record in changes.queues.items():
            if record is None:
                del self._queues[name]
            else:
                self._queues[name] = record
        self._nodes.update(changes.nodes)
        self._meta = changes.meta

    def _database(self) -> Rdict:
        if self._db is None:
            raise RuntimeError(f"metadata store {self.path} is closed")
        return self._db

    # ------------------------------------------------------------------ commands

    def _create_queue(self, changes: _Changes, command: dict[str, Any], now: int) -> dict[str, Any]:
        new = commands.parse_create_queue(command)
        existing = self._queues.get(new.name)
        if existing is not None:
            record = msgpack.unpackb(existing)
            # Idempotent like SQS CreateQueue: the replica sets may differ (placed at another time).
            if record["attrs"] == new.attrs and len(record["partitions"]) == len(new.partitions):
                return record
            raise QueueAlreadyExists(f"queue {new.name!r} exists with other attributes or another partition "
                                     "count; delete it first or use another name")
        if len(self._queues) >= new.max_queues:
            raise TooManyQueues(f"the cluster holds {len(self._queues)} queues, its limit is {new.max_queues}; "
                                "delete queues or raise the limit")
        meta = changes.meta
        record = {"id": meta.next_queue_id, "name": new.name, "attrs": new.attrs, "partitions": new.partitions,
                  "created_at": now, "version": meta.applied}
        changes.meta = dataclasses.replace(meta, version=meta.applied, next_queue_id=meta.next_queue_id + 1)
        changes.queues[new.name] = msgpack.packb(record)
        return record

    def _update_queue(self, changes: _Changes, command: dict[str, Any], now: int) -> dict[str, Any]:
        update = commands.parse_update_queue(command)
        existing = self._queues.get(update.name)
        record = None if existing is None else msgpack.unpackb(existing)
        if record is None or record["id"] != update.queue_id:
            raise QueueNotFound(f"no queue named {update.name!r} (it may have been deleted meanwhile)")
        if record["attrs"] != update.previous:
            raise QueueChanged(f"the attributes of queue {update.name!r} changed since this update was computed; "
                               "retry")
        # What its partitions were created with: a replica started later begins there and replays the changes.
        record.setdefault("initial_attrs", record["attrs"])
        record["attrs"] = update.attrs
        record["updated_at"] = now
        changes.meta = dataclasses.replace(changes.meta, version=changes.meta.applied)
        changes.queues[update.name] = msgpack.packb(record)
        return record

    def _delete_queue(self, changes: _Changes, command: dict[str, Any], now: int) -> dict[str, Any]:
        name = commands.queue_name(command)
        existing = self._queues.get(name)
        if existing is None:
            raise QueueNotFound(f"no queue named {name!r}")
        changes.meta = dataclasses.replace(changes.meta, version=changes.meta.applied)
        changes.queues[name] = None
        return {"deleted": msgpack.unpackb(existing)}

    def _heartbeat(self, changes: _Changes, command: dict[str, Any], now: int) -> dict[str, int]:
        node, leading = commands.parse_heartbeat(command)
        previous = self._nodes.get(node)
        if previous is None and len(self._nodes) >= limits.MAX_NODES:
            raise TooManyNodes(f"the cluster already has {limits.MAX_NODES} nodes")
        changes.nodes[node] = NodeRecord(now, leading, now if previous is None else previous.started_at)
        if leading != (() if previous is None else previous.leading):
            changes.meta = dataclasses.replace(changes.meta, leaders_version=changes.meta.applied)
        return {"leaders_version": changes.meta.leaders_version}

    # ------------------------------------------------------------------ queries (no writes)

    @property
    def version(self) -> int:
        return self._meta.version

    @property
    def leaders_version(self) -> int:
        return self._meta.leaders_version

    def get_queue(self, name: str) -> dict[str, Any] | None:
        record = self._queues.get(name)
        return None if record is None else msgpack.unpackb(record)

    def queues(self) -> list[dict[str, Any]]:
        return [msgpack.unpackb(self._queues[name]) for name in sorted(self._queues)]

    def nodes(self) -> dict[str, dict[str, Any]]:
        return {node: record.to_dict() for node, record in sorted(self._nodes.items())}

    def leaders(self) -> dict[str, str]:
        """Group id -> the node leading it. Of two nodes claiming a group, the one heard from later wins (ties:
        the greater node id, so every replica answers the same)."""
        claims: dict[str, tuple[int, str]] = {}
        for node, record in self._nodes.items():
            for group in record.leading:
                claims[group] = max(claims.get(group, (-1, "")), (record.seen, node))
        return {group: node for group, (_, node) in sorted(claims.items())}

    def snapshot(self) -> dict[str, Any]:
        """Everything, as one msgpack-able dict, for nodes outside the metadata group. Every queue id below
        next_queue_id was given out; one missing from `queues` was deleted."""
        meta = self._meta
        return {"applied_index": meta.applied, "version": meta.version, "leaders_version": meta.leaders_version,
                "next_queue_id": meta.next_queue_id, "queues": self.queues(), "nodes": self.nodes(),
                "leaders": self.leaders()}

    # ------------------------------------------------------------------ snapshots, lifecycle

    def checkpoint(self, target_dir: str) -> None:
        """A consistent copy at applied_index (hard links where possible)."""
        Checkpoint(self._database()).create_checkpoint(target_dir)

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None


class MetadataStoreFactory:
    """Opens the metadata group's store (the group's StoreFactory)."""

    def open(self, path: str) -> MetadataStore:
        return MetadataStore(path)

    def restore(self, checkpoint_dir: str, path: str) -> MetadataStore:
        replace_with_checkpoint(checkpoint_dir, path)
        return MetadataStore(path)
