"""Benchmark of one partition group of three replica processes on 127.0.0.1 (`dmq bench-raft`).

Every load generator runs inside the leader process (node_process's `load`, `latency` and writer), so the figures
are those of Raft + the store, not of the control pipe. The Raft log fsyncs as in production.

* throughput: enqueue commands of `msgs` messages of `body_bytes` random bytes, `window` commands in flight;
* latency: sequential synchronous enqueues of one message (submit to callback, measured in the leader);
* failover: every replica runs a writer that submits while it leads; the leader is killed with SIGKILL and the time
  from the kill to the first acknowledged write on a survivor is measured; the killed replica is restarted and
  catches up before the next round.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

from .group import GroupTimings
from .node_process import LocalCluster, NodeError, NodeProcess


def timing_options(timings: GroupTimings) -> list[str]:
    return ["--heartbeat", str(timings.heartbeat), "--election-min", str(timings.election_min),
            "--election-max", str(timings.election_max), "--tick", str(timings.tick),
            "--connection-timeout", str(timings.connection_timeout),
            "--snapshot-entries", str(timings.snapshot_min_entries),
            "--snapshot-seconds", str(timings.snapshot_min_seconds)]


def first_ack_after(nodes: list[NodeProcess], since: float, timeout: float) -> float | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for node in nodes:
            try:
                first = node.call("writer_report", wait=5, since=since).get("first_ack_since")
            except (NodeError, TimeoutError):
                continue
            if first is not None:
                return first - since
        time.sleep(0.02)
    return None


def measure_failover(cluster: LocalCluster, rounds: int, root: str, *, k: int = 10, window: int = 4,
                     load_seconds: float = 0.5, progress: Callable[[str], None] = print) -> list[float | None]:
    """kill -9 the leader `rounds` times under writers; the kill-to-next-ack time of each round."""
    results: list[float | None] = []
    for node in cluster.nodes:
        node.call("writer_start", tag=f"{node.address}#{node.incarnation}", k=k, window=window, cmd_timeout=2.0,
                  ack_file=os.path.join(root, f"acks-{node.address.replace(':', '_')}-{node.incarnation}"))
    for round_no in range(rounds):
        leader = cluster.wait_leader(timeout=30)
        time.sleep(load_seconds)  # writes flow before the kill
        survivors = [n for n in cluster.nodes if n is not leader]
        killed_at = time.time()
        leader.kill9()
        elapsed = first_ack_after(survivors, killed_at, timeout=15)
        results.append(elapsed)
        progress(f"failover round {round_no + 1}/{rounds}: "
                 + (f"{elapsed * 1000:.0f} ms" if elapsed is not None else "no ack within 15 s"))
        leader.start()
        leader.call("writer_start", wait=60, tag=f"{leader.address}#{leader.incarnation}", k=k, window=window,
                    cmd_timeout=2.0,
                    ack_file=os.path.join(root, f"acks-{leader.address.replace(':', '_')}-{leader.incarnation}"))
        cluster.wait_converged(timeout=60)
    for node in cluster.nodes:
        node.call("writer_stop", wait=30)
    return results


def run(root: str, *, cmds: int = 3_000, msgs: int = 100, body_bytes: int = 100, window: int = 50,
        latency_commands: int = 2_000, failover_rounds: int = 5, timings: GroupTimings | None = None,
        host: bool = True, progress: Callable[[str], None] = print) -> dict[str, Any]:
    """`host`: replicas on a RaftHost (the node's shared authenticated transport, as dmq-server runs them);
    otherwise on pysyncobj's own TCP transport."""
    timings = timings or GroupTimings()
    results: dict[str, Any] = {"replicas": 3, "fsync": True, "msgs_per_command": msgs, "body_bytes": body_bytes,
                               "window": window, "transport": "raft-host" if host else "pysyncobj-tcp",
                               "timings": {"heartbeat": timings.heartbeat,
                                                             "election_min": timings.election_min,
                                                             "election_max": timings.election_max}}
    cluster = LocalCluster(root, options=timing_options(timings) + (["--host"] if host else []))
    try:
        cluster.start()
        leader = cluster.wait_leader(timeout=30)
        outcome = leader.call("submit", command={"op": "configure", "attrs": {"max_messages": 100_000_000}})
        assert "result" in outcome["outcome"], outcome

        leader.call("load", wait=120, cmds=min(200, cmds), msgs=msgs, size=body_bytes, window=window, timeout=60)
        term_before = _settled_term(cluster)
        load = leader.call("load", wait=600, cmds=cmds, msgs=msgs, size=body_bytes, window=window, timeout=540)
        results["throughput"] = {
            "commands": load["acked"], "failed": load["failed"], "seconds": round(load["elapsed"], 3),
            "msgs_per_s": round(load["msgs_per_s"] or 0), "mb_per_s": round((load["msgs_per_s"] or 0) * body_bytes / 1e6, 2),
            "commit_p50_ms": _ms(load["lat_p50"]), "commit_p99_ms": _ms(load["lat_p99"])}
        progress(f"throughput: {results['throughput']['msgs_per_s']:,} msgs/s ({load['acked']} commands of "
                 f"{msgs} x {body_bytes} B, window {window}; commit p50 {results['throughput']['commit_p50_ms']} ms)")
        cluster.wait_converged(timeout=120)
        time.sleep(1.0)  # an election the load provoked may start just after the last commit
        term_after = max(status["term"] for status in cluster.statuses().values())
        results["throughput"]["elections_under_load"] = term_after - term_before
        progress(f"elections during and just after the throughput run: {term_after - term_before}")

        leader = cluster.wait_leader(timeout=30)
        lat = leader.call("latency", wait=600, n=latency_commands, msgs=1, size=body_bytes, timeout=10)
        latencies = lat["latencies"]
        results["latency"] = {"commands": len(latencies), "errors": lat["errors"], "p50_ms": _ms(lat["p50"]),
                              "p99_ms": _ms(lat["p99"]),
                              "mean_ms": _ms(statistics.fmean(latencies)) if latencies else None,
                              "max_ms": _ms(max(latencies)) if latencies else None}
        progress(f"latency (1 x {body_bytes} B, sequential): p50 {results['latency']['p50_ms']} ms, "
                 f"p99 {results['latency']['p99_ms']} ms")

        if failover_rounds:
            times = measure_failover(cluster, failover_rounds, root, progress=progress)
            measured = [t for t in times if t is not None]
            results["failover"] = {"rounds": len(times), "no_ack": len(times) - len(measured),
                                   "median_s": round(statistics.median(measured), 3) if measured else None,
                                   "max_s": round(max(measured), 3) if measured else None,
                                   "all_s": [None if t is None else round(t, 3) for t in times]}
            progress(f"failover (kill -9 leader -> next ack): median {results['failover']['median_s']} s, "
                     f"max {results['failover']['max_s']} s over {len(times)} rounds")
    finally:
        cluster.stop()
    return results


def _settled_term(cluster: LocalCluster, quiet: float = 1.0, timeout: float = 30.0) -> int:
    """The cluster's term once it has not changed for `quiet` seconds (start-up elections are over)."""
    deadline = time.monotonic() + timeout
    term, since = -1, time.monotonic()
    while time.monotonic() < deadline:
        current = max(status["term"] for status in cluster.statuses().values())
        if current != term:
            term, since = current, time.monotonic()
        elif time.monotonic() - since >= quiet:
            break
        time.sleep(0.1)
    return term


def run_in_temp(**kwargs: Any) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="dmq-bench-raft-") as root:
        return run(root, **kwargs)


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)
