"""Helpers for the RaftHost tests: in-process hosts and groups, and host_node_proc.py processes.

Every host started here is stopped by the test (``InProcessCluster.stop``); every process is stopped by its own PID.
"""

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from pysyncobj import SyncObjConf, replicated

from dmq_server.raft import pysyncobj_fixes as fx
from dmq_server.raft.host import RaftHost

from .cluster import NodeProc, free_ports

REPO = Path(__file__).resolve().parents[2]
HOST_NODE = Path(__file__).resolve().parent / "host_node_proc.py"
SECRET = b"test-cluster-secret-0123456789abcdef"


class Group(fx.SyncObj):
    def __init__(self, me, peers, transport, *, unbatched=False, journal=None):
        self.applied = []
        conf = SyncObjConf(autoTick=False, journalFile=journal, appendEntriesPeriod=0.05, raftMinTimeout=0.3,
                           raftMaxTimeout=0.45, connectionTimeout=3, appendEntriesUseBatch=not unbatched,
                           logCompactionMinEntries=10 ** 9, logCompactionMinTime=10 ** 9)
        super().__init__(me, peers, conf, transport=transport)

    @replicated
    def apply(self, x):
        self.applied.append(x)
        return x


def socket_count() -> int:
    n = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink("/proc/self/fd/" + fd).startswith("socket:"):
                n += 1
        except OSError:
            pass
    return n


class InProcessCluster:
    """n RaftHosts in this process, each hosting the same set of groups."""

    def __init__(self, n=3, groups=1, *, secret=SECRET, unbatched=True, host_kwargs=None):
        fx.install()
        self.addrs = ["127.0.0.1:%d" % p for p in free_ports(n)]
        self.hosts = []
        self.groups = {}  # gid -> [group on host 0, host 1, ...]
        self.unbatched = unbatched
        try:
            for a in self.addrs:
                self.hosts.append(RaftHost(a, secret, **(host_kwargs or {})).start())
            for i in range(groups):
                self.add_group("g%d" % i)
        except BaseException:
            self.stop()
            raise

    def add_group(self, gid, hosts=None):
        hosts = self.hosts if hosts is None else hosts
        gs = []
        for h in hosts:
            g = Group(h.address, [a for a in self.addrs if a != h.address], h.transport_for(gid),
                      unbatched=self.unbatched)
            h.add(g)
            gs.append(g)
        self.groups[gid] = gs
        return gs

    def groups_on(self, index):
        """The replicas of every group on host `index`."""
        return [gs[index] for gs in self.groups.values()]

    def leader(self, gid):
        for h, g in zip(self.hosts, self.groups[gid]):
            if h._running and h.call(g._isLeader):
                return g
        return None

    def wait_leaders(self, gids=None, timeout=30):
        gids = list(self.groups) if gids is None else gids
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            missing = [gid for gid in gids if self.leader(gid) is None]
            if not missing:
                return
            time.sleep(0.05)
        raise TimeoutError("no leader for %s" % missing[:10])

    def applied(self, gid):
        return [h.call(lambda g=g: list(g.applied)) for h, g in zip(self.hosts, self.groups[gid])]

    def wait_applied(self, gid, count, timeout=20):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(len(a) >= count for a in self.applied(gid)):
                return True
            time.sleep(0.02)
        return False

    def stop(self):
        for h in self.hosts:
            h.stop(destroy_groups=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


class HostNodeProc(NodeProc):
    """A host_node_proc.py process (same JSON-lines protocol as NodeProc)."""

    def start(self):
        cmd = [sys.executable, str(HOST_NODE), "--self", self.addr, "--data", self.data] + self.args
        for p in self.peers:
            cmd += ["--peer", p]
        env = {**os.environ, "PYTHONPATH": str(REPO), "DMQ_RAFT_SECRET": SECRET.decode()}
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1,
                                     cwd=str(REPO), env=env)


class ProcCluster:
    def __init__(self, data_dir, n=3, args=()):
        self.addrs = ["127.0.0.1:%d" % p for p in free_ports(n)]
        self.nodes = []
        try:
            for i, a in enumerate(self.addrs):
                self.nodes.append(HostNodeProc(a, [x for x in self.addrs if x != a],
                                               os.path.join(str(data_dir), "n%d" % i), args))
        except BaseException:
            self.close()
            raise

    def alive(self):
        return [nd for nd in self.nodes if nd.alive()]

    def leader_of(self, gid, nodes=None):
        for nd in nodes or self.alive():
            if nd.call("status", group=gid, wait=10)["leader"]:
                return nd
        return None

    def wait_leader(self, gid, timeout=30, nodes=None):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            nd = self.leader_of(gid, nodes)
            if nd is not None:
                return nd
            time.sleep(0.05)
        raise TimeoutError("no leader for %s" % gid)

    def close(self):
        for nd in self.nodes:
            nd.stop()
        for nd in self.nodes:
            if nd.alive():
                nd.kill9()


def raw_connect(addr, timeout=5.0) -> socket.socket:
    host, port = addr.rsplit(":", 1)
    s = socket.create_connection((host, int(port)), timeout=timeout)
    s.settimeout(timeout)
    return s


def closed_by_peer(sock, timeout=5.0) -> bool:
    """True when the peer closes ``sock`` within ``timeout`` (whatever it sent before is discarded)."""
    deadline = time.monotonic() + timeout
    sock.settimeout(0.2)
    while time.monotonic() < deadline:
        try:
            data = sock.recv(65536)
        except socket.timeout:
            continue
        except (ConnectionResetError, BrokenPipeError):
            return True
        if not data:
            return True
    return False
