"""One partition-group replica in its own process, driven by JSON lines on stdin/stdout (fault tests, benchmarks).

    python -m dmq_server.raft.node_process --self HOST:PORT --peer HOST:PORT --peer HOST:PORT --data DIR \
        [--bind HOST:PORT] [--heartbeat S] [--election-min S] [--election-max S] [--tick S] \
        [--connection-timeout S] [--snapshot-entries N] [--snapshot-seconds S] [--group-id ID]

``--self`` is the replica's Raft identity (what its peers are configured with); ``--bind`` is where it listens,
by default the same address. They differ when a fault-injecting proxy sits in front of the replica.

Requests: one JSON object per line; every request gets exactly one JSON reply line with the request's ``id``
echoed (``{"ok": false, "error": ...}`` when the request failed). Bytes in results are shown as UTF-8 strings
(invalid bytes backslash-escaped); in a ``submit``, string bodies of an ``enqueue`` are encoded as UTF-8.

    {"op": "status"}                       is_leader, leader, term, commit, applied, log, store stats
    {"op": "submit", "command": {...}, "timeout": T}
                                           replicate one store command (``now`` is stamped when absent)
    {"op": "latency", "n": N, "msgs": M, "size": B, "timeout": T}
                                           N sequential synchronous enqueues; latencies in seconds
    {"op": "load", "cmds": N, "msgs": M, "size": B, "window": W, "timeout": T}
                                           N enqueues of M messages of B random bytes, W in flight
    {"op": "writer_start", "tag": S, "k": K, "window": W, "cmd_timeout": T, "ack_file": PATH}
                                           a thread that, whenever this replica leads, keeps W enqueues of K
                                           messages in flight; message i of command s has the body "S:s:i".
                                           Every acknowledged command's s is appended to PATH (one line, written
                                           before the callback returns, so a kill -9 loses none) and kept in memory
    {"op": "writer_stop"}                  stop submitting, wait (bounded) for the commands in flight
    {"op": "writer_report", "since": T}   counters, acknowledged sequence numbers and, when ``since`` (a
                                           time.time() value) is given, the time of the first ack at or after it
    {"op": "compact"}                      force a log compaction (a snapshot) at the next tick
    {"op": "dump", "bodies": true}         applied index, a digest of every key/value of the store, the bodies
    {"op": "quit"}                         stop the replica cleanly and exit

Replies are written to the original stdout only; anything else that prints goes to stderr.
"""

from __future__ import annotations

import argparse
import faulthandler
import hashlib
import json
import logging
import os
import select
import signal
import secrets
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from typing import Any

from .group import GroupSpec, GroupTimings, PartitionGroup, RaftUnavailable
from .host import RaftHost

log = logging.getLogger(__name__)


# ====================================================================================================== the replica

