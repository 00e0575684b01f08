"""Real dmq nodes on 127.0.0.1 for tests: start a cluster of `dmq_server.daemon` processes, break it, stop it.

    from dmq_client.connection import Connection
    from dmq_client.testing import cluster

    with cluster(3, raft={"election_min_ms": 200, "election_max_ms": 400}, limits={"max_queues": 10}) as dmq:
        with Connection(dmq.addresses[0]) as node:
            node.call("create_queue", {"name": "orders", "attributes": {}})
            node.call("send", {"queue": "orders", "messages": [{"body": b"hello"}]})
        dmq.kill(0)          # SIGKILL node 0 (by its PID); dmq.start(0) restarts it on the same data
        dmq.start(0)
        dmq.wait_ready()     # every node answers, knows the metadata leader and sees all nodes alive
    # here every process the cluster started has exited and its temporary directory is gone

`cluster()` writes one TOML config per node (free ports on 127.0.0.1, a random cluster secret, the metadata
nodes config.py would choose), starts the nodes and returns once they are ready. Each keyword other than its
own is a config table (see TABLES and dmq_server/config.py) whose dict is merged into that table of every
node's config, e.g. ``auth={"anonymous": False, "principals": [{"name": "admin", "token": "...",
"permissions": [{"queues": "*", "actions": ["admin", "send", "receive"]}]}]}``; an unknown table name raises
TypeError. With anonymous access off, the first principal's token is the cluster's default `token`.

`LocalCluster` is the process manager underneath; it also runs ready-made config texts
(``LocalCluster(texts, root)``, as tests/node does with the shipped config files). Every LocalCluster with
processes running is listed in ACTIVE, so a test runner can show node logs when a test fails; an atexit hook
stops whatever is still running when the interpreter exits. Processes are only ever signalled through their
own Popen handle (their PID), never by name. The pytest plugin dmq_client.pytest_plugin offers the same as the
`dmq_cluster` fixture.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import math
import os
import re
import secrets
import shutil
import signal
import site
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from .connection import Connection
from .errors import DmqError
from .mappings import deep_merge

__all__ = ["ACTIVE", "TABLES", "ClusterError", "LocalCluster", "add_log_sections", "cluster", "free_ports",
           "node_configs", "to_toml"]

READY_SECONDS = 30.0  # a 3-node cluster on a loaded 2-core machine needs a few seconds; leave a wide margin
STOP_SECONDS = 10.0  # SIGTERM hands off leadership first, which takes well under this
LOG_TAIL_LINES = 40
POLL_SECONDS = 0.1
# The tables of a node config (dmq_server/config.py; a test checks they match). dmq_client never imports
# dmq_server, so they are listed here.
TABLES = ("node", "cluster", "raft", "auth", "tls", "limits")
# Keys cluster() sets for every node itself: each node needs its own, and the bookkeeping relies on them.
_RESERVED = {"node": ("id", "data_dir", "client_address", "raft_address"), "cluster": ("nodes",)}
_LOG_TAIL_BYTES = 256 * 1024  # enough for any sensible tail; a node's log may grow large
_MAX_READY_ROUNDS = 100_000  # the deadline ends wait_ready first; this only bounds the loop's count too

ACTIVE: list["LocalCluster"] = []


class ClusterError(AssertionError):
    """A node did not start, become ready or stop as asked. An AssertionError, so a test that hits it is
    reported as a failure (not an error in the test's own code); the message carries the nodes' log tails."""


def free_ports(count: int) -> list[int]:
    """`count` distinct ports free right now on 127.0.0.1 (bound together, so no duplicates)."""
    sockets, ports = [], []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
            ports.append(sock.getsockname()[1])
    finally:
        for sock in sockets:
            sock.close()
    return ports


# ---------------------------------------------------------------------------------------------- TOML


_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}


def _key(key: Any) -> str:
    if not isinstance(key, str):
        raise TypeError(f"TOML keys are strings, got {key!r}")
    return key if _BARE_KEY.fullmatch(key) else _string(key)


def _string(text: str) -> str:
    out = []
    for char in text:
        if char in _ESCAPES:
            out.append(_ESCAPES[char])
        elif ord(char) < 0x20 or ord(char) == 0x7F:  # TOML allows no raw control characters in strings
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def _value(value: Any) -> str:
    if isinstance(value, bool):  # before int: bool is an int subclass
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)  # repr always has a "." or an exponent, so it stays a float
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_value(item) for item in value) + "]"
    if isinstance(value, Mapping):
        if not value:
            return "{}"
        return "{ " + ", ".join(f"{_key(k)} = {_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"cannot write {type(value).__name__} {value!r} as TOML: use str, int, float, bool, list "
                    f"or dict")


def _is_table_array(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and bool(value) and all(isinstance(v, Mapping) for v in value)


def _table(path: list[str], table: Mapping[str, Any], lines: list[str]) -> None:
    # Plain keys first: after a [header] every key belongs to that header's table until the next one.
    for key, value in table.items():
        if not isinstance(value, Mapping) and not _is_table_array(value):
            lines.append(f"{_key(key)} = {_value(value)}")
    for key, value in table.items():
        sub = path + [_key(key)]
        if isinstance(value, Mapping):
            lines.extend(["", f"[{'.'.join(sub)}]"])
            _table(sub, value, lines)
        elif _is_table_array(value):
            for entry in value:
                lines.extend(["", f"[[{'.'.join(sub)}]]"])
                _table(sub, entry, lines)


def to_toml(doc: Mapping[str, Any]) -> str:
    """TOML text for a dict of str, int, float, bool, lists and dicts (a list of dicts becomes an array of
    tables); tomllib.loads(to_toml(doc)) == doc for any such doc with string keys."""
    lines: list[str] = []
    _table([], doc, lines)
    return "\n".join(lines).lstrip("\n") + "\n"


# ---------------------------------------------------------------------------------------------- processes


def _child_env(extra: Mapping[str, str] | None) -> dict[str, str]:
    """os.environ for a node, with PYTHONPATH made absolute (nodes run in the cluster's root directory) and
    led by the directory this process imports dmq_server from when that is a source tree, so the nodes run
    the same server code as the caller."""
    env = {**os.environ, **(extra or {})}
    paths = [os.path.abspath(p) for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    spec = importlib.util.find_spec("dmq_server")  # finds without importing it
    if spec is not None and spec.submodule_search_locations:
        source = os.path.dirname(os.path.abspath(list(spec.submodule_search_locations)[0]))
        installed = {os.path.abspath(p) for p in [*site.getsitepackages(), site.getusersitepackages()]}
        if source not in installed and source not in paths:  # an installed dmq_server is found anyway
            paths.insert(0, source)
    if paths:
        env["PYTHONPATH"] = os.pathsep.join(paths)
    return env


def _client_address(doc: dict[str, Any]) -> str:
    node = doc["node"]
    if "cluster" in doc:
        entries = [e for e in doc["cluster"].get("nodes", ()) if e.get("id") == node["id"]]
        if not entries:
            raise ValueError(f"config of {node['id']!r} has no [[cluster.nodes]] entry for it")
        return str(entries[0]["client"])
    return str(node.get("client_address", "127.0.0.1:7400"))  # config.py's default for a lone node


class LocalCluster:
    """Node processes run from config texts, one per node, under `root`: node<i>.toml, data<i>/, node<i>.log
    (i from 1). Nodes are numbered from 0 in every method. `data_dirs[i]` is passed as --data-dir on each
    start, so a test may point a node at another directory before starting it."""

    def __init__(self, configs: Sequence[str], root: str | os.PathLike[str], *, token: str | None = None,
                 client_tls: ssl.SSLContext | None = None, env: Mapping[str, str] | None = None) -> None:
        if not configs:
            raise ValueError("a cluster needs at least one node config")
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.token = token  # the default token of connect() and wait_ready()
        self.client_tls = client_tls
        self.env = dict(env or {})
        self.config_paths: list[Path] = []
        self.data_dirs: list[Path] = []
        self.log_paths: list[Path] = []
        self.node_ids: list[str] = []
        self.addresses: list[str] = []
        self.metrics_addresses: list[str | None] = []
        for i, text in enumerate(configs):
            doc = tomllib.loads(text)
            path = self.root / f"node{i + 1}.toml"
            path.write_text(text)
            self.config_paths.append(path)
            self.data_dirs.append(self.root / f"data{i + 1}")
            self.log_paths.append(self.root / f"node{i + 1}.log")
            self.node_ids.append(str(doc["node"]["id"]))
            self.addresses.append(_client_address(doc))
            metrics = doc["node"].get("metrics_address", "127.0.0.1:9400")  # config.py's default
            self.metrics_addresses.append(str(metrics) or None)
        self.procs: list[subprocess.Popen[bytes] | None] = [None] * len(configs)
        self._paused: set[int] = set()
        self._started: list[subprocess.Popen[bytes]] = []  # every process ever started, for close()

    def __len__(self) -> int:
        return len(self.procs)

    def __repr__(self) -> str:
        return f"<LocalCluster {len(self)} nodes at {self.root}>"

    @property
    def client_addresses(self) -> list[str]:
        return self.addresses

    # ---------------------------------------------------------------- processes

    def _running(self, i: int) -> subprocess.Popen[bytes]:
        proc = self.procs[i]
        if proc is None or proc.poll() is not None:
            raise ClusterError(f"{self.node_ids[i]} (node {i}) is not running")
        return proc

    def start(self, i: int) -> None:
        """Start node i (again) on its data directory; returns at once (see wait_ready)."""
        if self.alive(i):
            raise ClusterError(f"{self.node_ids[i]} (node {i}) is already running")
        self._paused.discard(i)
        with open(self.log_paths[i], "ab") as log:  # append: a restarted node's log follows its earlier runs
            proc = subprocess.Popen(
                [sys.executable, "-m", "dmq_server.daemon", "--config", str(self.config_paths[i]),
                 "--data-dir", str(self.data_dirs[i])],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=str(self.root),
                env=_child_env(self.env))
        self.procs[i] = proc
        self._started.append(proc)
        if self not in ACTIVE:
            ACTIVE.append(self)

    def start_all(self, timeout: float = READY_SECONDS) -> None:
        """Start every node that is not running and wait until all are ready."""
        for i in range(len(self)):
            if not self.alive(i):
                self.start(i)
        self.wait_ready(timeout=timeout)

    def pid(self, i: int) -> int:
        """The PID of node i's latest process (which may have exited)."""
        proc = self.procs[i]
        if proc is None:
            raise ClusterError(f"{self.node_ids[i]} (node {i}) was never started")
        return proc.pid

    def alive(self, i: int) -> bool:
        """Whether node i's process is running (a paused one is)."""
        proc = self.procs[i]
        return proc is not None and proc.poll() is None

    def kill(self, i: int) -> None:
        """SIGKILL node i and reap it: a crash, nothing flushed or handed off."""
        proc = self._running(i)
        proc.kill()  # Popen signals its own, not yet reaped, PID: it cannot hit a recycled one
        self._paused.discard(i)
        self._reap(i, proc, STOP_SECONDS)

    def stop(self, i: int, timeout: float = STOP_SECONDS) -> int:
        """SIGTERM node i and wait; raise ClusterError unless it exits with status 0 within `timeout`."""
        proc = self._running(i)
        proc.send_signal(signal.SIGTERM)
        if i in self._paused:  # a stopped process keeps SIGTERM pending until it runs again
            proc.send_signal(signal.SIGCONT)
            self._paused.discard(i)
        try:
            code = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise ClusterError(f"{self.node_ids[i]} did not exit within {timeout} s of SIGTERM\n"
                               f"{self.log_tail(i)}") from None
        if code != 0:
            raise ClusterError(f"{self.node_ids[i]} exited with status {code} after SIGTERM\n"
                               f"{self.log_tail(i)}")
        return code

    def pause(self, i: int) -> None:
        """SIGSTOP node i: it keeps its sockets but answers nothing, like a hung or partitioned node."""
        self._running(i).send_signal(signal.SIGSTOP)
        self._paused.add(i)

    def resume(self, i: int) -> None:
        """SIGCONT node i after pause(i)."""
        self._running(i).send_signal(signal.SIGCONT)
        self._paused.discard(i)

    def _reap(self, i: int, proc: subprocess.Popen[bytes], timeout: float) -> None:
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise ClusterError(f"{self.node_ids[i]} (PID {proc.pid}) did not exit within {timeout} s of "
                               f"SIGKILL") from None

    def close(self, timeout: float = STOP_SECONDS) -> None:
        """Stop every process this cluster started: SIGTERM, then SIGKILL whatever has not exited within
        `timeout`. Does not check exit statuses (use stop() for that); safe to call more than once."""
        try:
            running = [p for p in self._started if p.poll() is None]
            for proc in running:
                proc.send_signal(signal.SIGTERM)
                proc.send_signal(signal.SIGCONT)  # a paused node must run to act on SIGTERM
            self._paused.clear()
            deadline = time.monotonic() + timeout
            for proc in running:
                try:
                    proc.wait(max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    proc.kill()
            for proc in running:
                with contextlib.suppress(subprocess.TimeoutExpired):  # SIGKILL cannot be ignored: quick
                    proc.wait(STOP_SECONDS)
        finally:
            if self in ACTIVE:
                ACTIVE.remove(self)

    # ---------------------------------------------------------------- clients and readiness

    def connect(self, i: int, token: str | None = "default", **kwargs: Any) -> Connection:
        """A Connection to node i; token "default" means the cluster's `token`; kwargs go to Connection."""
        kwargs.setdefault("tls", self.client_tls)
        return Connection(self.addresses[i], self.token if token == "default" else token, **kwargs)

    def wait_ready(self, nodes: Sequence[int] | None = None, timeout: float = READY_SECONDS) -> None:
        """Until every node in `nodes` (default: all) takes a handshake, knows the metadata leader and sees
        every node of the cluster alive (heartbeats), so a queue created next is placed on all of them. Raises
        ClusterError with the log tails when that takes longer than `timeout` or a node's process exits."""
        pending = set(range(len(self)) if nodes is None else nodes)
        deadline = time.monotonic() + timeout
        last: dict[str, str] = {}
        for _ in range(_MAX_READY_ROUNDS):
            for i in sorted(pending):
                if not self.alive(i):
                    code = None if self.procs[i] is None else self.procs[i].poll()
                    state = "was never started" if code is None else f"exited with status {code}"
                    raise ClusterError(f"{self.node_ids[i]} (node {i}) {state} while starting\n{self.logs()}")
                left = deadline - time.monotonic()
                try:  # short timeouts: a node that is still starting must not eat the whole deadline
                    with self.connect(i, connect_timeout=max(0.1, min(1.0, left))) as conn:
                        status = conn.call("cluster_status", {}, timeout=max(0.1, min(2.0, left)))
                except (DmqError, OSError) as exc:
                    last[self.node_ids[i]] = repr(exc)
                    continue
                alive = {n["id"] for n in status["nodes"] if n["alive"]}
                if status["metadata_leader"] is not None and alive >= set(self.node_ids):
                    pending.discard(i)
                else:
                    leader = status["metadata_leader"]
                    last[self.node_ids[i]] = f"metadata leader {leader}, alive {sorted(alive)}"
            if not pending or time.monotonic() >= deadline:
                break
            time.sleep(POLL_SECONDS)
        if pending:
            waiting = [self.node_ids[i] for i in sorted(pending)]
            raise ClusterError(f"nodes {waiting} not ready within {timeout} s: {last}\n{self.logs()}")

    # ---------------------------------------------------------------- logs

    def log_tail(self, i: int, lines: int = LOG_TAIL_LINES) -> str:
        """The last `lines` lines of node i's log (stdout and stderr of all its runs), with a heading."""
        try:
            with open(self.log_paths[i], "rb") as f:
                size = f.seek(0, os.SEEK_END)
                f.seek(max(0, size - _LOG_TAIL_BYTES))
                text = f.read().decode("utf-8", errors="replace")
        except OSError:
            return f"--- node {i} ({self.node_ids[i]}): no log"
        tail = "\n".join(text.splitlines()[-lines:])
        return f"--- node {i} ({self.node_ids[i]}), last {lines} log lines:\n{tail}"

    def logs(self, lines: int = LOG_TAIL_LINES) -> str:
        """log_tail of every node."""
        return "\n".join(self.log_tail(i, lines) for i in range(len(self)))


@atexit.register
def _close_all() -> None:
    """The last resort when the interpreter exits with clusters running (a test runner killed mid-test)."""
    for local in list(ACTIVE):
        local.close()


def add_log_sections(report: Any, clusters: Sequence[LocalCluster]) -> None:
    """Append each cluster's node log tails to a pytest report as a section, once per cluster (the pytest
    plugin and a conftest may both do it for the same failure)."""
    for local in clusters:
        title = f"dmq node logs ({local.root})"
        if all(name != title for name, _ in report.sections):
            report.sections.append((title, local.logs()))


# ---------------------------------------------------------------------------------------------- cluster()


def _metadata_nodes(ids: list[str]) -> list[str]:
    # config.py's default: all nodes when there are 1, 3 or 5, the first when there are 2, else the first 3.
    if len(ids) in (1, 3, 5):
        return ids
    return ids[:1] if len(ids) == 2 else ids[:3]


def _check_options(node_options: Mapping[str, Any]) -> None:
    for name, table in node_options.items():
        if name not in TABLES:
            raise TypeError(f"cluster() got an unexpected keyword argument {name!r}: keywords other than "
                            f"nodes, root, keep, token, client_tls, ready_timeout and env name config "
                            f"tables: {', '.join(TABLES)}")
        if not isinstance(table, Mapping):
            raise TypeError(f"cluster() table {name}= must be a dict of keys to merge into [{name}], "
                            f"got {type(table).__name__}")
        taken = [key for key in _RESERVED.get(name, ()) if key in table]
        if taken:
            raise TypeError(f"cluster() sets [{name}] {', '.join(taken)} for every node itself; leave "
                            f"{'it' if len(taken) == 1 else 'them'} out (root= chooses where data goes)")


def _default_token(auth: Mapping[str, Any]) -> str | None:
    """The first principal's token when clients need one (anonymous access off), else None."""
    principals = [p for p in auth.get("principals", ()) if isinstance(p, Mapping)]
    if auth.get("anonymous", not principals):  # config.py: anonymous by default only without principals
        return None
    return next((p["token"] for p in principals if isinstance(p.get("token"), str)), None)


def node_configs(nodes: int, root: str | os.PathLike[str], **node_options: Mapping[str, Any]) -> list[str]:
    """The TOML texts cluster() writes: `nodes` nodes on free 127.0.0.1 ports, data under `root`, with
    node_options merged into their tables."""
    if not isinstance(nodes, int) or isinstance(nodes, bool) or nodes < 1:
        raise ValueError(f"nodes must be a positive integer, got {nodes!r}")
    _check_options(node_options)
    root = Path(root).resolve()
    ids = [f"node{i + 1}" for i in range(nodes)]
    ports = free_ports(3 * nodes)  # all at once, so no two are the same
    entries = [{"id": node_id, "raft": f"127.0.0.1:{ports[3 * i]}", "client": f"127.0.0.1:{ports[3 * i + 1]}"}
               for i, node_id in enumerate(ids)]
    secret = secrets.token_urlsafe(24)
    texts = []
    for i, node_id in enumerate(ids):
        doc: dict[str, Any] = {
            # data_dir matches LocalCluster's layout; it passes the same as --data-dir anyway
            "node": {"id": node_id, "data_dir": str(root / f"data{i + 1}"),
                     "metrics_address": f"127.0.0.1:{ports[3 * i + 2]}"},
            # a [cluster] table even for one node: fixed Raft ports, the same config path for every size
            "cluster": {"secret": secret, "metadata_nodes": _metadata_nodes(ids), "nodes": entries},
        }
        texts.append(to_toml(deep_merge(doc, node_options)))
    return texts


@contextlib.contextmanager
def cluster(nodes: int = 3, *, root: str | os.PathLike[str] | None = None, keep: bool = False,
            token: str | None = None, client_tls: ssl.SSLContext | None = None,
            ready_timeout: float = READY_SECONDS, env: Mapping[str, str] | None = None,
            **node_options: Mapping[str, Any]) -> Iterator[LocalCluster]:
    """A started, ready LocalCluster of `nodes` nodes; on exit every process it started is stopped (SIGTERM,
    SIGKILL after a bound), also when the body raised, and a temporary root is removed.

    root: where configs, data and logs go (kept on exit); default a new temporary directory, removed on exit
        unless keep=True.
    token: the default token of connect() and wait_ready(); default the first principal's token when
        auth= turns anonymous access off.
    client_tls: the ssl.SSLContext clients use when tls= enables TLS on the client port.
    env: variables set for the node processes on top of os.environ.
    node_options: table name -> dict merged into that table of every node's config (TABLES).
    """
    _check_options(node_options)  # a TypeError before anything is created
    temporary = root is None
    base = Path(tempfile.mkdtemp(prefix="dmq-cluster-")) if temporary else Path(root)
    try:
        texts = node_configs(nodes, base, **node_options)
        if token is None:
            token = _default_token(node_options.get("auth", {}))
        local = LocalCluster(texts, base, token=token, client_tls=client_tls, env=env)
        try:
            local.start_all(ready_timeout)
        except BaseException:
            local.close()
            raise
        try:
            yield local
        except Exception as exc:
            exc.add_note(f"dmq cluster at {base}:\n{local.logs()}")  # the logs go with a temporary root
            raise
        finally:
            local.close()
    finally:
        if temporary and not keep:
            shutil.rmtree(base, ignore_errors=True)
