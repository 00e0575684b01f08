"""The partition state machine: one queue partition over its own RocksDB (semantics: docs/STORE.md).

`apply(index, command)` is the only way state changes. It is deterministic: the time comes inside the command, and
nothing but this partition's database is read or written. All writes of a command, with the new applied index,
counters and cursors, are one WriteBatch, so a crash leaves the state of commands 1..applied_index exactly.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Iterator
from typing import Any

import msgpack
from rocksdict import Checkpoint, Rdict

from . import commands, keys, records
from .compactor import Compactor
from .config import QueueConfig, updated_config
from .db import DEFAULT_RESOURCES, SharedResources, open_partition_db, replace_with_checkpoint, unsynced_writes
from .errors import BATCH_MISMATCH, QUEUE_FULL, RECEIPT_EXPIRED, CommandError
from .meta import Meta
from .txn import Txn, items_between

_NO_GROUP_IN_FLIGHT = 0
# Indexes a command may scan after adding keys to them (the advance step makes messages ready, then a receive
# picks from B or H); Txn merges its own writes into scans of these prefixes only.
_SCANNED_AFTER_INSERT = (keys.BACK, keys.HEAD)


# deadline -> ids of messages whose lease ended before it (see _end_leases)
_EndedLeases = dict[int, list[int]]


@dataclasses.dataclass(frozen=True)
class StoreOptions:
    advance_limit: int = 10_000  # items per advance step per command
    scan_limit: int = 10_000  # delayed or in-flight records a receive may step over in the fresh range
    write_buffer_bytes: int = 16 << 20
    compact_after_deletes: int = 100_000  # ask the compactor to clean consumed ranges after this many removals
    resources: SharedResources = DEFAULT_RESOURCES
    compactor: Compactor | None = None  # None: consumed ranges are left to RocksDB's own compactions


class PartitionStore:
    def __init__(self, path: str, options: StoreOptions | None = None,
                 initial_config: QueueConfig | None = None) -> None:
        """`initial_config` is the configuration of a partition whose database has no meta record yet: every
        replica is created from the same committed queue definition, so starting from it is deterministic. A
        persisted configuration always wins."""
        assert initial_config is None or isinstance(initial_config, QueueConfig), initial_config
        self.path = path
        self._options = options or StoreOptions()
        self._db: Rdict | None = open_partition_db(path, self._options.resources, self._options.write_buffer_bytes)
        raw_meta = self._db.get(keys.META)
        self._meta = Meta(config=initial_config or QueueConfig()) if raw_meta is None else Meta.decode(raw_meta)
        self._write_options = unsynced_writes()
        self._removed_since_compaction = 0
        self._lowest_seen = 1  # queries' own cursor: no live message has a lower id (not replicated state)
        self._lock = threading.Lock()  # orders close() against a background compaction
        self._handlers: dict[str, Callable[[Txn, Meta, dict[str, Any], int], Any]] = {
            "configure": self._configure,
            "enqueue": self._enqueue,
            "receive": self._receive,
            "delete": self._delete,
            "change_visibility": self._change_visibility,
            "purge": self._purge,
            "tick": self._tick,
            "ack_dead_letters": self._ack_dead_letters,
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
            handler, now = commands.dispatch(command, self._handlers)
        except CommandError:
            self._record_rejected(index)
            raise
        meta = self._meta.copy()
        meta.applied = index
        meta.last_now = max(meta.last_now, now)
        txn = Txn(self._database(), _SCANNED_AFTER_INSERT)
        try:
            result = handler(txn, meta, command, meta.last_now)
        except CommandError:
            self._record_rejected(index)
            raise
        txn.put(keys.META, meta.encode())
        txn.commit(self._write_options)
        self._meta = meta
        return result

    def _record_rejected(self, index: int) -> None:
        """A rejected command changes nothing but the applied index, so a replay skips it."""
        meta = self._meta.copy()
        meta.applied = index
        txn = Txn(self._database())
        txn.put(keys.META, meta.encode())
        txn.commit(self._write_options)
        self._meta = meta

    def _database(self) -> Rdict:
        if self._db is None:
            raise RuntimeError(f"partition store {self.path} is closed")
        return self._db

    # ------------------------------------------------------------------ commands

    def _configure(self, txn: Txn, meta: Meta, command: dict[str, Any], now: int) -> dict[str, Any]:
        meta.config = updated_config(meta.config, command.get("attrs"), ever_had_messages=meta.next_id > 1)
        meta.retention_due = 0  # the retention may have changed: look again at the next advance
        return meta.config.to_dict()

    def _enqueue(self, txn: Txn, meta: Meta, command: dict[str, Any], now: int) -> list[dict[str, Any]]:
        messages = commands.parse_enqueue(command, meta.config)
        segments = commands.parse_batches(command, len(messages))
        if not segments:
            return self._enqueue_messages(txn, meta, messages, now)
        results: list[dict[str, Any]] = []
        done = 0
        for batch_id, first, count in segments:
            if first > done:  # messages of the command outside any batch
                results += self._enqueue_messages(txn, meta, messages[done:first], now)
            results += self._enqueue_batch(txn, meta, batch_id, messages[first:first + count], now)
            done = first + count
        if done < len(messages):
            results += self._enqueue_messages(txn, meta, messages[done:], now)
        return results

    def _enqueue_batch(self, txn: Txn, meta: Meta, batch_id: bytes, messages: list[commands.NewMessage],
                       now: int) -> list[dict[str, Any]]:
        """One segment sent under a batch id: inside the window of an earlier segment with the same id, that
        segment's results again, each marked duplicate, and nothing enqueued (BatchMismatch for each message when
        the earlier segment had another number of messages); else enqueued and remembered under
        `S batch_id -> window end (u64) + results` (keys.pack_batch_results), expiring through E like dedup ids."""
        answer, remembered_until = self._recall(txn, keys.BATCH_MARK, batch_id, now)
        if answer is not None:
            first = keys.unpack_batch_results(answer)
            if len(first) != len(messages):  # not a retry of that send: one result per message all the same
                return [{"error": BATCH_MISMATCH} for _ in messages]
            return [{"id": abs(ident), "duplicate": True} if ident else {"error": QUEUE_FULL, "duplicate": True}
                    for ident in first]
        first_id = meta.next_id
        results = self._enqueue_messages(txn, meta, messages, now)
        if meta.next_id - first_id == len(messages):  # the usual case: every message enqueued, ids in a run
            encoded = keys.pack_batch_run(first_id, len(messages))
        else:  # the id, -id for a per-message dedup duplicate, 0 for QueueFull
            encoded = keys.pack_batch_results([0 if "error" in result else -result["id"] if result["duplicate"]
                                               else result["id"] for result in results])
        self._remember(txn, meta, keys.BATCH_MARK, batch_id, encoded, remembered_until, now)
        return results

    @staticmethod
    def _recall(txn: Txn, mark: bytes, ident: bytes, now: int) -> tuple[bytes | None, int | None]:
        """What a batch or purge id's first request answered, while its window lasts (else None), and the window
        end it is remembered with (None when not remembered at all)."""
        remembered = txn.get(keys.REMEMBERED_UNDER[mark] + ident)
        if remembered is None:
            return None, None
        remembered_until = keys.unpack_u64(remembered[:8])
        return (remembered[8:] if remembered_until > now else None), remembered_until

    @staticmethod
    def _remember(txn: Txn, meta: Meta, mark: bytes, ident: bytes, answer: bytes, remembered_until: int | None,
                  now: int) -> None:
        """Remember a batch or purge id's answer for the queue's dedup window, expiring through E."""
        if remembered_until is not None:  # its window ended, not yet forgotten: forget it now
            txn.delete(keys.marked_expiry(remembered_until, mark, ident))
        else:
            meta.dedup_entries += 1
        window_end = now + meta.config.dedup_window_ms
        txn.put(keys.REMEMBERED_UNDER[mark] + ident, keys.pack_u64(window_end) + answer)
        txn.put(keys.marked_expiry(window_end, mark, ident), b"")

    def _enqueue_messages(self, txn: Txn, meta: Meta, messages: list[commands.NewMessage],
                          now: int) -> list[dict[str, Any]]:
        config = meta.config
        results: list[dict[str, Any]] = []
        room = config.max_messages - meta.count
        put, message_key, encode, ready = txn.put, keys.message, records.encode, records.READY
        bare_header = encode(ready, now, 0, 0, None, b"", b"")  # a ready message without group or attributes
        for message in messages:
            remembered_until = None
            if message.dedup_id is not None:
                remembered = txn.get(keys.DEDUP + message.dedup_id)
                if remembered is not None:
                    original, remembered_until = keys.unpack_pair(remembered)
                    if remembered_until > now:
                        results.append({"id": original, "duplicate": True})
                        continue
            if room <= 0:
                results.append({"error": QUEUE_FULL})
                continue
            room -= 1
            ident = meta.next_id
            meta.next_id += 1
            delay = config.delay_ms if message.delay_ms is None else message.delay_ms
            group = (message.group or b"") if config.fifo else message.group
            if delay > 0:
                visible_at = now + delay
                put(message_key(ident), encode(records.DELAYED, now, visible_at, 0, group, message.attrs,
                                               message.body))
                put(keys.delayed(visible_at, ident), b"")
                meta.delayed += 1
            else:
                put(message_key(ident), bare_header + message.body if group is None and not message.attrs
                    else encode(ready, now, 0, 0, group, message.attrs, message.body))
                meta.ready += 1
            meta.bytes += len(message.body) + len(message.attrs)
            if message.dedup_id is not None:
                if remembered_until is not None:  # its window ended, not yet forgotten: forget it now
                    txn.delete(keys.dedup_expiry(remembered_until, message.dedup_id))
                else:
                    meta.dedup_entries += 1
                window_end = now + config.dedup_window_ms
                txn.put(keys.DEDUP + message.dedup_id, keys.pack_pair(ident, window_end))
                txn.put(keys.dedup_expiry(window_end, message.dedup_id), b"")
            if config.fifo:
                assert group is not None
                self._group_append(txn, meta, group, ident, ready=delay == 0)
            results.append({"id": ident, "duplicate": False})
        return results

    def _receive(self, txn: Txn, meta: Meta, command: dict[str, Any], now: int) -> list[dict[str, Any]]:
        count, visibility, max_bytes = commands.parse_receive(command)
        if visibility is None:
            visibility = meta.config.visibility_timeout_ms
        self._tick(txn, meta, command, now)
        budget = _Budget(count, max_bytes)
        picked = self._pick_fifo(txn, meta, budget) if meta.config.fifo else self._pick_standard(txn, meta, budget)
        deadline = now + visibility
        delivered = []
        put, deliver, message_key = txn.put, records.deliver, keys.message
        for ident, record in picked:
            updated, message = deliver(ident, record, deadline)
            put(message_key(ident), updated)
            delivered.append(message)
        if picked:
            self._lease(txn, deadline, [ident for ident, _ in picked])
        meta.ready -= len(picked)
        meta.in_flight += len(picked)
        return delivered

    def _pick_standard(self, txn: Txn, meta: Meta, budget: "_Budget") -> list[tuple[int, bytes]]:
        """The `count` ready messages with the lowest ids. B holds the ready ids below the fresh cursor, so it
        comes first; then the fresh range of M, read straight from the message records."""
        picked: list[tuple[int, bytes]] = []
        back_low = meta.back_low
        # Every B id is below the fresh cursor (which never moves down): no scan, no iterator, when B is empty.
        scan_back = back_low < meta.fresh
        meta.back_low = keys.ABOVE_EVERY_ID if scan_back else back_low  # unless a B entry is left below
        for ident in self._scan_ids(txn, keys.BACK, back_low) if scan_back else ():
            if budget.full or (budget.bytes is not None and not budget.fits(txn.get(keys.message(ident)) or b"")):
                meta.back_low = ident
                return picked
            picked.append(budget.take(self._take_back(txn, ident)))
        if budget.full:
            return picked
        stepped_over = 0
        id_of, ready, fits, take, append = keys.id_of, records.READY, budget.fits, budget.take, picked.append
        for key, record in txn.scan(keys.message(meta.fresh), keys.end_of(keys.MESSAGE)):
            if record[0] != ready:
                # Delayed, or made ready and handed out through B: below the cursor D and B find it.
                meta.fresh = id_of(key) + 1
                stepped_over += 1
                if stepped_over == self._options.scan_limit:
                    return picked
                continue
            ident = id_of(key)
            if not fits(record):
                meta.fresh = ident
                return picked
            append(take((ident, record)))
            if budget.full:  # stop here rather than read one record more
                meta.fresh = ident + 1
                return picked
        meta.fresh = meta.next_id
        return picked

    @staticmethod
    def _take_back(txn: Txn, ident: int) -> tuple[int, bytes]:
        record = txn.get(keys.message(ident))
        assert record is not None and record[0] == records.READY, ident
        txn.delete(keys.back(ident))
        return ident, record

    def _pick_fifo(self, txn: Txn, meta: Meta, budget: "_Budget") -> list[tuple[int, bytes]]:
        """Heads of eligible groups, lowest id first; each picked group is in flight afterwards."""
        picked: list[tuple[int, bytes]] = []
        next_low = meta.next_id
        for key, group in txn.scan(keys.head(meta.head_low), keys.end_of(keys.HEAD)):
            ident = keys.id_of(key)
            if budget.full:
                next_low = ident
                break
            record = txn.get(keys.message(ident))
            assert record is not None and records.header(record).state == records.READY, ident
            if not budget.fits(record):
                next_low = ident
                break
            txn.delete(key)
            head, tail, in_flight = keys.unpack_triple(self._group(txn, group))
            assert head == ident and in_flight == _NO_GROUP_IN_FLIGHT, (ident, head, in_flight)
            txn.put(keys.GROUP + group, keys.pack_triple(head, tail, ident))
            picked.append(budget.take((ident, record)))
        meta.head_low = next_low
        return picked

    def _delete(self, txn: Txn, meta: Meta, command: dict[str, Any], now: int) -> list[dict[str, Any]]:
        receipts = commands.parse_delete(command)
        message_keys = [keys.message(ident) for ident, _ in receipts]
        results: list[dict[str, Any]] = []
        removed = 0
        ended: _EndedLeases = {}
        repeats = len(set(message_keys)) != len(message_keys)
        for key, (ident, receive_count), record in zip(message_keys, receipts,
                                                       self._message_records(txn, receipts, message_keys)):
            if repeats:  # the same message twice in one command: the second must see the first
                record = txn.get(key)
            if record is None:
                results.append({"ok": True, "gone": True})
                continue
            head = records.header(record)
            if head.receive_count != receive_count:
                results.append({"error": RECEIPT_EXPIRED})
            else:
                self._remove(txn, meta, ident, record, head, ended)
                removed += 1
                results.append({"ok": True})
        self._end_leases(txn, ended)
        self._note_removed(removed)
        return results

    @staticmethod
    def _message_records(txn: Txn, receipts: list[tuple[int, int]], message_keys: list[bytes]) -> list[bytes | None]:
        """The records of the receipts' messages. Receipts usually come in batches of neighbouring ids (one
        receive's messages), and one scan over a dense id range costs less than a multi-get of its keys."""
        low = min(ident for ident, _ in receipts)
        high = max(ident for ident, _ in receipts)
        if high - low >= 2 * len(receipts):
            return txn.get_many(message_keys)
        found = dict(txn.scan(keys.message(low), keys.message(high + 1)))
        return [found.get(key) for key in message_keys]

    def _change_visibility(self, txn: Txn, meta: Meta, command: dict[str, Any], now: int) -> list[dict[str, Any]]:
        entries = commands.parse_change_visibility(command)
        results: list[dict[str, Any]] = []
        ended: _EndedLeases = {}
        leased: dict[int, set[int]] = {}  # new deadline -> ids
        for ident, receive_count, visibility in entries:
            record = txn.get(keys.message(ident))
            head = None if record is None else records.header(record)
            if head is None or head.state != records.IN_FLIGHT or head.receive_count != receive_count \
                    or head.timer <= now:
                if visibility == 0 and head is not None and head.receive_count == receive_count and (
                        head.state == records.IN_FLIGHT or head.state == records.READY):
                    # A release of a delivery whose lease already ended and that nobody received since: it is
                    # receivable, as asked. (The retry of a release whose answer was lost lands here.)
                    results.append({"ok": True, "deadline": head.timer if head.state == records.IN_FLIGHT else now})
                else:
                    results.append({"error": RECEIPT_EXPIRED})
                continue
            assert record is not None
            deadline = now + visibility
            leased_here = leased.get(head.timer)
            if leased_here is not None and ident in leased_here:  # an earlier entry of this command leased it
                leased_here.discard(ident)
            else:
                ended.setdefault(head.timer, []).append(ident)
            leased.setdefault(deadline, set()).add(ident)
            txn.put(keys.message(ident), records.with_header(
                record, head, records.IN_FLIGHT, deadline, receive_count))
            results.append({"ok": True, "deadline": deadline})
        # Ended first: a message may keep its deadline (or come back to it) and must stay leased there.
        self._end_leases(txn, ended)
        for deadline, ids in leased.items():
            if ids:
                self._lease(txn, deadline, sorted(ids))
        return results

    def _purge(self, txn: Txn, meta: Meta, command: dict[str, Any], now: int) -> dict[str, Any]:
        purge_id = commands.parse_purge(command)
        remembered_until = None
        if purge_id is not None:  # a retry within the window answers the first count and purges nothing again
            answer, remembered_until = self._recall(txn, keys.PURGE_MARK, purge_id, now)
            if answer is not None:
                return {"purged": keys.unpack_u64(answer), "duplicate": True}
        purged = meta.count
        for prefix in (keys.MESSAGE, keys.BACK, keys.IN_FLIGHT, keys.DELAYED, keys.HEAD, keys.GROUP, keys.NEXT):
            txn.delete_range(prefix, keys.end_of(prefix))
        meta.ready = meta.in_flight = meta.delayed = meta.bytes = 0
        meta.fresh = meta.message_low = meta.back_low = meta.head_low = meta.next_id
        self._note_removed(purged)
        if purge_id is not None:
            self._remember(txn, meta, keys.PURGE_MARK, purge_id, keys.pack_u64(purged), remembered_until, now)
        return {"purged": purged, "duplicate": False}

    def _tick(self, txn: Txn, meta: Meta, command: dict[str, Any], now: int) -> dict[str, int]:
        counts = self._advance(txn, meta, now)
        self._note_removed(counts["expired"] + counts["dead_lettered"])
        return counts

    def _ack_dead_letters(self, txn: Txn, meta: Meta, command: dict[str, Any], now: int) -> dict[str, int]:
        upto = commands.parse_ack_dead_letters(command)
        removed = 0
        low = meta.next_id  # no record left: later ones lower it again
        for key, _ in txn.scan(keys.dead(meta.dead_low), keys.end_of(keys.DEAD)):
            ident = keys.id_of(key)
            if ident > upto or removed == self._options.advance_limit:
                low = ident
                break
            txn.delete(key)
            removed += 1
        meta.dead_letters -= removed
        meta.dead_low = low
        return {"removed": removed}

    # ------------------------------------------------------------------ advancing time

    def _advance(self, txn: Txn, meta: Meta, now: int) -> dict[str, int]:
        # Each step scans only when it has something to look at: a scan costs an iterator even when empty.
        counts = {"expired": 0, "returned": 0, "dead_lettered": 0, "due": 0, "dedup_expired": 0}
        if not meta.count:
            meta.message_low = meta.next_id
            meta.retention_due = now + meta.config.retention_ms  # a message enqueued from now on
        elif now >= meta.retention_due:
            counts["expired"] = self._expire_retention(txn, meta, now)
        if meta.in_flight:
            counts["returned"], counts["dead_lettered"] = self._expire_visibility(txn, meta, now)
        else:
            meta.in_flight_cursor = keys.in_flight(now)
        if meta.delayed:
            counts["due"] = self._release_delayed(txn, meta, now)
        else:
            meta.delayed_cursor = keys.delayed(now, 0)
        if meta.dedup_entries:
            counts["dedup_expired"] = self._forget_dedup(txn, meta, now)
        else:
            meta.dedup_cursor = keys.dedup_expiry(now, b"")
        return counts

    def _expire_retention(self, txn: Txn, meta: Meta, now: int) -> int:
        retention = meta.config.retention_ms
        expired = 0
        ended: _EndedLeases = {}
        for key, record in txn.scan(keys.message(meta.message_low), keys.end_of(keys.MESSAGE)):
            ident = keys.id_of(key)
            meta.message_low = ident
            head = records.header(record)
            if expired == self._options.advance_limit:
                meta.retention_due = now
                break
            if head.enqueued_at + retention > now:
                meta.retention_due = head.enqueued_at + retention  # later messages are younger
                break
            self._remove(txn, meta, ident, record, head, ended)
            expired += 1
        else:
            meta.message_low = meta.next_id
            meta.retention_due = now + retention
        self._end_leases(txn, ended)
        return expired

    def _expire_visibility(self, txn: Txn, meta: Meta, now: int) -> tuple[int, int]:
        """Leases ending at or before `now`, in (deadline, id) order: each message back to ready, or to the
        dead-letter records after max_receives deliveries."""
        returned = dead_lettered = 0
        limit = self._options.advance_limit
        dead: _EndedLeases = {}  # their entries are consumed here; kept for _remove's bookkeeping only
        in_flight, ready = records.IN_FLIGHT, records.READY
        for key, value in txn.scan(meta.in_flight_cursor, keys.in_flight(now + 1)):
            deadline = keys.unpack_u64(key[1:9])
            ids = keys.leased_ids(key, value)
            handled = 0
            for ident, record in zip(ids, txn.get_many([keys.message(ident) for ident in ids])):
                if returned + dead_lettered == limit:
                    break
                handled += 1
                head = None if record is None else records.header(record)
                if head is None or head.state != in_flight or head.timer != deadline:
                    continue  # only in a lease written by an older store version: the message moved on
                assert record is not None
                max_receives = meta.config.max_receives
                if max_receives and head.receive_count >= max_receives:
                    self._dead_letter(txn, meta, ident, record, head, now, dead)
                    dead_lettered += 1
                    continue
                txn.put(keys.message(ident), records.with_header(record, head, ready, 0, head.receive_count))
                meta.in_flight -= 1
                meta.ready += 1
                self._made_ready(txn, meta, ident, records.group_of(record, head))
                returned += 1
            if handled < len(ids):  # the limit: the rest of this lease waits for the next advance
                txn.put(key, keys.pack_ids(ids[handled:]))
                meta.in_flight_cursor = key[:9]
                return returned, dead_lettered
            txn.delete(key)
        meta.in_flight_cursor = keys.in_flight(now)
        return returned, dead_lettered

    def _release_delayed(self, txn: Txn, meta: Meta, now: int) -> int:
        due = 0
        end = keys.delayed(now + 1, 0)
        for key, _ in txn.scan(meta.delayed_cursor, end):
            if due == self._options.advance_limit:
                meta.delayed_cursor = key[:9]
                return due
            _, ident = keys.time_and_id(key)
            record = txn.get(keys.message(ident))
            assert record is not None, ident
            head = records.header(record)
            assert head.state == records.DELAYED, (ident, head)
            txn.delete(key)
            txn.put(keys.message(ident), records.with_header(
                record, head, records.READY, 0, head.receive_count))
            meta.delayed -= 1
            meta.ready += 1
            self._made_ready(txn, meta, ident, records.group_of(record, head))
            due += 1
        meta.delayed_cursor = keys.delayed(now, 0)
        return due

    def _forget_dedup(self, txn: Txn, meta: Meta, now: int) -> int:
        forgotten = 0
        end = keys.dedup_expiry(now + 1, b"")
        for key, _ in txn.scan(meta.dedup_cursor, end):
            if forgotten == self._options.advance_limit:
                meta.dedup_cursor = key[:9]
                return forgotten
            window_end = keys.unpack_u64(key[1:9])
            marked_under = keys.REMEMBERED_UNDER.get(key[9:10])
            if marked_under is not None:
                memory_key = marked_under + key[10:]
                remembered = txn.get(memory_key)
                current = remembered is not None and keys.unpack_u64(remembered[:8]) == window_end
            else:
                memory_key = keys.DEDUP + key[9:]
                remembered = txn.get(memory_key)
                current = remembered is not None and keys.unpack_pair(remembered)[1] == window_end
            if current:
                txn.delete(memory_key)
                meta.dedup_entries -= 1
            txn.delete(key)
            forgotten += 1
        meta.dedup_cursor = keys.dedup_expiry(now, b"")
        return forgotten

    # ------------------------------------------------------------------ shared transitions

    def _made_ready(self, txn: Txn, meta: Meta, ident: int, group: bytes | None) -> None:
        """Index a message that just became ready (visibility expired or delay due)."""
        if meta.config.fifo:
            assert group is not None
            head, tail, in_flight = keys.unpack_triple(self._group(txn, group))
            if in_flight == ident:
                txn.put(keys.GROUP + group, keys.pack_triple(head, tail, _NO_GROUP_IN_FLIGHT))
                in_flight = _NO_GROUP_IN_FLIGHT
            if head == ident and in_flight == _NO_GROUP_IN_FLIGHT:
                self._index_head(txn, meta, ident, group)
        elif ident < meta.fresh:
            txn.put(keys.back(ident), b"")
            meta.back_low = min(meta.back_low, ident)
        # else: still in the fresh range, where a receive finds it directly in M

    def _remove(self, txn: Txn, meta: Meta, ident: int, record: bytes, head: records.Header,
                ended: "_EndedLeases") -> None:
        """Remove a message in any state from every index; `head` is its record's header. An in-flight message's
        lease is added to `ended`, which the caller passes to _end_leases once it removed all it will."""
        state = head.state
        if state == records.IN_FLIGHT:
            ended.setdefault(head.timer, []).append(ident)
            meta.in_flight -= 1
        elif state == records.READY:
            meta.ready -= 1
            # FIFO: its H entry, if any, goes in _group_remove_head
            if not meta.config.fifo and ident < meta.fresh:
                txn.delete(keys.back(ident))
        else:
            txn.delete(keys.delayed(head.timer, ident))
            meta.delayed -= 1
        txn.delete(keys.message(ident))
        meta.bytes -= records.size_of(head, record)
        if meta.config.fifo:
            group = records.group_of(record, head)
            assert group is not None
            self._group_remove_head(txn, meta, group, ident, was_ready=state == records.READY)

    def _dead_letter(self, txn: Txn, meta: Meta, ident: int, record: bytes, head: records.Header,
                     now: int, ended: "_EndedLeases") -> None:
        letter = records.decode(ident, record)
        del letter["deadline"]
        letter["dead_lettered_at"] = now
        self._remove(txn, meta, ident, record, head, ended)
        txn.put(keys.dead(ident), msgpack.packb(letter))
        meta.dead_letters += 1
        meta.dead_low = min(meta.dead_low, ident)  # messages die in any id order

    # ------------------------------------------------------------------ leases (the in-flight index)

    @staticmethod
    def _lease(txn: Txn, deadline: int, ids: list[int]) -> None:
        """Index messages in flight until `deadline`: one entry per deadline, `I deadline -> ids`, so a receive
        writes one index entry rather than one per message. `ids` are ascending (a receive picks in id order)."""
        key = keys.in_flight(deadline)
        leased = txn.get(key)
        if leased is not None:  # other leases end in the same millisecond
            ids = sorted({*ids, *keys.leased_ids(key, leased)})
        txn.put(key, keys.pack_ids(ids))

    @staticmethod
    def _end_leases(txn: Txn, ended: "_EndedLeases") -> None:
        """Take messages out of their lease entries (deleted, dead-lettered, expired or given a new deadline)."""
        for deadline, ids in ended.items():
            key = keys.in_flight(deadline)
            leased = txn.get(key)
            if leased is None:  # consumed by the visibility step of this command
                continue
            gone = set(ids)
            left = [ident for ident in keys.leased_ids(key, leased) if ident not in gone]
            if left:
                txn.put(key, keys.pack_ids(left))
            else:
                txn.delete(key)

    # ------------------------------------------------------------------ FIFO groups

    def _group(self, txn: Txn, group: bytes) -> bytes:
        raw = txn.get(keys.GROUP + group)
        assert raw is not None, group
        return raw

    def _index_head(self, txn: Txn, meta: Meta, ident: int, group: bytes) -> None:
        txn.put(keys.head(ident), group)
        meta.head_low = min(meta.head_low, ident)

    def _group_append(self, txn: Txn, meta: Meta, group: bytes, ident: int, *, ready: bool) -> None:
        raw = txn.get(keys.GROUP + group)
        if raw is None:
            txn.put(keys.GROUP + group, keys.pack_triple(ident, ident, _NO_GROUP_IN_FLIGHT))
            if ready:
                self._index_head(txn, meta, ident, group)
            return
        head, tail, in_flight = keys.unpack_triple(raw)
        txn.put(keys.next_in_group(tail), keys.pack_u64(ident))
        txn.put(keys.GROUP + group, keys.pack_triple(head, ident, in_flight))

    def _group_remove_head(self, txn: Txn, meta: Meta, group: bytes, ident: int, *, was_ready: bool) -> None:
        """Messages leave a FIFO group only at its head: deletes and dead letters need a delivery, which only
        the head gets, and retention removes the lowest ids first."""
        head, tail, in_flight = keys.unpack_triple(self._group(txn, group))
        assert head == ident and in_flight in (_NO_GROUP_IN_FLIGHT, ident), (ident, head, in_flight)
        if was_ready and in_flight == _NO_GROUP_IN_FLIGHT:
            txn.delete(keys.head(ident))
        following = txn.get(keys.next_in_group(ident))
        if following is None:
            txn.delete(keys.GROUP + group)
            return
        txn.delete(keys.next_in_group(ident))
        new_head = keys.unpack_u64(following)
        txn.put(keys.GROUP + group, keys.pack_triple(new_head, tail, _NO_GROUP_IN_FLIGHT))
        new_record = txn.get(keys.message(new_head))
        assert new_record is not None, new_head
        if new_record[0] == records.READY:
            self._index_head(txn, meta, new_head, group)

    # ------------------------------------------------------------------ scans

    @staticmethod
    def _scan_ids(txn: Txn, prefix: bytes, low: int) -> Iterator[int]:
        for key, _ in txn.scan(keys.by_id(prefix, low), keys.end_of(prefix)):
            yield keys.id_of(key)

    # ------------------------------------------------------------------ queries (no writes)

    def config(self) -> dict[str, Any]:
        return self._meta.config.to_dict()

    def stats(self, now: int) -> dict[str, int]:
        meta = self._meta
        oldest = next(iter(self.peek(1)), None)
        return {
            "count": meta.count,
            "ready": meta.ready,
            "in_flight": meta.in_flight,
            "delayed": meta.delayed,
            "bytes": meta.bytes,
            "oldest_age_ms": max(0, now - oldest["enqueued_at"]) if oldest else 0,
            "next_id": meta.next_id,
            "applied_index": meta.applied,
            "dead_letters": meta.dead_letters,
        }

    def peek(self, count: int, max_bytes: int | None = None, after: int = 0) -> list[dict[str, Any]]:
        """The first `count` messages with ids above `after`, in any state, changing nothing: each as a receive
        returns it (without a receipt) plus its `state` ("delayed", "ready" or "in_flight") and `visible_at` (when
        a delayed or in-flight message becomes receivable; None when ready). At most `max_bytes` of message
        records (None: no byte limit), though the first message always comes."""
        if count < 1:
            return []
        messages = []
        budget = _Budget(count, max_bytes)
        lowest = max(self._meta.message_low, self._lowest_seen)
        start = keys.message(max(lowest, after + 1))
        for key, record in items_between(self._database(), start, keys.end_of(keys.MESSAGE)):
            if budget.full or not budget.fits(record):
                break
            ident = keys.id_of(key)
            budget.take((ident, record))
            head = records.header(record)
            message = records.decode(ident, record, head)
            message["state"] = _STATE_NAMES[head.state]
            message["visible_at"] = head.timer if head.state != records.READY else None
            messages.append(message)
        # Ids are never reused, so no message below the lowest one seen now can appear later: the next peek
        # starts there instead of stepping again over the tombstones of everything consumed since.
        if after < lowest:
            self._lowest_seen = messages[0]["id"] if messages else self._meta.next_id
        return messages

    def dead_letters(self, limit: int) -> list[dict[str, Any]]:
        letters = []
        start = keys.dead(self._meta.dead_low)
        for key, raw in items_between(self._database(), start, keys.end_of(keys.DEAD)):
            if len(letters) == limit:
                break
            letters.append(msgpack.unpackb(raw))
        return letters

    def next_visible_at(self, now: int) -> int | None:
        """When a receive would next find a message: `now` when one is receivable now, else the earliest
        visibility deadline or end of a delay (a time <= now means the next advance makes one receivable), None
        when nothing will become receivable without a send. Cheap: counters and at most three seeks."""
        meta = self._meta
        if meta.config.fifo:
            if self._first_key(keys.head(meta.head_low), keys.HEAD) is not None:
                return now
        elif meta.ready:
            return now
        return _earliest(self._first_time(meta.in_flight_cursor, keys.IN_FLIGHT),
                         self._first_time(meta.delayed_cursor, keys.DELAYED))

    def next_due_at(self, now: int) -> int | None:
        """When a `tick` would next have work (a lease or delay ending, retention or a dedup window expiring);
        None when nothing is pending."""
        meta = self._meta
        return _earliest(self._first_time(meta.in_flight_cursor, keys.IN_FLIGHT),
                         self._first_time(meta.delayed_cursor, keys.DELAYED),
                         self._first_time(meta.dedup_cursor, keys.DEDUP_EXPIRY),
                         meta.retention_due if meta.count else None)

    def _first_key(self, start: bytes, prefix: bytes) -> bytes | None:
        for key, _ in items_between(self._database(), start, keys.end_of(prefix)):
            return key
        return None

    def _first_time(self, cursor: bytes, prefix: bytes) -> int | None:
        key = self._first_key(cursor, prefix)
        return None if key is None else keys.unpack_u64(key[1:9])

    def receivable(self, now: int, count: int) -> list[int]:
        """The ids a receive at `now` for `count` messages would pick; computed on a copy, written nowhere."""
        meta = self._meta.copy()
        now = max(now, meta.last_now)
        txn = Txn(self._database(), _SCANNED_AFTER_INSERT)
        self._advance(txn, meta, now)
        budget = _Budget(count, None)
        picked = self._pick_fifo(txn, meta, budget) if meta.config.fifo else self._pick_standard(txn, meta, budget)
        return [ident for ident, _ in picked]

    # ------------------------------------------------------------------ snapshots, compaction, lifecycle

    def checkpoint(self, target_dir: str) -> None:
        """A consistent copy of the partition at applied_index (hard links where possible)."""
        Checkpoint(self._database()).create_checkpoint(target_dir)

    @classmethod
    def restore(cls, checkpoint_dir: str, path: str, options: StoreOptions | None = None,
                initial_config: QueueConfig | None = None) -> "PartitionStore":
        """Replace the partition at `path` by a checkpoint's content and open it. The caller closed the old one.
        (`initial_config` matters only for a checkpoint taken before anything was applied.)"""
        replace_with_checkpoint(checkpoint_dir, path)
        return cls(path, options, initial_config)

    def _note_removed(self, removed: int) -> None:
        self._removed_since_compaction += removed
        if self._removed_since_compaction >= self._options.compact_after_deletes and self._options.compactor:
            self._removed_since_compaction = 0
            self._options.compactor.request(self)

    def compact_consumed(self) -> None:
        """Compact the index ranges below the cursors, where only tombstones remain."""
        with self._lock:
            if self._db is None:
                return
            meta = self._meta
            ranges = [
                (keys.MESSAGE, keys.message(max(meta.message_low, self._lowest_seen))),
                (keys.BACK, keys.back(meta.back_low)),
                (keys.HEAD, keys.head(meta.head_low)),
                (keys.IN_FLIGHT, meta.in_flight_cursor),
                (keys.DELAYED, meta.delayed_cursor),
                (keys.DEDUP_EXPIRY, meta.dedup_cursor),
                (keys.DEAD, keys.dead(meta.dead_low)),
            ]
            for begin, end in ranges:
                self._db.compact_range(begin, end)

    def close(self) -> None:
        if self._options.compactor:
            self._options.compactor.cancel(self)
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None


