"""A pure checker over a fault-tolerance history (Jepsen's total-queue, plus leases and FIFO groups). No I/O.

Definitions (times are client wall-clock ms; `slack_ms` is the allowance for the offset between the clients'
and the nodes' clocks, applied once to every comparison that stands for an order of server events; on one machine
a few ms is plenty):

* A payload is **acknowledged** when any of its sends has outcome ``ok``; **failed** when all its sends have
  outcome ``failed``; otherwise **unknown**. Its acknowledgement time is the earliest ``complete_ms`` of an ok
  send: the message was enqueued before that instant.
* **lost**: acknowledged payloads never delivered. Must be 0.
* **unexpected**: delivered payloads that no send ever invoked. Must be 0. Reported separately and also failing:
  **failed-but-delivered** (a definite failure must not enqueue) and **delivered-before-sent** (a delivery whose
  receive answered before the payload's first send was invoked).
* **duplicates**: deliveries beyond the first of each payload (at-least-once: expected after lease expiry and
  after faults; reported, never failing).
* **message ids**: the message id an ok send returned must be delivered (else that enqueued message was lost even
  if the payload was also enqueued again under another id), and one message id must never carry two payloads.
* **lease exclusivity**, per message (queue, message id), deliveries ordered by the server's receive_count:
  - a receive_count is handed out at most once;
  - a delivery A's lease surely lasts until ``E_A = min(A.invoke_ms + visibility_timeout, invoke of A's delete or
    release whose outcome is ok or unknown)``: the server stamped the receive after A was invoked, and nothing but
    that deadline or an ending call frees it. A later delivery B of the same message is a violation when
    ``B.receive_ms + slack < E_A``: B surely got the message while A surely still held it;
  - receive_count order must agree with real time: A before B in count, yet A invoked after B answered, is a
    violation;
  - **deleted-then-redelivered**: once a delete of the message answered ok, no receive invoked after that
    (+ slack) may return the message (an acknowledged delete was lost).
* **FIFO order** (fifo queues), per (queue, group): if payload `a` was acknowledged before payload `b`'s first
  send was invoked (``ack_a + slack < invoke_b``), then `a` was enqueued before `b`, so `a` is the group's head
  until it is removed, and `b` cannot be delivered before that: `b`'s first delivery must answer no earlier than
  the first delete of `a` (ok or unknown) was invoked (``first_delete_a <= first_delivery_b + slack``; a never
  deleted `a` counts as deleted at infinity). This covers "first deliveries follow send order" for one producer's
  sequential sends (its sequence numbers) and for acknowledged sends of different producers to one group. Sends
  whose outcome is unknown have no known enqueue time and only take part as `b`. Assumes no dead-letter queue and
  a retention longer than the run (the only other ways a head leaves).
* **FIFO one in flight**, per (queue, group): two deliveries of different messages whose leases surely overlap:
  ``later.receive_ms + slack < min(E_earlier, E_later)``.
* **liveness**: each fault must have recovered (every partition led again) within `recovery_bound_ms` of its
  heal; a fault never healed or never seen to recover is a violation.
* **max unavailability**: the longest stretch without an acknowledged send, per (queue, partition), between the
  first send and the ``drain`` mark (or the last send); reported, not failing.
"""

from __future__ import annotations

import bisect
import dataclasses
import math
from collections import Counter, defaultdict
from collections.abc import Iterable

from .history import Delivery, History, LeaseEnd, SendOp

__all__ = ["check", "CheckResult", "Violation", "FAILING_CHECKS"]

# Checks whose violations fail the run; every other number in the result is reported only.
FAILING_CHECKS: tuple[str, ...] = ("lost", "unexpected", "failed_delivered", "delivered_before_sent", "message_id",
                                   "lease", "deleted_redelivered", "fifo_order", "fifo_in_flight", "liveness")
INF = math.inf


@dataclasses.dataclass(frozen=True, slots=True)
class Violation:
    check: str  # one of FAILING_CHECKS
    subject: str  # a payload id, "queue/message id" or "queue/group"
    message: str


