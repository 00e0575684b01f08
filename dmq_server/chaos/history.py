"""The history a fault-tolerance run records: what producers sent, what consumers got, which faults ran.

Records are immutable and only ever appended (Jepsen-style): a delivery is recorded the moment the receive
answer arrives, and the delete (or release) of its lease is a separate record appended when that call ends, so a
history cut short at any instant is still well formed. Times are wall-clock milliseconds since the epoch (float),
the clock the nodes stamp commands with (docs/STORE.md: `now`), so client times and server lease deadlines are
comparable up to clock skew.

Record types (the JSON-lines `type` field):

* ``queue``: a queue under test: name, fifo, partitions, visibility timeout.
* ``send``: one send attempt of one payload: producer, payload id, queue, group, per-producer sequence, invoke and
  complete time, outcome (``ok``: acknowledged; ``failed``: definitely not enqueued; ``unknown``: timeout or an
  error after which it may have been enqueued), message id (``"p.s"``) when ok.
* ``delivery``: one message handed to a consumer by a receive: consumer, payload id (decoded from the body; an
  undecodable body gets an id that no send has), message id, group, receive_count, the receive's invoke and answer
  times and the visibility timeout asked for. ``delivery_id`` is assigned by the recorder, unique in the history.
* ``lease_end``: the delete or release (change_visibility 0) of one delivery's receipt: its outcome and times.
* ``fault``: a fault injected: kind, targets, start, heal, and when every partition had a leader again.
* ``mark``: a named instant, e.g. ``drain`` (the workload stopped, the final drain began).

Usage::

    rec = Recorder(path="history.jsonl")      # path optional: also streamed there, one line per record
    rec.queue(QueueInfo("q", fifo=False, partitions=3, visibility_timeout_ms=5000))
    rec.send(SendOp(...)); d = rec.delivery(...); rec.lease_end(LeaseEnd(d, "delete", "ok", t0, t1))
    history = rec.history()                   # or History.load("history.jsonl")
"""

from __future__ import annotations

import dataclasses
import json
import threading
from collections.abc import Iterable, Iterator
from typing import IO, Any, Literal

__all__ = ["OUTCOMES", "Outcome", "QueueInfo", "SendOp", "Delivery", "LeaseEnd", "FaultEvent", "Mark", "History",
           "Recorder", "Record"]

Outcome = Literal["ok", "failed", "unknown"]
OUTCOMES: tuple[str, ...] = ("ok", "failed", "unknown")
LEASE_ACTIONS: tuple[str, ...] = ("delete", "release")


def _check_outcome(outcome: str) -> None:
    if outcome not in OUTCOMES:
        raise ValueError(f"outcome must be one of {OUTCOMES}, got {outcome!r}")


@dataclasses.dataclass(frozen=True, slots=True)
class QueueInfo:
    name: str
    fifo: bool
    partitions: int = 1
    visibility_timeout_ms: int = 30_000


@dataclasses.dataclass(frozen=True, slots=True)
class SendOp:
    producer: str
    payload_id: str
    queue: str
    group: str | None
    seq: int  # the producer's sequence number within (queue, group), carried in the payload
    invoke_ms: float
    complete_ms: float
    outcome: Outcome
    message_id: str | None = None  # "p.s" when ok (None with ack_mode leader)
    error: str | None = None  # the error code or exception, for the report

    def __post_init__(self) -> None:
        _check_outcome(self.outcome)

    @property
    def partition(self) -> int | None:
        """The partition from the message id "p.s", when known."""
        if self.message_id is None:
            return None
        head, _, _ = self.message_id.partition(".")
        return int(head) if head.isdigit() else None


@dataclasses.dataclass(frozen=True, slots=True)
class Delivery:
    consumer: str
    queue: str
    payload_id: str
    message_id: str
    group: str | None
    receive_count: int
    invoke_ms: float  # the receive request left the consumer
    receive_ms: float  # its answer arrived
    visibility_timeout_ms: int
    delivery_id: int = -1  # set by the recorder

    @property
    def lease_deadline_ms(self) -> float:
        """The earliest the server's lease can end: the server stamps the receive after the request left, so
        its deadline (its `now` + visibility timeout) is at least this, up to clock skew."""
        return self.invoke_ms + self.visibility_timeout_ms


@dataclasses.dataclass(frozen=True, slots=True)
class LeaseEnd:
    delivery_id: int
    action: Literal["delete", "release"]
    outcome: Outcome  # ok; failed (e.g. ReceiptExpired: nothing changed); unknown (timeout)
    invoke_ms: float
    complete_ms: float
    error: str | None = None

    def __post_init__(self) -> None:
        _check_outcome(self.outcome)
        if self.action not in LEASE_ACTIONS:
            raise ValueError(f"action must be one of {LEASE_ACTIONS}, got {self.action!r}")


