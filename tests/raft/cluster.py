"""Start / drive / stop a Raft cluster of node_proc.py processes on 127.0.0.1 free ports (tests and benchmarks).

Every process is started here and stopped by its own PID (Popen.kill / terminate), never by name.
"""

import json
import os
import select
import subprocess
import sys
import time
from pathlib import Path

from dmq_client.testing import free_ports

REPO = Path(__file__).resolve().parents[2]
NODE = Path(__file__).resolve().parent / "node_proc.py"


def free_port():
    return free_ports(1)[0]


class NodeProc:
    def __init__(self, addr, peers, data, args):
        self.addr, self.peers, self.data, self.args = addr, peers, data, list(args)
        self.proc = None
        self.start()

    def start(self):
        cmd = [sys.executable, str(NODE), "--self", self.addr, "--data", self.data] + self.args
        for p in self.peers:
            cmd += ["--peer", p]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1,
                                     cwd=str(REPO), env={**os.environ, "PYTHONPATH": str(REPO)})

    def call(self, op, wait=60, **fields):
        """Send one request and wait up to `wait` seconds for its reply."""
        req = dict(fields, op=op)
        if self.proc.poll() is not None:
            raise RuntimeError(f"node {self.addr} exited with {self.proc.returncode}")
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        r, _, _ = select.select([self.proc.stdout], [], [], wait)
        if not r:
            raise TimeoutError(f"node {self.addr}: no reply to {op} within {wait}s")
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"node {self.addr} closed its stdout")
        return json.loads(line)

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def kill9(self):
        if self.alive():
            self.proc.kill()  # SIGKILL to this PID
        self.proc.wait(timeout=10)

    def stop(self):
        if not self.alive():
            return
        try:
            self.call("quit", wait=10)
        except Exception:  # noqa: BLE001
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)


class Cluster:
    def __init__(self, data_dir, n=3, args=()):
        ports = free_ports(n)
        self.addrs = ["127.0.0.1:%d" % p for p in ports]
        self.nodes = [NodeProc(a, [x for x in self.addrs if x != a], os.path.join(str(data_dir), "n%d" % i), args)
                      for i, a in enumerate(self.addrs)]

    def wait_leader(self, timeout=20, exclude=()):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for nd in self.nodes:
                if nd.alive() and nd not in exclude:
                    try:
                        if nd.call("status", wait=5)["leader"]:
                            return nd
                    except (TimeoutError, RuntimeError):
                        pass
            time.sleep(0.05)
        raise TimeoutError("no leader elected")

    def wait_applied(self, count, nodes=None, timeout=30):
        deadline = time.monotonic() + timeout
        nodes = nodes or [nd for nd in self.nodes if nd.alive()]
        while time.monotonic() < deadline:
            if all(nd.call("status", wait=5)["n_applied"] >= count for nd in nodes):
                return True
            time.sleep(0.05)
        return False

    def stop(self):
        for nd in self.nodes:
            nd.stop()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
        for nd in self.nodes:
            if nd.alive():
                nd.kill9()