@dataclasses.dataclass
class CheckResult:
    sends: Counter[str]  # outcome -> count of send records
    payloads: Counter[str]  # acknowledged / unknown / failed -> count of distinct payloads
    deliveries: int
    delivered_payloads: int
    duplicates: int
    lease_ends: Counter[str]  # "delete ok", "release unknown", ...
    faults: Counter[str]  # kind -> count
    max_recovery_ms: float | None
    max_unavailability_ms: float
    unavailability_where: str
    violations: list[Violation]
    examples_per_check: int = 10

    def count(self, check: str) -> int:
        return sum(1 for v in self.violations if v.check == check)

    @property
    def lost(self) -> list[str]:
        return [v.subject for v in self.violations if v.check == "lost"]

    @property
    def unexpected(self) -> list[str]:
        return [v.subject for v in self.violations if v.check == "unexpected"]

    @property
    def ok(self) -> bool:
        return not self.violations

    def table(self) -> str:
        """A plain-text report: operations, faults, every check with its count, and examples of violations."""
        rows: list[tuple[str, str, str]] = []
        sends = ", ".join(f"{k} {self.sends.get(k, 0)}" for k in ("ok", "failed", "unknown"))
        rows.append(("sends", sends, ""))
        rows.append(("payloads", ", ".join(f"{k} {self.payloads.get(k, 0)}"
                                           for k in ("acknowledged", "unknown", "failed")), ""))
        rows.append(("deliveries", f"{self.deliveries} ({self.delivered_payloads} payloads)", ""))
        rows.append(("lease ends", ", ".join(f"{k} {n}" for k, n in sorted(self.lease_ends.items())) or "none", ""))
        faults = ", ".join(f"{k} {n}" for k, n in sorted(self.faults.items())) or "none"
        rows.append(("faults injected", f"{faults} (total {sum(self.faults.values())})", ""))
        recovery = "n/a" if self.max_recovery_ms is None else f"{self.max_recovery_ms / 1000:.2f} s"
        rows.append(("max recovery after heal", recovery, ""))
        rows.append(("max unavailability", f"{self.max_unavailability_ms / 1000:.2f} s",
                     self.unavailability_where))
        rows.append(("duplicates", str(self.duplicates), "reported"))
        for check in FAILING_CHECKS:
            n = self.count(check)
            rows.append((check.replace("_", " "), str(n), "ok" if n == 0 else "FAIL"))
        width = max(len(r[0]) for r in rows)
        lines = [f"{name:<{width}}  {value}" + (f"  [{note}]" if note else "") for name, value, note in rows]
        for check in FAILING_CHECKS:
            shown = [v for v in self.violations if v.check == check][:self.examples_per_check]
            for v in shown:
                lines.append(f"  {check}: {v.subject}: {v.message}")
            if self.count(check) > len(shown):
                lines.append(f"  {check}: ... {self.count(check) - len(shown)} more")
        lines.append(f"RESULT: {'PASS' if self.ok else 'FAIL'}")
        return "\n".join(lines)


def check(history: History, *, slack_ms: float = 5.0, recovery_bound_ms: float = 2000.0) -> CheckResult:
    """Check a history; see the module docstring for every definition."""
    sends_by_payload: dict[str, list[SendOp]] = defaultdict(list)
    for op in history.sends:
        sends_by_payload[op.payload_id].append(op)
    deliveries_by_payload: dict[str, list[Delivery]] = defaultdict(list)
    for d in history.deliveries:
        deliveries_by_payload[d.payload_id].append(d)
    ends: dict[int, list[LeaseEnd]] = defaultdict(list)
    for end in history.lease_ends:
        ends[end.delivery_id].append(end)

    violations: list[Violation] = []
    payloads = Counter(_status(ops) for ops in sends_by_payload.values())
    violations += _payload_checks(sends_by_payload, deliveries_by_payload, slack_ms)
    violations += _message_checks(history.deliveries, ends, sends_by_payload, slack_ms)
    fifo = {q.name for q in history.queues if q.fifo}
    violations += _fifo_checks(history, fifo, sends_by_payload, deliveries_by_payload, ends, slack_ms)
    recovery, liveness = _liveness(history, recovery_bound_ms)
    violations += liveness
    gap, where = _unavailability(history)

    lease_ends = Counter(f"{e.action} {e.outcome}" for e in history.lease_ends)
    delivered = len(deliveries_by_payload)
    return CheckResult(
        sends=Counter(op.outcome for op in history.sends), payloads=payloads,
        deliveries=len(history.deliveries), delivered_payloads=delivered,
        duplicates=len(history.deliveries) - delivered, lease_ends=lease_ends,
        faults=Counter(f.kind for f in history.faults), max_recovery_ms=recovery,
        max_unavailability_ms=gap, unavailability_where=where, violations=violations)