@dataclasses.dataclass(frozen=True, slots=True)
class FaultEvent:
    kind: str  # kill, pause, partition, isolate_leader, kill_all, lose_unsynced, ...
    targets: tuple[str, ...]
    start_ms: float
    end_ms: float | None  # healed (restarted, resumed, reconnected); None: never healed
    recovered_ms: float | None = None  # every partition had a leader again; None: not seen
    detail: str = ""


@dataclasses.dataclass(frozen=True, slots=True)
class Mark:
    name: str
    at_ms: float


Record = QueueInfo | SendOp | Delivery | LeaseEnd | FaultEvent | Mark

_TYPES: dict[str, type] = {"queue": QueueInfo, "send": SendOp, "delivery": Delivery, "lease_end": LeaseEnd,
                           "fault": FaultEvent, "mark": Mark}
_NAMES: dict[type, str] = {cls: name for name, cls in _TYPES.items()}


def to_json(record: Record) -> str:
    data = dataclasses.asdict(record)
    data["type"] = _NAMES[type(record)]
    return json.dumps(data, separators=(",", ":"), sort_keys=True)


def from_json(line: str) -> Record:
    data: dict[str, Any] = json.loads(line)
    name = data.pop("type", None)
    cls = _TYPES.get(name)  # type: ignore[arg-type]
    if cls is None:
        raise ValueError(f"unknown record type {name!r}")
    if cls is FaultEvent:
        data["targets"] = tuple(data["targets"])
    return cls(**data)


@dataclasses.dataclass
class History:
    """A whole history, grouped by record type (each list in append order)."""

    queues: list[QueueInfo] = dataclasses.field(default_factory=list)
    sends: list[SendOp] = dataclasses.field(default_factory=list)
    deliveries: list[Delivery] = dataclasses.field(default_factory=list)
    lease_ends: list[LeaseEnd] = dataclasses.field(default_factory=list)
    faults: list[FaultEvent] = dataclasses.field(default_factory=list)
    marks: list[Mark] = dataclasses.field(default_factory=list)

    @classmethod
    def of(cls, records: Iterable[Record]) -> "History":
        history = cls()
        for record in records:
            history.add(record)
        return history

    def add(self, record: Record) -> None:
        target = {QueueInfo: self.queues, SendOp: self.sends, Delivery: self.deliveries,
                  LeaseEnd: self.lease_ends, FaultEvent: self.faults, Mark: self.marks}.get(type(record))
        if target is None:
            raise TypeError(f"not a history record: {record!r}")
        target.append(record)  # type: ignore[arg-type]

    def records(self) -> Iterator[Record]:
        yield from self.queues
        yield from self.sends
        yield from self.deliveries
        yield from self.lease_ends
        yield from self.faults
        yield from self.marks

    def dump(self, path: str) -> None:
        with open(path, "w", encoding="utf-8") as f:
            for record in self.records():
                f.write(to_json(record) + "\n")

    @classmethod
    def load(cls, path: str) -> "History":
        """Read a JSON-lines history. A torn last line (the recorder's process died mid-write) is ignored."""
        with open(path, encoding="utf-8") as f:
            lines = f.read().split("\n")
        history = cls()
        last = len(lines)  # the element after the final newline: "" unless the last line is unterminated
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                history.add(from_json(line))
            except (ValueError, TypeError, KeyError) as exc:
                if number == last:  # unterminated: torn by a crash mid-write, not corrupt
                    break
                raise ValueError(f"{path}:{number}: {exc}") from None
        return history


class Recorder:
    """Thread-safe, append-only: every producer and consumer thread records into one Recorder. With `path`, each
    record is also written (and flushed) as one JSON line as it is appended, so a run that dies keeps its history."""

    def __init__(self, path: str | None = None) -> None:
        self._lock = threading.Lock()
        self._history = History()
        self._next_delivery = 0
        self._file: IO[str] | None = open(path, "a", encoding="utf-8") if path is not None else None

    def _append(self, record: Record) -> None:
        # Caller holds the lock: the in-memory order and the file order are the same.
        self._history.add(record)
        if self._file is not None:
            self._file.write(to_json(record) + "\n")
            self._file.flush()

    def record(self, record: Record) -> None:
        if isinstance(record, Delivery):
            raise TypeError("record deliveries with delivery(), which assigns their delivery_id")
        with self._lock:
            self._append(record)

    queue = send = lease_end = fault = mark = record  # readable call sites: rec.send(op), rec.fault(event)

    def delivery(self, delivery: Delivery) -> int:
        """Append a delivery and return its delivery_id (what its LeaseEnd refers to)."""
        with self._lock:
            delivery_id = self._next_delivery
            self._next_delivery += 1
            self._append(dataclasses.replace(delivery, delivery_id=delivery_id))
        return delivery_id

    def history(self) -> History:
        """A copy of everything recorded so far."""
        with self._lock:
            return History.of(list(self._history.records()))

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None

    def __enter__(self) -> "Recorder":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