class HostedGroup(PartitionGroup):
    def __init__(self, spec: GroupSpec, host: RaftHost | None) -> None:
        self.snapshot_installs = 0  # snapshots that replaced the store (a follower catching up through one)
        super().__init__(spec, host=host)

    def _deserialize(self, file_name: str) -> tuple[Any, Any, Any]:
        before = self.store
        raft_data = super()._deserialize(file_name)
        if self.store is not before:
            self.snapshot_installs += 1
        return raft_data


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    if isinstance(value, dict):
        return {str(_jsonable(k)): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def _command_from_json(command: dict[str, Any]) -> dict[str, Any]:
    command = dict(command)
    command.setdefault("now", _now_ms())
    if command.get("op") == "enqueue" and isinstance(command.get("messages"), list):
        command["messages"] = [[m[0].encode() if isinstance(m[0], str) else m[0], *m[1:]]
                               if isinstance(m, list) and m else m for m in command["messages"]]
    return command


def _now_ms() -> int:
    return int(time.time() * 1000)


def _acknowledged(outcome: dict[str, Any]) -> bool:
    """An enqueue result that stored (or found as duplicates) every message of the command."""
    result = outcome.get("result")
    return isinstance(result, list) and all(isinstance(r, dict) and "id" in r for r in result)


def _percentile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Writer:
    """Continuous acknowledged writes, submitted only while this replica is the leader."""

    def __init__(self, group: HostedGroup, tag: str, k: int, window: int, cmd_timeout: float,
                 ack_file: str | None) -> None:
        self.group, self.tag, self.k, self.window, self.cmd_timeout = group, tag, k, window, cmd_timeout
        self._ack_fd = os.open(ack_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644) if ack_file else None
        self._cond = threading.Condition()
        self._pending: dict[int, float] = {}
        self._stop = threading.Event()
        self.seq = 0
        self.acked: list[int] = []
        self.ack_times: list[float] = []
        self.failed = 0
        self.timed_out = 0
        self.refused = 0  # submits refused at once (not leader)
        self.errors: dict[str, int] = {}
        self._thread = threading.Thread(target=self._run, name="writer", daemon=True)
        self._thread.start()

    def _command(self, seq: int) -> dict[str, Any]:
        return {"op": "enqueue", "now": _now_ms(),
                "messages": [[f"{self.tag}:{seq}:{i}".encode(), None, None, None, None] for i in range(self.k)]}

    def _callback(self, seq: int):  # type: ignore[no-untyped-def]
        def done(outcome: dict[str, Any]) -> None:
            ok = _acknowledged(outcome)
            if ok and self._ack_fd is not None:
                os.write(self._ack_fd, b"%d\n" % seq)
            with self._cond:
                self._pending.pop(seq, None)
                if ok:
                    self.acked.append(seq)
                    self.ack_times.append(time.time())
                else:
                    self.failed += 1
                    code = str(outcome.get("error") or outcome.get("result"))[:60]
                    self.errors[code] = self.errors.get(code, 0) + 1
                self._cond.notify_all()
        return done

    def _run(self) -> None:
        while not self._stop.is_set():
            with self._cond:
                now = time.monotonic()
                for seq, started in list(self._pending.items()):
                    if now - started > self.cmd_timeout:
                        del self._pending[seq]  # outcome unknown; a late success still counts as acknowledged
                        self.timed_out += 1
                if len(self._pending) >= self.window:
                    self._cond.wait(0.005)
                    continue
            if not self.group.is_leader():
                time.sleep(0.002)
                continue
            with self._cond:
                self.seq += 1
                seq = self.seq
                self._pending[seq] = time.monotonic()
            try:
                self.group.submit(self._command(seq), self._callback(seq))
            except RaftUnavailable:
                with self._cond:
                    self._pending.pop(seq, None)
                    self.refused += 1
                time.sleep(0.002)

    def stop(self, wait: float = 10.0) -> None:
        self._stop.set()
        self._thread.join(wait)
        deadline = time.monotonic() + wait
        with self._cond:
            while self._pending and time.monotonic() < deadline:
                self._cond.wait(0.05)

    def report(self, since: float | None) -> dict[str, Any]:
        with self._cond:
            first = None
            if since is not None:
                first = next((t for t in self.ack_times if t >= since), None)
            return {"tag": self.tag, "k": self.k, "submitted": self.seq, "acked": list(self.acked),
                    "failed": self.failed, "timed_out": self.timed_out, "refused": self.refused,
                    "errors": dict(self.errors), "in_flight": len(self._pending), "first_ack_since": first,
                    "last_ack": self.ack_times[-1] if self.ack_times else None}


class Server:
    def __init__(self, group: HostedGroup) -> None:
        self.group = group
        self.writer: Writer | None = None

    # -------------------------------------------------------------- requests

    def status(self, req: dict[str, Any]) -> dict[str, Any]:
        g = self.group
        st = g.getStatus()
        raft_log = g._SyncObj__raftLog  # type: ignore[attr-defined]
        try:
            first = raft_log[0][1] if len(raft_log) else None
            last = raft_log[-1][1] if len(raft_log) else None
        except IndexError:  # the tick thread changed the log between len() and the read
            first = last = None
        return {"is_leader": g.is_leader(), "leader": g.leader_address(), "term": st["raft_term"],
                "commit": st["commit_idx"], "applied": st["last_applied"], "log_len": st["log_len"],
                "log_first": first, "log_last": last, "has_quorum": st["has_quorum"],
                "store": g.query(lambda s: s.stats(_now_ms())), "snapshot_installs": g.snapshot_installs,
                "truncations": getattr(g, "_dmq_truncations", None), "pid": os.getpid(),
                "raft": {k: str(v) if not isinstance(v, (int, float, str, bool, type(None))) else v
                         for k, v in st.items()} if req.get("full") else None}

    def submit(self, req: dict[str, Any]) -> dict[str, Any]:
        try:
            outcome = self.group.submit_sync(_command_from_json(req["command"]), timeout=req.get("timeout", 10.0))
        except RaftUnavailable as error:
            return {"outcome": {"error": error.code, "message": str(error), "leader": error.leader}}
        return {"outcome": _jsonable(outcome)}

    def latency(self, req: dict[str, Any]) -> dict[str, Any]:
        n, msgs, size, timeout = req.get("n", 1000), req.get("msgs", 1), req.get("size", 100), req.get("timeout", 10)
        latencies: list[float] = []
        errors: dict[str, int] = {}
        for _ in range(n):
            command = {"op": "enqueue", "now": _now_ms(),
                       "messages": [[os.urandom(size), None, None, None, None] for _ in range(msgs)]}
            started = time.perf_counter()
            try:
                outcome = self.group.submit_sync(command, timeout=timeout)
            except RaftUnavailable as error:
                outcome = {"error": error.code}
            if _acknowledged(outcome):
                latencies.append(time.perf_counter() - started)
            else:
                code = str(outcome.get("error"))
                errors[code] = errors.get(code, 0) + 1
        return {"latencies": latencies, "errors": errors, "p50": _percentile(latencies, 0.5),
                "p99": _percentile(latencies, 0.99)}

    def load(self, req: dict[str, Any]) -> dict[str, Any]:
        n, msgs, size = req.get("cmds", 1000), req.get("msgs", 100), req.get("size", 100)
        window, timeout = req.get("window", 100), req.get("timeout", 60.0)
        # Distinct random bodies (zlib in the transport must not find repeats within a batch of commands).
        pool = [[[os.urandom(size), None, None, None, None] for _ in range(msgs)]
                for _ in range(min(n, max(window * 2, 64)))]
        slots = threading.Semaphore(window)
        lock = threading.Lock()
        finished = threading.Event()
        state = {"acked": 0, "failed": 0, "outstanding": 0, "issued": 0}
        latencies: list[float] = []
        errors: dict[str, int] = {}

        def callback(started: float):  # type: ignore[no-untyped-def]
            def done(outcome: dict[str, Any]) -> None:
                with lock:
                    if _acknowledged(outcome):
                        state["acked"] += 1
                        latencies.append(time.perf_counter() - started)
                    else:
                        state["failed"] += 1
                        code = str(outcome.get("error") or outcome.get("result"))[:60]
                        errors[code] = errors.get(code, 0) + 1
                    state["outstanding"] -= 1
                    if state["outstanding"] == 0 and state["issued"] == n:
                        finished.set()
                slots.release()
            return done

        deadline = time.monotonic() + timeout
        started_all = time.perf_counter()
        for i in range(n):
            if not slots.acquire(timeout=max(0.0, deadline - time.monotonic())):
                break
            with lock:
                state["outstanding"] += 1
                state["issued"] += 1
            try:
                self.group.submit({"op": "enqueue", "now": _now_ms(), "messages": pool[i % len(pool)]},
                                  callback(time.perf_counter()))
            except RaftUnavailable as error:
                with lock:
                    state["outstanding"] -= 1
                    state["failed"] += 1
                    errors[error.code] = errors.get(error.code, 0) + 1
                slots.release()
                time.sleep(0.01)
        with lock:
            if state["outstanding"] == 0:
                finished.set()
        finished.wait(max(0.0, deadline - time.monotonic()))
        elapsed = time.perf_counter() - started_all
        with lock:
            return {"elapsed": elapsed, "acked": state["acked"], "failed": state["failed"],
                    "outstanding": state["outstanding"], "errors": dict(errors),
                    "msgs_per_s": state["acked"] * msgs / elapsed if elapsed > 0 else None,
                    "lat_p50": _percentile(latencies, 0.5), "lat_p99": _percentile(latencies, 0.99)}

    def writer_start(self, req: dict[str, Any]) -> dict[str, Any]:
        if self.writer is not None:
            self.writer.stop()
        self.writer = Writer(self.group, req["tag"], req.get("k", 10), req.get("window", 4),
                             req.get("cmd_timeout", 5.0), req.get("ack_file"))
        return {}

    def writer_stop(self, req: dict[str, Any]) -> dict[str, Any]:
        if self.writer is not None:
            self.writer.stop(req.get("wait", 10.0))
            return self.writer.report(None)
        return {}

    def writer_report(self, req: dict[str, Any]) -> dict[str, Any]:
        return self.writer.report(req.get("since")) if self.writer is not None else {}

    def compact(self, req: dict[str, Any]) -> dict[str, Any]:
        self.group.forceLogCompaction()
        return {}

    def dump(self, req: dict[str, Any]) -> dict[str, Any]:
        with_bodies = req.get("bodies", True)

        def read(store: Any) -> dict[str, Any]:
            digest = hashlib.sha256()
            keys = 0
            # Every key/value of the partition's RocksDB: replicas at the same applied index must be identical.
            for key, value in store._database().items():
                digest.update(len(key).to_bytes(4, "big") + key + len(value).to_bytes(4, "big") + value)
                keys += 1
            messages = store.peek(1 << 62)
            return {"applied_index": store.applied_index, "digest": digest.hexdigest(), "keys": keys,
                    "count": len(messages), "next_id": store.stats(0)["next_id"],
                    "bodies": [m["body"].decode("utf-8", "backslashreplace") for m in messages]
                    if with_bodies else None}

        return self.group.query(read)

    # -------------------------------------------------------------- loop

    def serve(self, requests: Iterable[str], out: Any) -> None:
        handlers = {"status": self.status, "submit": self.submit, "latency": self.latency, "load": self.load,
                    "writer_start": self.writer_start, "writer_stop": self.writer_stop,
                    "writer_report": self.writer_report, "compact": self.compact, "dump": self.dump}
        for line in requests:
            if not line.strip():
                continue
            req: dict[str, Any] = {}
            try:
                req = json.loads(line)
                op = req.get("op")
                if op == "quit":
                    if self.writer is not None:
                        self.writer.stop(2.0)
                    self.group.close()
                    out.write(json.dumps({"id": req.get("id"), "ok": True}) + "\n")
                    out.flush()
                    return
                handler = handlers.get(op)
                if handler is None:
                    raise ValueError(f"unknown op {op!r}")
                reply = {"id": req.get("id"), "ok": True, **handler(req)}
            except Exception as error:  # noqa: BLE001 - every request gets a reply
                log.exception("request failed: %s", line.strip()[:200])
                reply = {"id": req.get("id"), "ok": False, "error": f"{type(error).__name__}: {error}"}
            out.write(json.dumps(reply) + "\n")
            out.flush()
        # stdin closed: the controller is gone
        if self.writer is not None:
            self.writer.stop(2.0)
        self.group.close()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m dmq_server.raft.node_process")
    parser.add_argument("--self", dest="self_address", required=True)
    parser.add_argument("--peer", action="append", default=[])
    parser.add_argument("--data", required=True)
    parser.add_argument("--bind")
    parser.add_argument("--group-id", default="q/0")
    defaults = GroupTimings()
    parser.add_argument("--heartbeat", type=float, default=defaults.heartbeat)
    parser.add_argument("--election-min", type=float, default=defaults.election_min)
    parser.add_argument("--election-max", type=float, default=defaults.election_max)
    parser.add_argument("--tick", type=float, default=defaults.tick)
    parser.add_argument("--connection-timeout", type=float, default=defaults.connection_timeout)
    parser.add_argument("--snapshot-entries", type=int, default=defaults.snapshot_min_entries)
    parser.add_argument("--snapshot-seconds", type=int, default=defaults.snapshot_min_seconds)
    parser.add_argument("--log-level", default="INFO")
    parser.add_argument("--host", action="store_true",
                        help="run the group on a RaftHost (the node's shared, authenticated transport; the cluster "
                             "secret comes from the DMQ_CLUSTER_SECRET environment variable)")
    args = parser.parse_args(argv)

    # Replies go to the original stdout; anything else printing to fd 1 lands on stderr.
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(process)d %(name)s %(levelname)s %(message)s")
    logging.getLogger("dmq_server").setLevel(args.log_level)
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # `kill -USR1 PID`: every thread's stack to stderr

    timings = GroupTimings(heartbeat=args.heartbeat, election_min=args.election_min, election_max=args.election_max,
                           connection_timeout=args.connection_timeout, tick=args.tick,
                           snapshot_min_entries=args.snapshot_entries, snapshot_min_seconds=args.snapshot_seconds)
    spec = GroupSpec(args.group_id, args.self_address, tuple(args.peer), args.data, timings,
                     bind_address=args.bind)
    host = None
    if args.host:
        host = RaftHost(args.self_address, os.environb[b"DMQ_CLUSTER_SECRET"], bind_address=args.bind).start()
    group = HostedGroup(spec, host)
    try:
        Server(group).serve(sys.stdin, out)
    finally:
        if host is not None:
            host.stop()
    out.close()


# ====================================================================================================== controlling

def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """n distinct ports that were free a moment ago (all bound at once, then released)."""
    sockets: list[socket.socket] = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind((host, 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


class NodeError(RuntimeError):
    pass


class NodeProcess:
    """Starts one replica process and talks to it. Only this object's own PID is ever signalled."""

    def __init__(self, self_address: str, peers: Sequence[str], data_dir: str, *, bind: str | None = None,
                 options: Sequence[str] = (), log_path: str | None = None, secret: str | None = None) -> None:
        self.address, self.peers, self.data_dir, self.bind = self_address, list(peers), data_dir, bind
        self.options = list(options)
        self.secret = secret or secrets.token_hex(32)  # used with --host
        self.log_path = log_path or os.path.join(os.path.dirname(os.path.abspath(data_dir)),
                                                 os.path.basename(data_dir) + ".log")
        self.proc: subprocess.Popen[bytes] | None = None
        self._buffer = b""
        self._next_id = 0
        self.incarnation = 0

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def start(self) -> None:
        assert not self.alive(), "already running"
        cmd = [sys.executable, "-m", "dmq_server.raft.node_process", "--self", self.address, "--data", self.data_dir]
        for peer in self.peers:
            cmd += ["--peer", peer]
        if self.bind:
            cmd += ["--bind", self.bind]
        cmd += self.options
        os.makedirs(os.path.dirname(os.path.abspath(self.log_path)), exist_ok=True)
        # The child imports dmq_server from where this process did, installed or not.
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])),
               "DMQ_CLUSTER_SECRET": self.secret}
        with open(self.log_path, "ab") as log_file:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log_file,
                                         env=env)
        self._buffer = b""
        self.incarnation += 1

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def call(self, op: str, wait: float = 30.0, **fields: Any) -> dict[str, Any]:
        """Send one request; wait up to `wait` s for its reply. Raises NodeError when the request failed."""
        if not self.alive():
            raise NodeError(f"node {self.address} is not running")
        assert self.proc is not None and self.proc.stdin is not None and self.proc.stdout is not None
        self._next_id += 1
        ident = self._next_id
        try:
            self.proc.stdin.write((json.dumps({**fields, "op": op, "id": ident}) + "\n").encode())
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError) as error:
            raise NodeError(f"node {self.address}: {error}") from error
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + wait
        while True:
            while b"\n" in self._buffer:
                line, self._buffer = self._buffer.split(b"\n", 1)
                reply = json.loads(line)
                if reply.get("id") != ident:
                    continue  # the late reply of a request that timed out
                if not reply.get("ok"):
                    raise NodeError(f"node {self.address}: {op}: {reply.get('error')}")
                return reply
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"node {self.address}: no reply to {op} within {wait} s")
            ready, _, _ = select.select([fd], [], [], min(remaining, 0.5))
            if ready:
                chunk = os.read(fd, 1 << 20)
                if not chunk:
                    raise NodeError(f"node {self.address} closed its stdout (exit {self.proc.poll()})")
                self._buffer += chunk

    def kill9(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self._reap()

    def stop(self, wait: float = 15.0) -> None:
        if self.alive():
            try:
                self.call("quit", wait=wait)
            except (NodeError, TimeoutError):
                pass
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.proc.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                self.proc.send_signal(signal.SIGKILL)
        self._reap()

    def _reap(self) -> None:
        if self.proc is None:
            return
        try:
            self.proc.wait(timeout=15)
        finally:
            for stream in (self.proc.stdin, self.proc.stdout):
                try:
                    if stream is not None:
                        stream.close()
                except OSError:
                    pass


class LocalCluster:
    """Three (or n) replica processes on free 127.0.0.1 ports under `root`. With `fronts`, each replica's Raft
    identity is fronts[i] (e.g. a proxy listening there) and it binds a separate free port."""

    def __init__(self, root: str, n: int = 3, options: Sequence[str] = (), fronts: Sequence[str] | None = None
                 ) -> None:
        self.root = root
        ports = free_ports(n if fronts is None else n)
        binds = [f"127.0.0.1:{p}" for p in ports]
        self.addresses = list(fronts) if fronts is not None else binds
        self.binds = binds
        secret = secrets.token_hex(32)  # one cluster secret for the replicas (used with --host)
        self.nodes = [NodeProcess(self.addresses[i], [a for j, a in enumerate(self.addresses) if j != i],
                                  os.path.join(root, f"n{i}"), bind=binds[i], options=options,
                                  log_path=os.path.join(root, f"n{i}.log"), secret=secret) for i in range(n)]

    def start(self) -> "LocalCluster":
        for node in self.nodes:
            node.start()
        return self

    def __enter__(self) -> "LocalCluster":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def stop(self) -> None:
        errors = []
        for node in self.nodes:
            try:
                node.stop(wait=10)
            except Exception as error:  # noqa: BLE001 - stop the others anyway
                errors.append(error)
        for node in self.nodes:
            if node.alive():
                node.kill9()
        if errors:
            raise errors[0]

    def node_at(self, address: str | None) -> NodeProcess | None:
        return next((n for n in self.nodes if n.address == address), None)

    def statuses(self, nodes: Iterable[NodeProcess] | None = None) -> dict[int, dict[str, Any]]:
        result = {}
        for i, node in enumerate(self.nodes):
            if (nodes is None or node in nodes) and node.alive():
                try:
                    result[i] = node.call("status", wait=10)
                except (NodeError, TimeoutError):
                    pass
        return result

    def wait_leader(self, timeout: float = 20.0, among: Iterable[NodeProcess] | None = None) -> NodeProcess:
        """The single live node that says it leads and that every other live node of `among` follows."""
        candidates = list(among) if among is not None else list(self.nodes)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            statuses = self.statuses(candidates)
            leaders = [i for i, s in statuses.items() if s["is_leader"]]
            if len(leaders) == 1 and statuses[leaders[0]]["has_quorum"]:
                return self.nodes[leaders[0]]
            time.sleep(0.05)
        raise TimeoutError(f"no leader within {timeout} s")

    def wait_converged(self, nodes: Sequence[NodeProcess] | None = None, timeout: float = 60.0, *,
                       settled: bool = False) -> int:
        """Wait until every node (default: the live ones) applied the leader's commit index; return it.
        `settled`: also until the leader has committed its whole log and every node applied exactly that, so
        nothing is in flight (a new leader's no-op may still be uncommitted when it first reports a quorum) and
        the replicas' stores can be compared. Only once nothing submits any more."""
        nodes = list(nodes) if nodes is not None else [n for n in self.nodes if n.alive()]
        deadline = time.monotonic() + timeout
        while True:
            leader = self.wait_leader(max(1.0, deadline - time.monotonic()))
            status = leader.call("status")
            target = status["commit"]
            statuses = [n.call("status") for n in nodes]
            if settled:
                done = status["log_last"] == target and all(s["applied"] == target for s in statuses)
            else:
                done = all(s["applied"] >= target for s in statuses)
            if done:
                return target
            if time.monotonic() > deadline:
                raise TimeoutError(f"not converged on {target} within {timeout} s: "
                                   f"{[s['applied'] for s in statuses]}")
            time.sleep(0.05)


if __name__ == "__main__":
    main()