# ------------------------------------------------------------------ payloads

def _status(ops: list[SendOp]) -> str:
    outcomes = {op.outcome for op in ops}
    if "ok" in outcomes:
        return "acknowledged"
    return "failed" if outcomes == {"failed"} else "unknown"


def _ack_ms(ops: list[SendOp]) -> float:
    return min((op.complete_ms for op in ops if op.outcome == "ok"), default=INF)


def _payload_checks(sends: dict[str, list[SendOp]], deliveries: dict[str, list[Delivery]],
                    slack_ms: float) -> list[Violation]:
    out: list[Violation] = []
    for payload, ops in sorted(sends.items()):
        status = _status(ops)
        got = deliveries.get(payload, [])
        if status == "acknowledged" and not got:
            op = min((o for o in ops if o.outcome == "ok"), key=lambda o: o.complete_ms)
            out.append(Violation("lost", payload, f"acknowledged at {op.complete_ms:.0f} as message "
                                                  f"{op.message_id} by {op.producer}, never delivered"))
        if status == "failed" and got:
            out.append(Violation("failed_delivered", payload, f"every send failed ({ops[0].error}) yet it was "
                                                              f"delivered {len(got)} time(s)"))
        first_invoke = min(op.invoke_ms for op in ops)
        early = [d for d in got if d.receive_ms + slack_ms < first_invoke]
        if early:
            out.append(Violation("delivered_before_sent", payload,
                                 f"received at {early[0].receive_ms:.0f} by {early[0].consumer}, first sent at "
                                 f"{first_invoke:.0f}"))
    for payload, got in sorted(deliveries.items()):
        if payload not in sends:
            out.append(Violation("unexpected", payload, f"delivered {len(got)} time(s) (first to {got[0].consumer}"
                                                        f" as {got[0].queue}/{got[0].message_id}), never sent"))
    return out


# ------------------------------------------------------------------ messages and leases

def _lease_end_ms(d: Delivery, ends: dict[int, list[LeaseEnd]]) -> float:
    """E: the earliest instant the server may have freed this delivery's lease."""
    early = [e.invoke_ms for e in ends.get(d.delivery_id, ()) if e.outcome in ("ok", "unknown")]
    return min([d.lease_deadline_ms, *early])


def _message_checks(deliveries: list[Delivery], ends: dict[int, list[LeaseEnd]],
                    sends: dict[str, list[SendOp]], slack_ms: float) -> list[Violation]:
    out: list[Violation] = []
    by_message: dict[tuple[str, str], list[Delivery]] = defaultdict(list)
    for d in deliveries:
        by_message[(d.queue, d.message_id)].append(d)

    delivered_ids = set(by_message)
    delivered_payloads = {d.payload_id for d in deliveries}
    for payload, ops in sorted(sends.items()):
        if payload not in delivered_payloads:
            continue  # reported as lost (or never acknowledged)
        for op in ops:
            if op.outcome == "ok" and op.message_id is not None and (op.queue, op.message_id) not in delivered_ids:
                out.append(Violation("message_id", payload, f"send acknowledged as {op.queue}/{op.message_id}, "
                                                            f"but only other message ids carried the payload"))

    for (queue, message_id), group in sorted(by_message.items()):
        subject = f"{queue}/{message_id}"
        carried = sorted({d.payload_id for d in group})
        if len(carried) > 1:
            out.append(Violation("message_id", subject, f"carries several payloads: {carried[:5]}"))
        out += _lease_checks(subject, group, ends, slack_ms)
    return out


