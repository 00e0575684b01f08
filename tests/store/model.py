"""An independent, in-memory reference model of the partition store (docs/STORE.md).

This is the executable statement of the store's semantics, written from the spec alone: plain dicts, lists and
sorted scans, no indexes, no cursors. The property test (`test_model_property.py`) feeds the same commands to it
and to the real `PartitionStore` and requires identical results, errors and query answers.

Interpretations of points the spec leaves open (each one is a deliberate choice, see the property test report):

- A malformed command records its index as applied but changes nothing else, `last_now` included.
- `op` missing or not a str is `UnknownOperation`; `now` must be an int >= 0; `upto` an int >= 0; bools are
  not ints; inner receipts/entries may be lists or tuples (msgpack makes no difference).
- QueueFull triggers when `count >= max_messages` (the spec says `==`; `>=` matters after `max_messages` is
  lowered below the current count).
- Changing `fifo` once the partition has held a message raises `InvalidCommand` (setting it to its current value
  is not a change and is allowed).
- A FIFO message enqueued with group None has group `""` everywhere it is reported.
- A receipt whose id never existed (id >= next_id) gets `{"ok": True, "gone": True}` like a deleted one.
- Queries report stored state: `stats(now)` uses `now` only for `oldest_age_ms = max(0, now - enqueued_at)` of
  the lowest id (0 when empty); `peek` reports `deadline` only for in-flight messages (None otherwise; the
  property test ignores it for other messages, the spec gives it no meaning there);
  `receivable(now, n)` simulates a receive at the effective time `max(now, last_now)`.
- Dedup ids are forgotten in (expire, dedup_id) order (the spec's `E expire dedup_id` key order); this only
  matters when `advance_limit` is hit. Re-enqueueing a dedup id whose window ended but that was not forgotten yet
  replaces the old memory (the old one is not counted as `dedup_expired` later).
- Batch ids (enqueue `batches`) are forgotten with the dedup ids and counted in `dedup_expired`, in the same
  (expire, key) order where a batch id's key is 0xFF + batch id (after every dedup id of the same expire). The
  model keeps a batch's results as result dicts; the spec's replay is each of them with `"duplicate": True`.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import msgpack

try:
    from dmq_server.store import (
        CommandError,
        InvalidCommand,
        InvalidReceipt,
        MessageTooLarge,
        UnknownOperation,
    )
except ImportError:  # pragma: no cover - only while the implementation does not exist yet

    class CommandError(Exception):  # type: ignore[no-redef]
        code = "CommandError"

    class InvalidCommand(CommandError):  # type: ignore[no-redef]
        code = "InvalidCommand"

    class UnknownOperation(CommandError):  # type: ignore[no-redef]
        code = "UnknownOperation"

    class MessageTooLarge(CommandError):  # type: ignore[no-redef]
        code = "MessageTooLarge"

    class InvalidReceipt(CommandError):  # type: ignore[no-redef]
        code = "InvalidReceipt"


QUEUE_FULL = "QueueFull"
RECEIPT_EXPIRED = "ReceiptExpired"

MAX_ENTRIES = 1_000
MAX_VISIBILITY_MS = 43_200_000
MAX_DELAY_MS = 900_000
MAX_ATTRS = 16

# attribute -> (default, (low, high) or None for bool)
CONFIG_SPEC: dict[str, tuple] = {
    "fifo": (False, None),
    "max_messages": (1_000_000, (1, 100_000_000)),
    "max_message_bytes": (262_144, (1, 1_048_576)),
    "retention_ms": (345_600_000, (60_000, 1_209_600_000)),
    "visibility_timeout_ms": (30_000, (0, MAX_VISIBILITY_MS)),
    "delay_ms": (0, (0, MAX_DELAY_MS)),
    "max_receives": (0, (0, 1_000)),
    "dedup_window_ms": (300_000, (1_000, 86_400_000)),
}

OPS = ("configure", "enqueue", "receive", "delete", "change_visibility", "purge", "tick", "ack_dead_letters")

DELAYED, READY, IN_FLIGHT = "delayed", "ready", "in_flight"


def is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def int_in(value, low: int, high: int | None = None) -> bool:
    return is_int(value) and value >= low and (high is None or value <= high)


def utf8_len(text: str) -> int | None:
    """Length in UTF-8 bytes, None when the str cannot be encoded (lone surrogates)."""
    try:
        return len(text.encode())
    except UnicodeEncodeError:
        return None


def attrs_size(attrs: dict | None) -> int:
    return len(msgpack.packb(attrs)) if attrs else 0


@dataclass
class Message:
    id: int
    body: bytes
    attrs: dict
    group: str | None
    enqueued_at: int
    receive_count: int = 0
    state: str = READY
    visible_at: int | None = None  # while delayed
    deadline: int | None = None  # while in flight

    @property
    def size(self) -> int:
        return len(self.body) + attrs_size(self.attrs)

    def view(self) -> dict:
        """The receive format, without the receipt."""
        return {
            "id": self.id,
            "body": self.body,
            "attrs": dict(self.attrs),
            "group": self.group,
            "receive_count": self.receive_count,
            "enqueued_at": self.enqueued_at,
            "deadline": self.deadline if self.state == IN_FLIGHT else None,
        }


@dataclass
class DedupEntry:
    id: int
    expire: int  # t0 + dedup_window_ms of the configuration at t0


@dataclass
class BatchEntry:
    results: list  # the segment's result dicts when it was first enqueued
    expire: int


@dataclass
class PurgeEntry:
    purged: int  # what the purge id's first purge deleted
    expire: int


BATCH_MISMATCH = "BatchMismatch"


class QueueModel:
    def __init__(self, advance_limit: int = 10**12) -> None:
        self.advance_limit = advance_limit
        self.cfg = {name: default for name, (default, _) in CONFIG_SPEC.items()}
        self.messages: dict[int, Message] = {}
        self.dedup: dict[str, DedupEntry] = {}
        self.batches: dict[bytes, BatchEntry] = {}
        self.purges: dict[str, PurgeEntry] = {}
        self.dead: dict[int, dict] = {}
        self.next_id = 1
        self.applied_index = 0
        self.last_now = 0

    # ------------------------------------------------------------------ apply

    def apply(self, index: int, command):
        if index <= self.applied_index:
            return None
        self.applied_index = index  # recorded even when the command is rejected below
        op, now = self._validate_header(command)
        handler = getattr(self, "_op_" + op)
        handler(command, now, dry=True)  # validation only: raises before any change
        now = max(now, self.last_now)
        self.last_now = now
        return handler(command, now, dry=False)

    @staticmethod
    def _validate_header(command) -> tuple[str, int]:
        if not isinstance(command, dict):
            raise InvalidCommand("command must be a dict")
        op = command.get("op")
        if op not in OPS:  # missing or not a string included
            raise UnknownOperation(f"unknown op {op!r}")
        now = command.get("now")
        if not int_in(now, 0):
            raise InvalidCommand("now must be an int >= 0")
        return op, now

    # ------------------------------------------------------------------ configure

    def _op_configure(self, command, now, dry):
        attrs = command.get("attrs")
        if not isinstance(attrs, dict):
            raise InvalidCommand("attrs must be a dict")
        for name, value in attrs.items():
            if name not in CONFIG_SPEC:
                raise InvalidCommand(f"unknown attribute {name!r}")
            bounds = CONFIG_SPEC[name][1]
            if bounds is None:
                if not isinstance(value, bool):
                    raise InvalidCommand(f"{name} must be a bool")
            elif not int_in(value, *bounds):
                raise InvalidCommand(f"{name} must be an int in {bounds}")
        if "fifo" in attrs and attrs["fifo"] != self.cfg["fifo"] and self.next_id != 1:
            raise InvalidCommand("fifo can only change while the partition has never held a message")
        if dry:
            return None
        self.cfg.update(attrs)
        return self.config()

    # ------------------------------------------------------------------ enqueue

    def _op_enqueue(self, command, now, dry):
        entries = command.get("messages")
        if not isinstance(entries, list) or not 0 < len(entries) <= MAX_ENTRIES:
            raise InvalidCommand("messages must be a list of 1..1000 entries")
        for entry in entries:
            if not isinstance(entry, (list, tuple)) or len(entry) != 5:
                raise InvalidCommand("a message is [body, attrs, delay_ms, dedup_id, group]")
            body, attrs, delay, dedup_id, group = entry
            if not isinstance(body, bytes):
                raise InvalidCommand("body must be bytes")
            self._validate_attrs(attrs)
            if delay is not None and not int_in(delay, 0, MAX_DELAY_MS):
                raise InvalidCommand("delay_ms must be None or an int in 0..900000")
            for what, value in (("dedup_id", dedup_id), ("group", group)):
                if value is not None and not (isinstance(value, str) and 1 <= (utf8_len(value) or 0) <= 128):
                    raise InvalidCommand(f"{what} must be None or a str of 1..128 UTF-8 bytes")
            if self.cfg["fifo"] and delay is not None:
                raise InvalidCommand("FIFO queues take no per-message delay_ms")
        for body, attrs, *_ in entries:
            if len(body) + attrs_size(attrs) > self.cfg["max_message_bytes"]:
                raise MessageTooLarge("message larger than max_message_bytes")
        segments = self._validate_batches(command.get("batches"), len(entries))
        if dry:
            return None

        # Which segment (batch id, first, count) starts at each position.
        starts = {first: (batch_id, count) for batch_id, first, count in segments}
        results = []
        position = 0
        while position < len(entries):
            if position not in starts:
                results.append(self._enqueue_one(entries[position], now))
                position += 1
                continue
            batch_id, count = starts[position]
            seen = self.batches.get(batch_id)
            if seen is not None and seen.expire > now:
                if len(seen.results) == count:
                    results += [{**result, "duplicate": True} for result in seen.results]
                else:
                    results += [{"error": BATCH_MISMATCH} for _ in range(count)]
            else:
                first_results = [self._enqueue_one(entry, now) for entry in entries[position:position + count]]
                self.batches[batch_id] = BatchEntry(first_results, now + self.cfg["dedup_window_ms"])
                results += first_results
            position += count
        return results

    @staticmethod
    def _validate_batches(batches, message_count: int) -> list:
        if batches is None:
            return []
        if not isinstance(batches, list) or not 1 <= len(batches) <= message_count:
            raise InvalidCommand("batches must be None or a list of 1..len(messages) segments")
        end = 0
        for segment in batches:
            if not isinstance(segment, (list, tuple)) or len(segment) != 3:
                raise InvalidCommand("a segment is [batch_id, first, count]")
            batch_id, first, count = segment
            if not isinstance(batch_id, bytes) or not 1 <= len(batch_id) <= 128:
                raise InvalidCommand("batch_id must be bytes of 1..128")
            if not int_in(first, 0) or not int_in(count, 1) or first + count > message_count:
                raise InvalidCommand("a segment must lie within the messages")
            if first < end:
                raise InvalidCommand("segments must be in order and must not overlap")
            end = first + count
        return list(batches)

    def _enqueue_one(self, entry, now) -> dict:
        body, attrs, delay, dedup_id, group = entry
        if dedup_id is not None:
            seen = self.dedup.get(dedup_id)
            if seen is not None and seen.expire > now:
                return {"id": seen.id, "duplicate": True}
        if len(self.messages) >= self.cfg["max_messages"]:
            return {"error": QUEUE_FULL}
        msg = Message(
            id=self.next_id,
            body=body,
            attrs=dict(attrs or {}),
            group="" if (self.cfg["fifo"] and group is None) else group,
            enqueued_at=now,
        )
        self.next_id += 1
        delay = self.cfg["delay_ms"] if delay is None else delay
        if delay > 0:
            msg.state, msg.visible_at = DELAYED, now + delay
        self.messages[msg.id] = msg
        if dedup_id is not None:
            self.dedup[dedup_id] = DedupEntry(msg.id, now + self.cfg["dedup_window_ms"])
        return {"id": msg.id, "duplicate": False}

    @staticmethod
    def _validate_attrs(attrs) -> None:
        if attrs is None:
            return
        if not isinstance(attrs, dict) or len(attrs) > MAX_ATTRS:
            raise InvalidCommand("attrs must be None or a dict of at most 16 entries")
        for name, value in attrs.items():
            if not isinstance(name, str) or not 1 <= len(name) <= 128 or utf8_len(name) is None:
                raise InvalidCommand("attribute names are str of 1..128 characters")
            if not isinstance(value, (str, bytes, int, float, bool)):
                raise InvalidCommand("attribute values are str, bytes, int, float or bool")
            if is_int(value) and not -(2**63) <= value < 2**64:
                raise InvalidCommand("attribute ints must fit msgpack (64 bits)")
            if isinstance(value, str) and utf8_len(value) is None:
                raise InvalidCommand("attribute strings must be valid UTF-8")

    # ------------------------------------------------------------------ receive

    def _op_receive(self, command, now, dry):
        n = command.get("max")
        vis = command.get("visibility_ms")
        if not int_in(n, 1, MAX_ENTRIES):
            raise InvalidCommand("max must be an int in 1..1000")
        if vis is not None and not int_in(vis, 0, MAX_VISIBILITY_MS):
            raise InvalidCommand("visibility_ms must be None or an int in 0..43200000")
        if dry:
            return None
        self._advance(now)
        vis = self.cfg["visibility_timeout_ms"] if vis is None else vis
        out = []
        for msg_id in self._pick(n):
            msg = self.messages[msg_id]
            msg.receive_count += 1
            msg.state, msg.deadline = IN_FLIGHT, now + vis
            out.append({**msg.view(), "receipt": [msg.id, msg.receive_count]})
        return out

    def _pick(self, n: int) -> list[int]:
        ordered = sorted(self.messages.values(), key=lambda m: m.id)
        if not self.cfg["fifo"]:
            return [m.id for m in ordered if m.state == READY][:n]
        groups: dict[str, list[Message]] = {}
        for msg in ordered:
            groups.setdefault(msg.group, []).append(msg)
        heads = [
            members[0].id
            for members in groups.values()
            if members[0].state == READY and not any(m.state == IN_FLIGHT for m in members)
        ]
        return sorted(heads)[:n]

    # ------------------------------------------------------------------ delete / change_visibility

    @staticmethod
    def _validate_receipt(receipt, length: int = 2) -> None:
        if (
            not isinstance(receipt, (list, tuple))
            or len(receipt) != length
            or not int_in(receipt[0], 1)
            or not int_in(receipt[1], 1)
        ):
            raise InvalidReceipt("a receipt is [id, receive_count] with ints >= 1")

    def _op_delete(self, command, now, dry):
        receipts = command.get("receipts")
        if not isinstance(receipts, list) or not 0 < len(receipts) <= MAX_ENTRIES:
            raise InvalidCommand("receipts must be a list of 1..1000 receipts")
        for receipt in receipts:
            self._validate_receipt(receipt)
        if dry:
            return None
        results = []
        for msg_id, count in receipts:
            msg = self.messages.get(msg_id)
            if msg is None:
                results.append({"ok": True, "gone": True})
            elif msg.receive_count == count:
                del self.messages[msg_id]
                results.append({"ok": True})
            else:
                results.append({"error": RECEIPT_EXPIRED})
        return results

    def _op_change_visibility(self, command, now, dry):
        entries = command.get("entries")
        if not isinstance(entries, list) or not 0 < len(entries) <= MAX_ENTRIES:
            raise InvalidCommand("entries must be a list of 1..1000 entries")
        for entry in entries:
            if not isinstance(entry, (list, tuple)) or len(entry) != 3:
                raise InvalidCommand("an entry is [id, receive_count, visibility_ms]")
            self._validate_receipt(entry[:2])
            if not int_in(entry[2], 0, MAX_VISIBILITY_MS):
                raise InvalidCommand("visibility_ms must be an int in 0..43200000")
        if dry:
            return None
        results = []
        for msg_id, count, vis in entries:
            msg = self.messages.get(msg_id)
            if msg is not None and msg.state == IN_FLIGHT and msg.receive_count == count and msg.deadline > now:
                msg.deadline = now + vis
                results.append({"ok": True, "deadline": msg.deadline})
            elif vis == 0 and msg is not None and msg.receive_count == count and msg.state == IN_FLIGHT:
                results.append({"ok": True, "deadline": msg.deadline})  # released already: its lease ended
            elif vis == 0 and msg is not None and msg.receive_count == count and msg.state == READY:
                results.append({"ok": True, "deadline": now})  # released already and returned, not received since
            else:
                results.append({"error": RECEIPT_EXPIRED})
        return results

    # ------------------------------------------------------------------ purge / tick / ack_dead_letters

    def _op_purge(self, command, now, dry):
        purge_id = command.get("purge_id")
        if purge_id is not None and not (isinstance(purge_id, str) and 1 <= (utf8_len(purge_id) or 0) <= 128):
            raise InvalidCommand("purge_id must be None or a str of 1..128 UTF-8 bytes")
        if dry:
            return None
        seen = self.purges.get(purge_id) if purge_id is not None else None
        if seen is not None and seen.expire > now:
            return {"purged": seen.purged, "duplicate": True}
        purged = len(self.messages)
        self.messages.clear()
        if purge_id is not None:
            self.purges[purge_id] = PurgeEntry(purged, now + self.cfg["dedup_window_ms"])
        return {"purged": purged, "duplicate": False}

    def _op_tick(self, command, now, dry):
        if dry:
            return None
        return self._advance(now)

    def _op_ack_dead_letters(self, command, now, dry):
        upto = command.get("upto")
        if not int_in(upto, 0):
            raise InvalidCommand("upto must be an int >= 0")
        if dry:
            return None
        gone = [i for i in self.dead if i <= upto]
        for i in gone:
            del self.dead[i]
        return {"removed": len(gone)}

    # ------------------------------------------------------------------ advancing

    def _advance(self, now: int) -> dict:
        limit = self.advance_limit
        counts = {"returned": 0, "due": 0, "dead_lettered": 0, "expired": 0, "dedup_expired": 0}

        retention = self.cfg["retention_ms"]
        expired = sorted(m.id for m in self.messages.values() if m.enqueued_at + retention <= now)
        for msg_id in expired[:limit]:
            del self.messages[msg_id]
            counts["expired"] += 1

        timed_out = sorted(
            (m for m in self.messages.values() if m.state == IN_FLIGHT and m.deadline <= now),
            key=lambda m: (m.deadline, m.id),
        )
        for msg in timed_out[:limit]:
            max_receives = self.cfg["max_receives"]
            if max_receives > 0 and msg.receive_count >= max_receives:
                del self.messages[msg.id]
                self.dead[msg.id] = {
                    "id": msg.id,
                    "body": msg.body,
                    "attrs": dict(msg.attrs),
                    "group": msg.group,
                    "receive_count": msg.receive_count,
                    "enqueued_at": msg.enqueued_at,
                    "dead_lettered_at": now,
                }
                counts["dead_lettered"] += 1
            else:
                msg.state, msg.deadline = READY, None
                counts["returned"] += 1

        due = sorted(
            (m for m in self.messages.values() if m.state == DELAYED and m.visible_at <= now),
            key=lambda m: (m.visible_at, m.id),
        )
        for msg in due[:limit]:
            msg.state, msg.visible_at = READY, None
            counts["due"] += 1

        ended = sorted([(e.expire, dedup_id.encode(), "dedup", dedup_id)
                        for dedup_id, e in self.dedup.items() if e.expire <= now]
                       + [(e.expire, b"\xff" + batch_id, "batch", batch_id)
                          for batch_id, e in self.batches.items() if e.expire <= now]
                       + [(e.expire, b"\xfe" + purge_id.encode(), "purge", purge_id)
                          for purge_id, e in self.purges.items() if e.expire <= now])
        memories = {"dedup": self.dedup, "batch": self.batches, "purge": self.purges}
        for _, _, kind, key in ended[:limit]:
            del memories[kind][key]
            counts["dedup_expired"] += 1
        return counts

    # ------------------------------------------------------------------ queries

    def config(self) -> dict:
        return dict(self.cfg)

    def stats(self, now: int) -> dict:
        states = [m.state for m in self.messages.values()]
        oldest = min(self.messages) if self.messages else None
        return {
            "count": len(self.messages),
            "ready": states.count(READY),
            "in_flight": states.count(IN_FLIGHT),
            "delayed": states.count(DELAYED),
            "bytes": sum(m.size for m in self.messages.values()),
            "oldest_age_ms": max(0, now - self.messages[oldest].enqueued_at) if oldest else 0,
            "next_id": self.next_id,
            "applied_index": self.applied_index,
            "dead_letters": len(self.dead),
        }

    def peek(self, n: int) -> list[dict]:
        peeked = [self.messages[i] for i in sorted(self.messages)[:n]]
        timers = [{DELAYED: m.visible_at, IN_FLIGHT: m.deadline}.get(m.state) for m in peeked]
        return [{**m.view(), "state": m.state, "visible_at": timer} for m, timer in zip(peeked, timers)]

    def dead_letters(self, limit: int) -> list[dict]:
        return [dict(self.dead[i]) for i in sorted(self.dead)[:limit]]

    def receivable(self, now: int, n: int) -> list[int]:
        trial = copy.deepcopy(self)
        trial._advance(max(now, self.last_now))
        return trial._pick(n)

    # ------------------------------------------------------------------ helpers for the property test

    def interesting_times(self) -> list[int]:
        """Instants where something changes: deadlines, delays, retention and dedup expiries."""
        times = set()
        for m in self.messages.values():
            times.add(m.enqueued_at + self.cfg["retention_ms"])
            if m.deadline is not None:
                times.add(m.deadline)
            if m.visible_at is not None:
                times.add(m.visible_at)
        times.update(e.expire for e in self.dedup.values())
        times.update(e.expire for e in self.batches.values())
        times.update(e.expire for e in self.purges.values())
        return sorted(times)
