"""One fault-tolerance run end to end: start a cluster behind the chaos network, create the queues under test,
run the recorded workload (workload.py) while a scheduler injects faults (faults.py) round after round (each
round is every kind once, in a random order), stop the producers, heal everything, drain, and check the
history (checker.py). Everything lands in `out_dir`: ``history.jsonl`` (streamed while it runs), ``table.txt``,
``result.json`` and ``cluster/`` (configs, data, node logs).

    result = run(240, seed=1, out_dir="/tmp/chaos")   # the CLI: dmq chaos --duration 240 --seed 1 --out DIR
    print(result.table()); assert result.ok
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import time
from collections import Counter
from collections.abc import Callable, Sequence

from dmq_client import Client

from .checker import CheckResult, check
from .cluster import ChaosNodes
from .faults import KINDS, FaultInjector
from .history import QueueInfo, Recorder
from .workload import Workload

__all__ = ["DEFAULT_QUEUES", "run", "header"]

DEFAULT_QUEUES: tuple[QueueInfo, ...] = (QueueInfo("chaos-std", fifo=False, partitions=3, visibility_timeout_ms=3000),
                                         QueueInfo("chaos-fifo", fifo=True, partitions=2, visibility_timeout_ms=3000))


def header(result: CheckResult, *, duration_s: float, seed: int, nodes: int, elapsed_s: float) -> str:
    operations = sum(result.sends.values()) + result.deliveries + sum(result.lease_ends.values())
    return (f"dmq chaos: {nodes} nodes, seed {seed}, workload {duration_s:.0f} s (whole run {elapsed_s:.0f} s)\n"
            f"operations  {operations} (sends + deliveries + lease ends)\n"
            f"lost {len(result.lost)}, unexpected {len(result.unexpected)}, duplicates {result.duplicates}, "
            f"max unavailability {result.max_unavailability_ms / 1000:.2f} s\n")


def run(duration_s: float, seed: int = 0, *, nodes: int = 3, out_dir: str = "chaos-out",
        queues: Sequence[QueueInfo] = DEFAULT_QUEUES, kinds: Sequence[str] = KINDS, min_each: int = 0,
        gap_s: tuple[float, float] = (2.0, 4.0), hold_s: tuple[float, float] = (1.5, 3.0),
        recovery_bound_ms: float = 2000.0, log: Callable[[str], None] = print) -> CheckResult:
    """Run the workload for `duration_s` with faults every `gap_s` (after the previous recovered), and at least
    `min_each` faults of every kind (the run goes on past `duration_s` until then, up to twice as long)."""
    os.makedirs(out_dir, exist_ok=True)
    rng = random.Random(seed)
    began = time.monotonic()
    cluster = ChaosNodes(os.path.join(out_dir, "cluster"), nodes)
    history_path = os.path.join(out_dir, "history.jsonl")
    if os.path.exists(history_path):
        os.remove(history_path)
    rec = Recorder(history_path)
    workload: Workload | None = None
    try:
        cluster.start_all()
        cluster.wait_for("ready", cluster.ready, timeout=60)
        with Client(cluster.addresses, retry_seconds=30) as admin:
            for q in queues:
                admin.create_queue(q.name, partitions=q.partitions, fifo=q.fifo,
                                   visibility_timeout_ms=q.visibility_timeout_ms, replication=min(3, nodes))
                rec.queue(q)
            cluster.wait_for("leaders", lambda: cluster.leaders([q.name for q in queues]), timeout=60)
            log(f"cluster ready in {time.monotonic() - began:.1f} s; workload for {duration_s:.0f} s")
            workload = Workload(cluster.addresses, rec, queues, seed=seed, log=log,
                                visibility_s=queues[0].visibility_timeout_ms / 1000)
            workload.start()
            injector = FaultInjector(cluster, rec, [q.name for q in queues], rng, hold_s=hold_s, log=log)
            started = time.monotonic()
            done: Counter[str] = Counter()
            round_: list[str] = []
            try:
                while True:
                    elapsed = time.monotonic() - started
                    short = any(done[k] < min_each for k in kinds)
                    if elapsed >= duration_s and not short or elapsed >= 2 * duration_s:
                        break
                    time.sleep(rng.uniform(*gap_s))
                    if not round_:
                        round_ = list(kinds)
                        rng.shuffle(round_)
                    kind = round_.pop()
                    injector.inject(kind)
                    done[kind] += 1
            finally:
                injector.heal_all()
            workload.stop_producers()
            log(f"producers stopped after {time.monotonic() - started:.0f} s, {sum(done.values())} faults; draining")
            complete = workload.drain(probe=admin)
            log(f"drain {'complete' if complete else 'ended by the quiet period'}")
    finally:
        if workload is not None:
            workload.stop_producing.set()
            workload.stop_consuming.set()
        rec.close()
        cluster.close()
    result = check(rec.history(), recovery_bound_ms=recovery_bound_ms)
    text = header(result, duration_s=duration_s, seed=seed, nodes=nodes,
                  elapsed_s=time.monotonic() - began) + result.table()
    if workload is not None and workload.errors:
        text += "\nworkload thread errors:\n" + "\n".join(workload.errors)
    with open(os.path.join(out_dir, "table.txt"), "w", encoding="utf-8") as f:
        f.write(text + "\n")
    with open(os.path.join(out_dir, "result.json"), "w", encoding="utf-8") as f:
        json.dump(summary(result), f, indent=1)
    result.text = text  # type: ignore[attr-defined]
    return result


def summary(result: CheckResult) -> dict[str, object]:
    return {"ok": result.ok, "sends": dict(result.sends), "payloads": dict(result.payloads),
            "deliveries": result.deliveries, "duplicates": result.duplicates, "lost": len(result.lost),
            "unexpected": len(result.unexpected), "faults": dict(result.faults),
            "max_recovery_ms": result.max_recovery_ms, "max_unavailability_ms": result.max_unavailability_ms,
            "violations": [dataclasses.asdict(v) for v in result.violations[:100]],
            "violation_counts": dict(Counter(v.check for v in result.violations))}