def _lease_checks(subject: str, group: list[Delivery], ends: dict[int, list[LeaseEnd]],
                  slack_ms: float) -> list[Violation]:
    out: list[Violation] = []
    ordered = sorted(group, key=lambda d: (d.receive_count, d.receive_ms, d.delivery_id))
    seen_counts: dict[int, Delivery] = {}
    holder: Delivery | None = None  # the earlier delivery whose lease surely lasts longest
    holder_end = -INF
    latest_invoker: Delivery | None = None  # the earlier delivery invoked last
    for d in ordered:
        twin = seen_counts.get(d.receive_count)
        if twin is not None:
            out.append(Violation("lease", subject, f"receive_count {d.receive_count} handed out twice: to "
                                                   f"{twin.consumer} at {twin.receive_ms:.0f} and to {d.consumer} "
                                                   f"at {d.receive_ms:.0f}"))
        elif holder is not None and d.receive_ms + slack_ms < holder_end:
            out.append(Violation("lease", subject, f"{d.consumer} got it (count {d.receive_count}) at "
                                                   f"{d.receive_ms:.0f} while {holder.consumer}'s lease (count "
                                                   f"{holder.receive_count}) lasted until at least "
                                                   f"{holder_end:.0f}"))
        if latest_invoker is not None and twin is None and latest_invoker.invoke_ms > d.receive_ms + slack_ms:
            out.append(Violation("lease", subject, f"count {latest_invoker.receive_count} was received by a call "
                                                   f"invoked at {latest_invoker.invoke_ms:.0f}, after count "
                                                   f"{d.receive_count} had been answered at {d.receive_ms:.0f}"))
        seen_counts.setdefault(d.receive_count, d)
        end = _lease_end_ms(d, ends)
        if end > holder_end:
            holder, holder_end = d, end
        if latest_invoker is None or d.invoke_ms > latest_invoker.invoke_ms:
            latest_invoker = d

    deleted = [(e.complete_ms, d) for d in group for e in ends.get(d.delivery_id, ())
               if e.action == "delete" and e.outcome == "ok"]
    if deleted:
        t_del, by = min(deleted, key=lambda x: x[0])
        again = [d for d in group if d.invoke_ms > t_del + slack_ms]
        if again:
            first = min(again, key=lambda d: d.invoke_ms)
            out.append(Violation("deleted_redelivered", subject,
                                 f"deleted by {by.consumer} (ok at {t_del:.0f}), then received again by "
                                 f"{first.consumer} with a call invoked at {first.invoke_ms:.0f}"))
    return out


# ------------------------------------------------------------------ FIFO groups

def _fifo_checks(history: History, fifo_queues: set[str], sends: dict[str, list[SendOp]],
                 deliveries: dict[str, list[Delivery]], ends: dict[int, list[LeaseEnd]],
                 slack_ms: float) -> list[Violation]:
    if not fifo_queues:
        return []
    groups: dict[tuple[str, str], list[str]] = defaultdict(list)  # (queue, group) -> payload ids
    for payload, ops in sends.items():
        if ops[0].queue in fifo_queues:
            groups[(ops[0].queue, ops[0].group or "")].append(payload)
    out: list[Violation] = []
    for (queue, group), members in sorted(groups.items()):
        subject = f"{queue}/{group}"
        out += _fifo_order(subject, members, sends, deliveries, ends, slack_ms)
        group_deliveries = [d for p in members for d in deliveries.get(p, ())]
        out += _fifo_in_flight(subject, group_deliveries, ends, slack_ms)
    return out


def _first_delete_ms(payload: str, deliveries: dict[str, list[Delivery]], ends: dict[int, list[LeaseEnd]]) -> float:
    return min((e.invoke_ms for d in deliveries.get(payload, ()) for e in ends.get(d.delivery_id, ())
                if e.action == "delete" and e.outcome in ("ok", "unknown")), default=INF)


