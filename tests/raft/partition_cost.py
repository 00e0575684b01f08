"""Idle cost of one node hosting N Raft groups, in a 3-process cluster on 127.0.0.1 (a measurement, not a test).

    python -m tests.raft.partition_cost 1 100 1000 [--seconds 20] [--heartbeat 0.05] [--journal raftlog]

Each node process (host_node_proc.py) runs a RaftHost with N groups whose Raft logs share one RocksDB database
(as a node keeps them; `--journal raftlog` for one database per group). Once every
group has a leader, CPU (from /proc/PID/stat) is sampled over --seconds with no load; RSS, threads and file
descriptors are read from /proc. Every process is stopped by its own PID.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

from .hostutil import ProcCluster

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _cpu_seconds(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def _rss_mb_and_threads(pid: int) -> tuple[int, int]:
    status = dict(line.split(":", 1) for line in open(f"/proc/{pid}/status"))
    return int(status["VmRSS"].split()[0]) // 1024, int(status["Threads"])


def idle_cost(groups: int, seconds: float, heartbeat: float, journal: str = "shared") -> dict:
    timeouts = ["--period", str(heartbeat), "--min-timeout", str(6 * heartbeat), "--max-timeout", str(9 * heartbeat),
                "--conn-timeout", str(max(3.0, 10 * heartbeat))]
    with tempfile.TemporaryDirectory(prefix="dmq-partition-cost-") as root:
        started = time.time()
        cluster = ProcCluster(root, 3, args=["--groups", str(groups), "--journal", journal, "--unbatched",
                                             *timeouts])
        try:
            deadline = time.time() + 300
            while time.time() < deadline:
                if all(node.call("summary", wait=300)["with_leader"] == groups for node in cluster.nodes):
                    break
                time.sleep(0.5)
            ready = time.time() - started
            time.sleep(3)
            pids = [node.proc.pid for node in cluster.nodes]
            before = [_cpu_seconds(pid) for pid in pids]
            begin = time.time()
            time.sleep(seconds)
            elapsed = time.time() - begin
            cpu = [100 * (_cpu_seconds(pid) - b) / elapsed for pid, b in zip(pids, before)]
            memory = [_rss_mb_and_threads(pid) for pid in pids]
            return {"groups": groups, "journal": journal, "heartbeat_s": heartbeat, "all_led_after_s": round(ready, 1),
                    "cpu_pct_of_core": [round(c, 1) for c in cpu], "rss_mb": [m[0] for m in memory],
                    "os_threads": [m[1] for m in memory],
                    "fds": [len(os.listdir(f"/proc/{pid}/fd")) for pid in pids]}
        finally:
            cluster.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("groups", type=int, nargs="+")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--heartbeat", type=float, default=0.05)
    parser.add_argument("--journal", choices=["shared", "raftlog"], default="shared")
    args = parser.parse_args()
    for groups in args.groups:
        print(json.dumps(idle_cost(groups, args.seconds, args.heartbeat, args.journal)), flush=True)


if __name__ == "__main__":
    main()
