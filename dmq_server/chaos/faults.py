"""Fault injection for a fault-tolerance run: each fault is injected, held, healed, and recorded as a
`FaultEvent` whose ``recovered_ms`` is the first instant after the heal at which every node agreed on a running
leader for the metadata group and for every partition (`ChaosNodes.leaders`).

Kinds (`KINDS`), and how each is injected on a `ChaosNodes` cluster:

* ``kill_leader``: kill -9 the node leading a random partition (or the metadata group), hold, restart it.
* ``kill_random``: kill -9 a random node, hold, restart it.
* ``pause``: SIGSTOP a random node (the leader of a partition half of the time) for longer than the election
  timeout, then SIGCONT.
* ``partition``: split the nodes into a random majority and minority (node-to-node links cut both ways through
  the proxies; clients still reach every node), then heal.
* ``isolate_leader``: cut a partition leader (or the metadata leader) off from every other node, then heal.
* ``kill_all``: kill -9 every node at once, then restart them all.
* ``lose_unsynced``: kill -9 one node (a minority), cut its RocksDB WALs back to what it had fsynced
  (unsynced.py: a power loss on that machine), restart it.

For the kinds that restart processes, the heal (``end_ms``) is when every restarted node answers requests again;
for the others it is the SIGCONT or the network heal.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence

from .cluster import ChaosNodes
from .history import FaultEvent, Recorder
from .unsynced import lose_unsynced_writes

__all__ = ["KINDS", "FaultInjector"]

KINDS: tuple[str, ...] = ("kill_leader", "kill_random", "pause", "partition", "isolate_leader", "kill_all",
                          "lose_unsynced")
RECOVERY_WAIT_S = 30.0  # how long after a heal we look for leaders before recording "not recovered"
START_WAIT_S = 60.0


def _now() -> float:
    return time.time() * 1000


class FaultInjector:
    def __init__(self, nodes: ChaosNodes, rec: Recorder, queues: Sequence[str], rng: random.Random, *,
                 hold_s: tuple[float, float] = (1.5, 3.0), log: Callable[[str], None] = lambda line: None) -> None:
        self.nodes = nodes
        self.rec = rec
        self.queues = list(queues)
        self.rng = rng
        self.hold_s = hold_s
        self.log = log
        self.events: list[FaultEvent] = []

    def _hold(self) -> float:
        seconds = self.rng.uniform(*self.hold_s)
        time.sleep(seconds)
        return seconds

    def _leader(self) -> tuple[int, str]:
        """A random partition's (or the metadata group's) leader: (node index, what it leads)."""
        view = self.nodes.leaders(self.queues)
        if view is None:  # no agreement right now: ask one node's cluster_status
            for i in range(len(self.nodes)):
                status = self.nodes.status(i)
                if status and status["metadata_leader"] in self.nodes.ids:
                    return self.nodes.ids.index(status["metadata_leader"]), "metadata"
            return self.rng.randrange(len(self.nodes)), "unknown"
        what = self.rng.choice(sorted(view))
        return self.nodes.ids.index(view[what]), what

    def _wait_started(self, indexes: Sequence[int]) -> None:
        deadline = time.monotonic() + START_WAIT_S
        pending = set(indexes)
        while pending and time.monotonic() < deadline:
            pending = {i for i in pending if self.nodes.status(i, 1.0) is None}
            if pending:
                time.sleep(0.05)

    def _recovered(self) -> float | None:
        deadline = time.monotonic() + RECOVERY_WAIT_S
        while time.monotonic() < deadline:
            if self.nodes.leaders(self.queues) is not None:
                return _now()
            time.sleep(0.05)
        return None

    def inject(self, kind: str) -> FaultEvent:
        """Inject one fault of `kind`, hold it, heal it, wait for the recovery; record and return the event."""
        n = len(self.nodes)
        ids = self.nodes.ids
        start = _now()
        detail = ""
        if kind in ("kill_leader", "kill_random", "lose_unsynced"):
            if kind == "kill_leader":
                target, what = self._leader()
                detail = f"leader of {what}"
            else:
                target = self.rng.randrange(n)
            targets = [target]
            self.nodes.kill(target)
            if kind == "lose_unsynced":
                report = lose_unsynced_writes(self.nodes.layout.data_dirs[target], self.nodes.sync_records[target],
                                              pid=self.nodes.pid(target))
                detail = report.summary()
            detail += f"; down {self._hold():.1f} s"
            self.nodes.start(target)
            self._wait_started(targets)
        elif kind == "kill_all":
            targets = list(range(n))
            for i in targets:
                self.nodes.kill(i)
            time.sleep(self.rng.uniform(0.2, 1.0))
            for i in targets:
                self.nodes.start(i)
            self._wait_started(targets)
        elif kind == "pause":
            if self.rng.random() < 0.5:
                target, what = self._leader()
                detail = f"leader of {what}; "
            else:
                target = self.rng.randrange(n)
            targets = [target]
            self.nodes.pause(target)
            try:
                detail += f"stopped {self._hold():.1f} s"
            finally:
                self.nodes.resume(target)
        elif kind == "partition":
            order = list(range(n))
            self.rng.shuffle(order)
            minority = order[:(n - 1) // 2] or order[:1]
            majority = [i for i in order if i not in minority]
            targets = minority
            self.nodes.network.partition([minority, majority])
            try:
                detail = (f"{[ids[i] for i in minority]} | {[ids[i] for i in majority]}; "
                          f"held {self._hold():.1f} s")
            finally:
                self.nodes.network.heal()
        elif kind == "isolate_leader":
            target, what = self._leader()
            targets = [target]
            self.nodes.network.isolate(target)
            try:
                detail = f"leader of {what}; held {self._hold():.1f} s"
            finally:
                self.nodes.network.heal()
        else:
            raise ValueError(f"unknown fault kind {kind!r}")
        end = _now()
        recovered = self._recovered()
        event = FaultEvent(kind, tuple(ids[i] for i in targets), start, end, recovered, detail)
        self.rec.fault(event)
        self.events.append(event)
        took = "not recovered" if recovered is None else f"recovered {(recovered - end) / 1000:.2f} s after heal"
        self.log(f"fault {len(self.events)}: {kind} {list(event.targets)} ({detail}); {took}")
        return event

    def heal_all(self) -> None:
        """Undo whatever a fault interrupted midway: network healed, paused nodes resumed, dead nodes restarted."""
        self.nodes.network.heal()
        for i in range(len(self.nodes)):
            if i in self.nodes.paused:
                self.nodes.resume(i)
            if not self.nodes.alive(i):
                self.nodes.start(i)
        self._wait_started(range(len(self.nodes)))
