"""The recorded workload of a fault-tolerance run: producers and consumers on real SDK clients, one thread and
one blocking `Client` each, recording every operation into a `Recorder` (history.py).

* Producers send unique payloads ``<producer>-<n>`` one at a time. On a FIFO queue each send picks one of a few
  groups (shared by the producers) and carries the producer's sequence number within that group. Outcome: ``ok``
  with the message id; ``failed`` only for a definite refusal (`DEFINITE_ERRORS`); ``unknown`` for everything
  else (Timeout, Unavailable after the SDK's retries, connection errors: the message may have been enqueued).
* Consumers receive up to a few messages with a short visibility timeout, record each delivery (the receive's
  invoke and answer times and the lease asked for) the moment the answer arrives, then delete most of them and
  release some (`release_ratio`), recording each lease end with its outcome (InvalidReceipt: ``failed``; any
  other error: ``unknown``). ReceiptExpired is ``unknown`` too: the SDK retries a delete or release whose answer
  was lost (a leader killed after committing it), and the retry, finding the message already redelivered, answers
  ReceiptExpired although the first attempt took effect (seen in a run: a release committed by a leader killed
  8 ms later, the message received again 1 s later, the retried release answered ReceiptExpired).
* `drain()`: after the producers stopped and the faults were healed, the consumers go on until every
  acknowledged payload has been delivered and the queues are empty (or nothing arrived for `quiet_s`), bounded
  by `max_s`.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Sequence

from dmq_client import Client
from dmq_client.errors import (DmqError, Forbidden, InvalidReceipt, InvalidRequest, MessageTooLarge, QueueFull,
                               QueueNotFound, Unauthorized)

from .history import Delivery, LeaseEnd, Mark, QueueInfo, Recorder, SendOp

__all__ = ["Workload", "DEFINITE_ERRORS"]

# Refusals after which the message was certainly not enqueued.
DEFINITE_ERRORS = (QueueFull, InvalidRequest, MessageTooLarge, QueueNotFound, Unauthorized, Forbidden)
FIFO_GROUPS = 4


def _now() -> float:
    return time.time() * 1000


def _payload_of(body: bytes) -> str:
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        return "undecodable:" + body[:32].hex()


class Workload:
    def __init__(self, addresses: Sequence[str], rec: Recorder, queues: Sequence[QueueInfo], *, seed: int = 0,
                 producers_per_queue: int = 2, consumers_per_queue: int = 2, send_interval_s: float = 0.04,
                 visibility_s: float = 3.0, release_ratio: float = 0.05, retry_seconds: float = 6.0,
                 request_timeout: float = 3.0, log: Callable[[str], None] = lambda line: None) -> None:
        self.addresses = list(addresses)
        self.rec = rec
        self.queues = list(queues)
        self.seed = seed
        self.producers_per_queue = producers_per_queue
        self.consumers_per_queue = consumers_per_queue
        self.send_interval_s = send_interval_s
        self.visibility_s = visibility_s
        self.release_ratio = release_ratio
        self.retry_seconds = retry_seconds
        self.request_timeout = request_timeout
        self.log = log
        self.stop_producing = threading.Event()
        self.stop_consuming = threading.Event()
        self._producers: list[threading.Thread] = []
        self._consumers: list[threading.Thread] = []
        self._lock = threading.Lock()
        self.acknowledged: set[str] = set()
        self.delivered: set[str] = set()
        self.last_delivery = time.monotonic()
        self.errors: list[str] = []

    def _client(self) -> Client:
        return Client(self.addresses, retry_seconds=self.retry_seconds, request_timeout=self.request_timeout,
                      connect_timeout=1.0)

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        n = 0
        for queue in self.queues:
            for k in range(self.producers_per_queue):
                n += 1
                name = f"p{n}"
                t = threading.Thread(target=self._guard, args=(self._produce, name, queue, random.Random(
                    f"{self.seed}-{name}")), name=f"chaos-{name}", daemon=True)
                self._producers.append(t)
            for k in range(self.consumers_per_queue):
                name = f"c{len(self._consumers) + 1}"
                t = threading.Thread(target=self._guard, args=(self._consume, name, queue, random.Random(
                    f"{self.seed}-{name}")), name=f"chaos-{name}", daemon=True)
                self._consumers.append(t)
        for t in self._producers + self._consumers:
            t.start()

    def stop_producers(self, timeout: float = 60.0) -> None:
        self.stop_producing.set()
        for t in self._producers:
            t.join(timeout)

    def drain(self, *, quiet_s: float = 10.0, max_s: float = 180.0, probe: Client | None = None) -> bool:
        """Let the consumers empty the queues (call after stop_producers and once the faults are healed).
        True when every acknowledged payload was delivered and the queues were seen empty."""
        self.rec.mark(Mark("drain", _now()))
        deadline = time.monotonic() + max_s
        empty_since: float | None = None
        complete = False
        while time.monotonic() < deadline:
            time.sleep(0.5)
            with self._lock:
                missing = len(self.acknowledged - self.delivered)
                quiet = time.monotonic() - self.last_delivery
            empty = False
            if probe is not None and missing == 0:
                try:
                    empty = all(probe.get_queue(q.name).stats.get("count", 1) == 0 for q in self.queues)
                except DmqError:
                    empty = False
            if missing == 0 and empty:
                empty_since = empty_since or time.monotonic()
                if time.monotonic() - empty_since >= 1.0:
                    complete = True
                    break
            else:
                empty_since = None
            if quiet >= quiet_s and (missing == 0 or quiet >= 3 * quiet_s):
                break
        self.stop_consuming.set()
        for t in self._consumers:
            t.join(self.retry_seconds + self.request_timeout + 10)
        self.rec.mark(Mark("drained", _now()))
        return complete

    def _guard(self, fn: Callable[..., None], name: str, queue: QueueInfo, rng: random.Random) -> None:
        try:
            fn(name, queue, rng)
        except Exception as exc:  # a workload bug must show, not silently stop a thread
            self.errors.append(f"{name}: {type(exc).__name__}: {exc}")
            self.log(f"workload thread {name} died: {type(exc).__name__}: {exc}")

    # ------------------------------------------------------------------ producers

    def _produce(self, name: str, queue: QueueInfo, rng: random.Random) -> None:
        seqs: dict[str | None, int] = {}
        n = 0
        with self._client() as client:
            while not self.stop_producing.is_set():
                group = f"g{rng.randrange(FIFO_GROUPS)}" if queue.fifo else None
                seq = seqs.get(group, 0)
                seqs[group] = seq + 1
                payload = f"{name}-{n}"
                n += 1
                t0 = _now()
                message_id: str | None = None
                error: str | None = None
                try:
                    message_id = client.send(queue.name, payload.encode(), group=group)
                    outcome = "ok"
                except DEFINITE_ERRORS as exc:
                    outcome, error = "failed", type(exc).__name__
                except Exception as exc:  # Timeout, Unavailable, connection errors...: may have been enqueued
                    outcome, error = "unknown", type(exc).__name__
                t1 = _now()
                self.rec.send(SendOp(name, payload, queue.name, group, seq, t0, t1, outcome,  # type: ignore[arg-type]
                                     message_id, error))
                if outcome == "ok":
                    with self._lock:
                        self.acknowledged.add(payload)
                else:
                    time.sleep(0.1)
                self.stop_producing.wait(self.send_interval_s * rng.uniform(0.5, 1.5))

    # ------------------------------------------------------------------ consumers

    def _consume(self, name: str, queue: QueueInfo, rng: random.Random) -> None:
        vt_ms = int(self.visibility_s * 1000)
        with self._client() as client:
            while not self.stop_consuming.is_set():
                t0 = _now()
                try:
                    messages = client.receive(queue.name, max_messages=5, wait_seconds=0.5,
                                              visibility_timeout=self.visibility_s)
                except Exception:
                    time.sleep(0.1)
                    continue
                t1 = _now()
                if messages:
                    with self._lock:
                        self.last_delivery = time.monotonic()
                ids = []
                for m in messages:
                    payload = _payload_of(m.body)
                    ids.append(self.rec.delivery(Delivery(name, queue.name, payload, m.id, m.group, m.receive_count,
                                                          t0, t1, vt_ms)))
                    with self._lock:
                        self.delivered.add(payload)
                for m, delivery_id in zip(messages, ids):
                    action = "release" if rng.random() < self.release_ratio else "delete"
                    e0 = _now()
                    error: str | None = None
                    try:
                        (m.release if action == "release" else m.delete)()
                        outcome = "ok"
                    except InvalidReceipt as exc:
                        outcome, error = "failed", type(exc).__name__
                    except Exception as exc:
                        outcome, error = "unknown", type(exc).__name__
                    self.rec.lease_end(LeaseEnd(delivery_id, action, outcome, e0, _now(), error))  # type: ignore[arg-type]