def _fifo_order(subject: str, members: list[str], sends: dict[str, list[SendOp]],
                deliveries: dict[str, list[Delivery]], ends: dict[int, list[LeaseEnd]],
                slack_ms: float) -> list[Violation]:
    # Predecessors sorted by acknowledgement time, with a running max of their removal (first delete) time, so
    # "every payload acknowledged before b was sent was removed before b's first delivery" is one bisect per b.
    acked = sorted((_ack_ms(sends[p]), p) for p in members if _ack_ms(sends[p]) < INF)
    ack_times = [t for t, _ in acked]
    worst: list[tuple[float, str]] = []  # prefix max of (first delete time, payload)
    for _, p in acked:
        removal = (_first_delete_ms(p, deliveries, ends), p)
        worst.append(removal if not worst or removal[0] > worst[-1][0] else worst[-1])
    out: list[Violation] = []
    for b in sorted(members):
        got = deliveries.get(b)
        if not got:
            continue
        first = min(got, key=lambda d: d.receive_ms)
        invoke_b = min(op.invoke_ms for op in sends[b])
        k = bisect.bisect_left(ack_times, invoke_b - slack_ms)  # predecessors: ack + slack < invoke_b
        if k == 0:
            continue
        removal, a = worst[k - 1]
        if removal > first.receive_ms + slack_ms:
            when = "never deleted" if removal == INF else f"first deleted at {removal:.0f}"
            seq_a = sends[a][0].seq
            out.append(Violation("fifo_order", subject,
                                 f"{b} (seq {sends[b][0].seq}) delivered at {first.receive_ms:.0f} before {a} "
                                 f"(seq {seq_a}, acknowledged before {b} was sent) was removed ({when})"))
    return out


def _fifo_in_flight(subject: str, group: Iterable[Delivery], ends: dict[int, list[LeaseEnd]],
                    slack_ms: float) -> list[Violation]:
    out: list[Violation] = []
    # The two longest-lasting earlier leases of distinct messages: enough to find an overlap with another message.
    top: list[tuple[float, Delivery]] = []
    for d in sorted(group, key=lambda x: (x.receive_ms, x.delivery_id)):
        end = _lease_end_ms(d, ends)
        for other_end, other in top:
            if other.message_id != d.message_id and d.receive_ms + slack_ms < min(other_end, end):
                out.append(Violation("fifo_in_flight", subject,
                                     f"{d.message_id} delivered to {d.consumer} at {d.receive_ms:.0f} while "
                                     f"{other.message_id} was held by {other.consumer} until at least "
                                     f"{other_end:.0f}"))
                break
        merged = {o.message_id: (e, o) for e, o in top}
        if d.message_id not in merged or merged[d.message_id][0] < end:
            merged[d.message_id] = (end, d)
        top = sorted(merged.values(), key=lambda x: -x[0])[:2]
    return out


# ------------------------------------------------------------------ liveness and availability

def _liveness(history: History, bound_ms: float) -> tuple[float | None, list[Violation]]:
    out: list[Violation] = []
    worst: float | None = None
    for f in history.faults:
        subject = f"{f.kind}({','.join(f.targets)})@{f.start_ms:.0f}"
        if f.end_ms is None:
            out.append(Violation("liveness", subject, "never healed"))
            continue
        if f.recovered_ms is None:
            out.append(Violation("liveness", subject, "no leader for every partition was seen after the heal"))
            continue
        took = max(0.0, f.recovered_ms - f.end_ms)
        worst = took if worst is None else max(worst, took)
        if took > bound_ms:
            out.append(Violation("liveness", subject, f"every partition had a leader {took:.0f} ms after the "
                                                      f"heal (bound {bound_ms:.0f} ms)"))
    return worst, out


def _unavailability(history: History) -> tuple[float, str]:
    if not history.sends:
        return 0.0, ""
    start = min(op.invoke_ms for op in history.sends)
    drain = [m.at_ms for m in history.marks if m.name == "drain"]
    stop = min(drain) if drain else max(op.complete_ms for op in history.sends)
    acks: dict[tuple[str, int | None], list[float]] = defaultdict(list)
    for op in history.sends:
        if op.outcome == "ok" and op.complete_ms <= stop:
            acks[(op.queue, op.partition)].append(op.complete_ms)
    if not acks:
        return stop - start, "no acknowledged send"
    best, where = 0.0, ""
    for (queue, partition), times in sorted(acks.items(), key=lambda kv: (kv[0][0], kv[0][1] is None, kv[0][1] or 0)):
        points = [start, *sorted(times), stop]
        gap, at = max((b - a, a) for a, b in zip(points, points[1:]))
        if gap > best:
            label = queue if partition is None else f"{queue} partition {partition}"
            best, where = gap, f"{label}, from +{(at - start) / 1000:.2f} s"
    return best, where
