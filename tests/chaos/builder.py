"""Hand-made histories for checker tests, and a model queue server that produces valid ones."""

from __future__ import annotations

import dataclasses

from dmq_server.chaos.history import Delivery, FaultEvent, History, LeaseEnd, Mark, QueueInfo, Recorder, SendOp


class Builder:
    """Appends records with terse calls; times are plain numbers (ms)."""

    def __init__(self, *, fifo: bool = False, vt: int = 1000, queue: str = "q") -> None:
        self.rec = Recorder()
        self.queue_name = queue
        self.vt = vt
        self.rec.queue(QueueInfo(queue, fifo=fifo, partitions=1, visibility_timeout_ms=vt))
        self._seq: dict[tuple[str, str | None], int] = {}

    def send(self, payload: str, t0: float, t1: float, outcome: str = "ok", mid: str | None = None,
             group: str | None = None, producer: str = "p1", error: str | None = None) -> SendOp:
        seq = self._seq.get((producer, group), 0)
        self._seq[(producer, group)] = seq + 1
        if mid is None and outcome == "ok":
            mid = f"0.{payload}"
        op = SendOp(producer, payload, self.queue_name, group, seq, t0, t1, outcome,  # type: ignore[arg-type]
                    mid if outcome == "ok" else None, error)
        self.rec.send(op)
        return op

    def deliver(self, payload: str, t0: float, t1: float, *, mid: str | None = None, count: int = 1,
                consumer: str = "c1", group: str | None = None, vt: int | None = None) -> int:
        return self.rec.delivery(Delivery(consumer, self.queue_name, payload, mid or f"0.{payload}", group, count,
                                          t0, t1, self.vt if vt is None else vt))

    def delete(self, delivery_id: int, t0: float, t1: float, outcome: str = "ok") -> None:
        self.rec.lease_end(LeaseEnd(delivery_id, "delete", outcome, t0, t1))  # type: ignore[arg-type]

    def release(self, delivery_id: int, t0: float, t1: float, outcome: str = "ok") -> None:
        self.rec.lease_end(LeaseEnd(delivery_id, "release", outcome, t0, t1))  # type: ignore[arg-type]

    def fault(self, kind: str, start: float, end: float | None, recovered: float | None) -> None:
        self.rec.fault(FaultEvent(kind, ("node1",), start, end, recovered))

    def mark(self, name: str, at: float) -> None:
        self.rec.mark(Mark(name, at))

    def history(self) -> History:
        return self.rec.history()


# ------------------------------------------------------------------ a model server for property tests

@dataclasses.dataclass
class _Message:
    id: int
    payload: str
    group: str
    receive_count: int = 0
    deadline: float | None = None  # in flight until then
    deleted: bool = False


class ModelQueue:
    """A correct single-partition queue (standard or FIFO) with server time `now`; every call takes effect at
    `now`, and the recorded client interval is [now - before, now + after], so histories overlap like real ones."""

    def __init__(self, builder: Builder, fifo: bool) -> None:
        self.b = builder
        self.fifo = fifo
        self.now = 1_000.0
        self.messages: list[_Message] = []
        self.deliveries: list[tuple[int, _Message, int]] = []  # (delivery id, message, receive_count)
        self._payloads = 0

    def tick(self, dt: float) -> None:
        self.now += dt

    def _advance(self) -> None:
        for m in self.messages:
            if m.deadline is not None and m.deadline <= self.now:
                m.deadline = None

    def send(self, group: str, kind: str, before: float, after: float) -> None:
        payload = f"x{self._payloads}"
        self._payloads += 1
        enqueued = kind in ("ok", "unknown_enqueued")
        mid = None
        if enqueued:
            m = _Message(len(self.messages) + 1, payload, group)
            self.messages.append(m)
            mid = f"0.{m.id}"
        outcome = "ok" if kind == "ok" else ("failed" if kind == "failed" else "unknown")
        self.b.send(payload, self.now - before, self.now + after, outcome, mid=mid,
                    group=group if self.fifo else None)

    def receive(self, consumer: str, vt: int, before: float, after: float) -> None:
        self._advance()
        live = [m for m in self.messages if not m.deleted]
        if self.fifo:
            busy = {m.group for m in live if m.deadline is not None}
            heads: dict[str, _Message] = {}
            for m in live:
                heads.setdefault(m.group, m)
            ready = sorted((m for g, m in heads.items() if g not in busy), key=lambda m: m.id)
        else:
            ready = [m for m in live if m.deadline is None]
        if not ready:
            return
        m = ready[0]
        m.receive_count += 1
        m.deadline = self.now + vt
        did = self.b.deliver(m.payload, self.now - before, self.now + after, mid=f"0.{m.id}", count=m.receive_count,
                             consumer=consumer, group=m.group if self.fifo else None, vt=vt)
        self.deliveries.append((did, m, m.receive_count))

    def end_lease(self, pick: int, release: bool, before: float, after: float) -> None:
        if not self.deliveries:
            return
        did, m, count = self.deliveries[pick % len(self.deliveries)]
        self._advance()
        if release:
            ok = not m.deleted and m.deadline is not None and m.receive_count == count and m.deadline > self.now
            if ok:
                m.deadline = self.now
            self.b.release(did, self.now - before, self.now + after, "ok" if ok else "failed")
            return
        if m.deleted:
            outcome = "ok"
        elif m.receive_count == count:
            m.deleted, outcome = True, "ok"
        else:
            outcome = "failed"
        self.b.delete(did, self.now - before, self.now + after, outcome)

    def drain(self) -> None:
        self.b.mark("drain", self.now)
        for _ in range(len(self.messages) + 1):
            self.now += 10_000_000  # past every lease
            self._advance()
            before = len(self.deliveries)
            self.receive("drain", 1000, 1, 1)
            if len(self.deliveries) == before:
                return
            self.now += 2
            self.end_lease(len(self.deliveries) - 1, False, 1, 1)
            self.now += 2
