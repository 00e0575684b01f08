"""Real dmq nodes behind a chaos Network: `dmq_server.chaos.node` processes on configs from
`config_texts_with_proxies`, each recording its Raft-log fsyncs (for the unsynced-writes simulation).

Processes are signalled only through their own Popen handle (their PID): kill -9, SIGSTOP/SIGCONT, SIGTERM.
`leaders()` is the probe the fault scheduler uses to decide that a cluster has recovered: every node answers,
they all name the same live metadata leader, and the same live leader for every partition of the given queues
(get_queue answers from each node's own Raft state, which is fresh, unlike the heartbeat-fed cluster_status).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from dmq_client.connection import Connection
from dmq_client.errors import DmqError

from .configs import ProxiedCluster, config_texts_with_proxies
from .proxy import Network

__all__ = ["ChaosNodes", "REPO"]

REPO = Path(__file__).resolve().parents[2]
READY_SECONDS = 30.0
STOP_SECONDS = 10.0


class ChaosNodes:
    def __init__(self, root: Path | str, n: int = 3, **config: Any) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.layout: ProxiedCluster = config_texts_with_proxies(n, root=str(self.root), **config)
        self.network = Network(self.layout.nodes)
        self.config_paths = []
        for i, text in enumerate(self.layout.texts):
            path = self.root / f"node{i + 1}.toml"
            path.write_text(text)
            self.config_paths.append(path)
        self.sync_records = [str(self.root / f"sync{i + 1}.log") for i in range(n)]
        self.log_paths = [self.root / f"node{i + 1}.log" for i in range(n)]
        self.procs: list[subprocess.Popen[bytes] | None] = [None] * n
        self.paused: set[int] = set()
        self._started: list[subprocess.Popen[bytes]] = []

    @property
    def addresses(self) -> list[str]:
        return [node.client for node in self.layout.nodes]

    @property
    def ids(self) -> list[str]:
        return [node.node_id for node in self.layout.nodes]

    def __len__(self) -> int:
        return len(self.procs)

    def start(self, i: int) -> None:
        assert not self.alive(i)
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        with open(self.log_paths[i], "ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "dmq_server.chaos.node", "--config", str(self.config_paths[i]),
                 "--sync-record", self.sync_records[i]],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=str(self.root), env=env)
        self.procs[i] = proc
        self._started.append(proc)

    def start_all(self) -> None:
        self.network.start()
        for i in range(len(self)):
            self.start(i)

    def alive(self, i: int) -> bool:
        proc = self.procs[i]
        return proc is not None and proc.poll() is None

    def pid(self, i: int) -> int:
        proc = self.procs[i]
        assert proc is not None
        return proc.pid

    def kill(self, i: int) -> None:
        proc = self.procs[i]
        assert proc is not None and proc.poll() is None
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(STOP_SECONDS)
        self.paused.discard(i)

    def pause(self, i: int) -> None:
        proc = self.procs[i]
        assert proc is not None and proc.poll() is None
        os.kill(proc.pid, signal.SIGSTOP)
        self.paused.add(i)

    def resume(self, i: int) -> None:
        proc = self.procs[i]
        if proc is not None and proc.poll() is None:
            os.kill(proc.pid, signal.SIGCONT)
        self.paused.discard(i)

    def close(self) -> None:
        for i in list(self.paused):
            self.resume(i)
        for proc in self._started:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_SECONDS
        for proc in self._started:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(STOP_SECONDS)
        self.network.stop()

    def call(self, i: int, op: str, args: dict[str, Any], timeout: float = 2.0) -> Any:
        """One request to node i (through its proxy); None when it cannot be answered."""
        try:
            with Connection(self.addresses[i], connect_timeout=1.0) as conn:
                return conn.call(op, args, timeout=timeout)
        except (DmqError, OSError):
            return None

    def status(self, i: int, timeout: float = 2.0) -> dict[str, Any] | None:
        return self.call(i, "cluster_status", {}, timeout)

    def wait_for(self, what: str, predicate: Any, timeout: float = READY_SECONDS) -> Any:
        """Poll `predicate()` until it returns something truthy (returned) or fail with the node logs."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            last = predicate()
            if last:
                return last
            time.sleep(0.1)
        raise AssertionError(f"not {what} within {timeout} s (last: {last!r})\n{self.logs()}")

    def ready(self) -> bool:
        ids = set(self.ids)
        for i in range(len(self)):
            status = self.status(i)
            if status is None or status["metadata_leader"] is None:
                return False
            if {n["id"] for n in status["nodes"] if n["alive"]} != ids:
                return False
        return True

    def leaders(self, queues: list[str], timeout: float = 1.0) -> dict[str, str] | None:
        """{"metadata" | "queue/p": leader node id} when every node agrees on one running leader for the metadata
        group and each partition of `queues`; None otherwise."""
        running = {self.ids[i] for i in range(len(self)) if self.alive(i) and i not in self.paused}
        by_client = {node.client: node.node_id for node in self.layout.nodes}
        seen: dict[str, str] | None = None
        for i in range(len(self)):
            status = self.status(i, timeout)
            if status is None or status["metadata_leader"] not in running:
                return None
            view = {"metadata": status["metadata_leader"]}
            for queue in queues:
                description = self.call(i, "get_queue", {"name": queue}, timeout)
                if description is None:
                    return None
                for p in description["partitions"]:
                    leader = by_client.get(p.get("leader") or "")
                    if leader not in running:
                        return None
                    view[f"{queue}/{p['partition']}"] = leader
            if seen is not None and view != seen:
                return None
            seen = view
        return seen

    def logs(self, lines: int = 30) -> str:
        out = []
        for i, path in enumerate(self.log_paths):
            try:
                tail = path.read_text(errors="replace").splitlines()[-lines:]
            except OSError:
                tail = ["(no log)"]
            out.append(f"--- node{i + 1}:\n" + "\n".join(tail))
        return "\n".join(out)
