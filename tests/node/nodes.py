"""A real dmq cluster for integration tests: three `dmq_server.daemon` processes started from the shipped
config/node1.toml..node3.toml, with every port moved to a free one and the data under the test's directory.

    cluster = Cluster(tmp_path)          # writes the configs; auth=True adds principals, anonymous = false
    cluster.start_all()                  # returns once every node answers and the metadata group has a leader
    cluster.connect(0)                   # a dmq_client Connection to node 0 (token: the admin's with auth)
    cluster.kill(0); cluster.start(0)    # SIGKILL by PID, start again on the same data
    cluster.stop(1)                      # SIGTERM; asserts a clean exit (status 0)
    cluster.close()                      # stops every process this cluster started, by PID

Every Cluster that is running is listed in ACTIVE, so a failing test can show the tail of each node's log
(tests/node/conftest.py adds it to the failure report).
"""

from __future__ import annotations

import atexit
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from dmq_client.connection import Connection
from dmq_client.errors import DmqError
from dmq_client.testing import free_ports

REPO = Path(__file__).resolve().parents[2]
SHIPPED = [REPO / "config" / f"node{i}.toml" for i in (1, 2, 3)]
READY_SECONDS = 20.0
STOP_SECONDS = 10.0
LOG_TAIL_LINES = 40

ADMIN_TOKEN = "admin-token-0123456789abcdef"
PRODUCER_TOKEN = "producer-token-0123456789abcdef"
CONSUMER_TOKEN = "consumer-token-0123456789abcdef"

AUTH_SECTION = f"""
[auth]
anonymous = false

[[auth.principals]]
name = "admin"
token = "{ADMIN_TOKEN}"
permissions = [{{ queues = "*", actions = ["admin", "send", "receive"] }}]

[[auth.principals]]
name = "producer"
token = "{PRODUCER_TOKEN}"
permissions = [{{ queues = "orders-*", actions = ["send"] }}]

[[auth.principals]]
name = "consumer"
token = "{CONSUMER_TOKEN}"
permissions = [{{ queues = "orders-*", actions = ["receive"] }}]
"""

ACTIVE: list["Cluster"] = []
_LOOPBACK_PORT = re.compile(r"127\.0\.0\.1:(\d+)")
_AUTH_TABLE = re.compile(r"^\[auth\]\s*$(.*?)(?=^\[(?!\[?auth\b)|\Z)", re.MULTILINE | re.DOTALL)


@atexit.register
def _close_all() -> None:
    """A last resort when the test process exits without running fixture teardown."""
    for cluster in list(ACTIVE):
        cluster.close()


def rewrite_configs(texts: list[str], *, auth: bool) -> tuple[list[str], dict[int, int]]:
    """The shipped configs with every 127.0.0.1 port mapped to a free one (the same mapping in every file) and,
    with `auth`, their [auth] table replaced by one with principals and anonymous = false."""
    old_ports = sorted({int(port) for text in texts for port in _LOOPBACK_PORT.findall(text)})
    mapping = dict(zip(old_ports, free_ports(len(old_ports))))
    out = []
    for text in texts:
        text = _LOOPBACK_PORT.sub(lambda m: f"127.0.0.1:{mapping[int(m.group(1))]}", text)
        if auth:
            text, found = _AUTH_TABLE.subn("", text)
            assert found <= 1, "a config with two [auth] tables"
            text = text.rstrip() + "\n" + AUTH_SECTION
        out.append(text)
    return out, mapping


def _table_value(text: str, key: str) -> str:
    match = re.search(rf'^{key}\s*=\s*"([^"]*)"', text, re.MULTILINE)
    assert match, f"no {key} in the config"
    return match.group(1)


def _client_addresses(text: str) -> dict[str, str]:
    """node id -> client address, from the [[cluster.nodes]] entries."""
    entries = re.findall(r'^\[\[cluster\.nodes\]\]\s*\nid\s*=\s*"([^"]+)"\s*\nraft\s*=\s*"[^"]+"\s*\n'
                         r'client\s*=\s*"([^"]+)"', text, re.MULTILINE)
    assert entries, "no [[cluster.nodes]] entries in the config"
    return dict(entries)