@dataclasses.dataclass(frozen=True)
class PartitionStoreFactory:
    """Opens a Raft group's partition store (the group's StoreFactory)."""

    options: StoreOptions | None = None
    initial_config: QueueConfig | None = None

    def open(self, path: str) -> PartitionStore:
        return PartitionStore(path, self.options, self.initial_config)

    def restore(self, checkpoint_dir: str, path: str) -> PartitionStore:
        return PartitionStore.restore(checkpoint_dir, path, self.options, self.initial_config)


def _earliest(*times: int | None) -> int | None:
    known = [time for time in times if time is not None]
    return min(known) if known else None


__all__ = ["PartitionStore", "PartitionStoreFactory", "StoreOptions", "QueueConfig"]


_STATE_NAMES = {records.DELAYED: "delayed", records.READY: "ready", records.IN_FLIGHT: "in_flight"}


class _Budget:
    """What one receive (or peek) may still pick: messages, and bytes of message records (None: no byte limit).
    The first message always fits, so a message larger than the budget is still delivered, alone."""

    __slots__ = ("count", "bytes", "picked")

    def __init__(self, count: int, max_bytes: int | None) -> None:
        self.count = count
        self.bytes = max_bytes
        self.picked = 0

    @property
    def full(self) -> bool:
        return self.picked >= self.count or (self.bytes is not None and self.bytes <= 0)

    def fits(self, record: bytes) -> bool:
        return self.bytes is None or self.picked == 0 or len(record) <= self.bytes

    def take(self, picked: tuple[int, bytes]) -> tuple[int, bytes]:
        self.picked += 1
        if self.bytes is not None:
            self.bytes -= len(picked[1])
        return picked