class Cluster:
    def __init__(self, root: Path, *, auth: bool = False) -> None:
        self.root = Path(root)
        self.auth = auth
        self.token = ADMIN_TOKEN if auth else None
        texts, self.port_mapping = rewrite_configs([p.read_text() for p in SHIPPED], auth=auth)
        self.config_paths: list[Path] = []
        self.data_dirs: list[Path] = []
        self.log_paths: list[Path] = []
        self.node_ids: list[str] = []
        self.metrics_addresses: list[str] = []
        for i, text in enumerate(texts):
            path = self.root / f"node{i + 1}.toml"
            path.write_text(text)
            self.config_paths.append(path)
            self.data_dirs.append(self.root / f"data{i + 1}")
            self.log_paths.append(self.root / f"node{i + 1}.log")
            self.node_ids.append(_table_value(text, "id"))
            self.metrics_addresses.append(_table_value(text, "metrics_address"))
        clients = _client_addresses(texts[0])
        self.client_addresses = [clients[node_id] for node_id in self.node_ids]
        self.procs: list[subprocess.Popen[bytes] | None] = [None] * len(texts)
        self._started: list[subprocess.Popen[bytes]] = []  # every process ever started, for close()

    def __len__(self) -> int:
        return len(self.procs)

    # ------------------------------------------------------------------ processes

    def start(self, i: int) -> None:
        assert self.procs[i] is None or self.procs[i].poll() is not None, f"{self.node_ids[i]} is running"
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        log = open(self.log_paths[i], "ab")
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "dmq_server.daemon", "--config", str(self.config_paths[i]),
                 "--data-dir", str(self.data_dirs[i])],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=str(self.root), env=env)
        finally:
            log.close()
        self.procs[i] = proc
        self._started.append(proc)
        if self not in ACTIVE:
            ACTIVE.append(self)

    def start_all(self) -> None:
        for i in range(len(self)):
            self.start(i)
        self.wait_ready()

    def alive(self, i: int) -> bool:
        proc = self.procs[i]
        return proc is not None and proc.poll() is None

    def kill(self, i: int) -> None:
        proc = self.procs[i]
        assert proc is not None and proc.poll() is None, f"{self.node_ids[i]} is not running"
        os.kill(proc.pid, signal.SIGKILL)  # its own PID: the process is ours and not yet reaped
        proc.wait(STOP_SECONDS)

    def stop(self, i: int, timeout: float = STOP_SECONDS) -> int:
        """SIGTERM node i and assert it exits with status 0 within `timeout` seconds."""
        proc = self.procs[i]
        assert proc is not None and proc.poll() is None, f"{self.node_ids[i]} is not running"
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{self.node_ids[i]} did not exit within {timeout} s of SIGTERM\n"
                                 f"{self.log_tail(i)}") from None
        assert code == 0, f"{self.node_ids[i]} exited with status {code} after SIGTERM\n{self.log_tail(i)}"
        return code

    def close(self) -> None:
        """Stop every process this cluster started: SIGTERM, then SIGKILL whatever has not exited."""
        for proc in self._started:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_SECONDS
        for proc in self._started:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self in ACTIVE:
            ACTIVE.remove(self)

    # ------------------------------------------------------------------ readiness

    def connect(self, i: int, token: Any = "default", **kwargs: Any) -> Connection:
        return Connection(self.client_addresses[i], self.token if token == "default" else token, **kwargs)

    def wait_ready(self, nodes: list[int] | None = None, timeout: float = READY_SECONDS) -> None:
        """Until every node in `nodes` (default: all) takes a handshake and knows the metadata leader, and sees
        every node of the cluster alive (heartbeats), so a queue created next is placed on all of them."""
        nodes = list(range(len(self))) if nodes is None else nodes
        deadline = time.monotonic() + timeout
        pending = set(nodes)
        last: dict[str, str] = {}
        while pending and time.monotonic() < deadline:
            for i in sorted(pending):
                if not self.alive(i):
                    raise AssertionError(f"{self.node_ids[i]} exited with status {self.procs[i].poll()} while "
                                         f"starting\n{self.logs()}")
                try:
                    with self.connect(i, connect_timeout=1.0) as conn:
                        status = conn.call("cluster_status", {}, timeout=2.0)
                except (DmqError, OSError) as exc:
                    last[self.node_ids[i]] = repr(exc)
                    continue
                alive = {n["id"] for n in status["nodes"] if n["alive"]}
                if status["metadata_leader"] is not None and alive >= set(self.node_ids):
                    pending.discard(i)
                else:
                    last[self.node_ids[i]] = f"metadata leader {status['metadata_leader']}, alive {sorted(alive)}"
            if pending:
                time.sleep(0.1)
        if pending:
            waiting = [self.node_ids[i] for i in sorted(pending)]
            raise AssertionError(f"nodes {waiting} not ready within {timeout} s: {last}\n{self.logs()}")

    # ------------------------------------------------------------------ logs

    def log_tail(self, i: int, lines: int = LOG_TAIL_LINES) -> str:
        try:
            text = self.log_paths[i].read_text(errors="replace")
        except OSError:
            return f"--- node {i + 1}: no log"
        tail = "\n".join(text.splitlines()[-lines:])
        return f"--- node {i + 1} ({self.node_ids[i]}), last {lines} log lines:\n{tail}"

    def logs(self, lines: int = LOG_TAIL_LINES) -> str:
        return "\n".join(self.log_tail(i, lines) for i in range(len(self)))
