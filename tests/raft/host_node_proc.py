"""One node process hosting many Raft groups on one RaftHost, driven over stdin/stdout with JSON lines (tests and
benchmarks).

    DMQ_RAFT_SECRET=... python tests/raft/host_node_proc.py --self 127.0.0.1:P1 --peer 127.0.0.1:P2 \
        --peer 127.0.0.1:P3 --data DIR --groups N [--journal raftlog|shared|none] [--unbatched] [--period 0.05]

Groups are named g0 .. g{N-1}. Requests (one JSON object per line), one JSON reply line each:
    {"op": "status", "group": "g0"}                      Raft status of one group
    {"op": "summary"}                                   how many groups have a leader / lead here; host stats
    {"op": "push", "group": "g0", "n": N, "size": S, "timeout": T}    N sequential sync commands; latencies
    {"op": "load", "group": "g0", "cmds": N, "msgs": M, "msg_size": B, "window": W, "timeout": T}
    {"op": "applied", "group": "g0"}                    ids of the applied commands, in order
    {"op": "quit"}
A command is ``msgpack([id, payload])`` through one @replicated entry point (as tests/raft/node_proc.py).
"""

import argparse
import json
import os
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import msgpack  # noqa: E402
from pysyncobj import SyncObjConf, replicated  # noqa: E402
from pysyncobj.config import FAIL_REASON  # noqa: E402

from dmq_server.raft import pysyncobj_fixes as fx  # noqa: E402
from dmq_server.raft.host import RaftHost  # noqa: E402
from dmq_server.raft.log import LogSpace, RaftLog  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--self", dest="me", required=True)
    ap.add_argument("--peer", action="append", default=[])
    ap.add_argument("--data", required=True)
    ap.add_argument("--groups", type=int, default=1)
    ap.add_argument("--journal", default="raftlog", choices=["raftlog", "shared", "none"])
    ap.add_argument("--period", type=float, default=0.05)
    ap.add_argument("--unbatched", action="store_true")
    ap.add_argument("--min-timeout", type=float, default=0.3)
    ap.add_argument("--max-timeout", type=float, default=0.45)
    ap.add_argument("--conn-timeout", type=float, default=3.0)
    ap.add_argument("--handshake-timeout", type=float, default=5.0)
    a = ap.parse_args()
    os.makedirs(a.data, exist_ok=True)
    secret = os.environ["DMQ_RAFT_SECRET"].encode()
    fx.install()

    class Group(fx.SyncObj):
        def __init__(self, gid, transport, journal):
            self.applied = []
            conf = SyncObjConf(autoTick=False, journalFile=journal, appendEntriesPeriod=a.period,
                               raftMinTimeout=a.min_timeout, raftMaxTimeout=a.max_timeout,
                               appendEntriesUseBatch=not a.unbatched, connectionTimeout=a.conn_timeout,
                               logCompactionMinEntries=10 ** 9, logCompactionMinTime=10 ** 9)
            super().__init__(a.me, a.peer, conf, transport=transport)

        @replicated
        def apply(self, cmd):
            cid, _payload = msgpack.unpackb(cmd)
            self.applied.append(cid)
            return cid

    host = RaftHost(a.me, secret, connection_timeout=a.conn_timeout, handshake_timeout=a.handshake_timeout,
                    liveness_timeout=a.min_timeout).start()  # as a node sets it
    groups = {}
    space = LogSpace(os.path.join(a.data, "raftlog")) if a.journal == "shared" else None  # as a node keeps them
    for i in range(a.groups):
        gid = "g%d" % i
        if a.journal == "raftlog":
            journal = RaftLog(os.path.join(a.data, gid))
        else:
            journal = None if space is None else RaftLog(space=space, group_id=gid)
        g = Group(gid, host.transport_for(gid), journal)
        host.add(g, wait=(i == a.groups - 1), timeout=600)
        groups[gid] = g

    counter = [int(time.time() * 1000) % 10 ** 9 * 1000]

    def next_id():
        counter[0] += 1
        return counter[0]

    def reply(obj):
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()

    for line in sys.stdin:
        req = json.loads(line)
        try:
            if handle(req, groups, host, reply, next_id):
                return
        except Exception as e:  # noqa: BLE001
            reply({"error": repr(e)})


def handle(req, groups, host, reply, next_id):
    op = req["op"]
    if op == "status":
        g = groups[req["group"]]

        def st(g=g):
            s = g.getStatus()
            leader = s["leader"]
            return {"leader": g._isLeader(), "leader_addr": leader.address if leader is not None else None,
                    "term": s["raft_term"], "commit": s["commit_idx"], "n_applied": len(g.applied)}
        reply(host.call(st, timeout=60))
    elif op == "summary":
        def summ():
            with_leader = sum(1 for g in groups.values() if g._getLeader() is not None)
            leading = sum(1 for g in groups.values() if g._isLeader())
            return {"groups": len(groups), "with_leader": with_leader, "leading": leading}
        r = host.call(summ, timeout=120)
        r["stats"] = host.stats(timeout=120)
        r["threads"] = threading.active_count()
        r["pid"] = os.getpid()
        reply(r)
    elif op == "push":
        g = groups[req["group"]]
        lat, ok, errors = [], [], []
        payload = os.urandom(req.get("size", 100))
        for _ in range(req["n"]):
            cid = next_id()
            t0 = time.perf_counter()
            try:
                g.apply(msgpack.packb([cid, payload]), sync=True, timeout=req.get("timeout", 10))
                lat.append(time.perf_counter() - t0)
                ok.append(cid)
            except Exception as e:  # noqa: BLE001
                errors.append(repr(e))
        reply({"lat": lat, "ok": ok, "errors": errors[:5], "n_errors": len(errors)})
    elif op == "load":
        g = groups[req["group"]]
        n, window = req["cmds"], req["window"]
        msgs = [os.urandom(req["msg_size"]) for _ in range(req["msgs"])]
        sem = threading.Semaphore(window)
        acked, failed, lat = [], [], []
        done = threading.Event()
        remaining = [n]
        lock = threading.Lock()

        def make_cb(cid, t0):
            def cb(res, err):
                with lock:
                    if err == FAIL_REASON.SUCCESS:
                        acked.append(cid)
                        lat.append(time.perf_counter() - t0)
                    else:
                        failed.append(err)
                    remaining[0] -= 1
                    if remaining[0] == 0:
                        done.set()
                sem.release()
            return cb

        deadline = time.monotonic() + req.get("timeout", 60)
        t_start = time.perf_counter()
        for _ in range(n):
            if not sem.acquire(timeout=max(0.0, deadline - time.monotonic())):
                break
            cid = next_id()
            g.apply(msgpack.packb([cid, msgs]), callback=make_cb(cid, time.perf_counter()))
        done.wait(max(0.0, deadline - time.monotonic()))
        elapsed = time.perf_counter() - t_start
        with lock:
            reply({"elapsed": elapsed, "acked": list(acked), "n_failed": len(failed),
                   "failed": sorted(set(failed)), "lat": list(lat)})
    elif op == "applied":
        g = groups[req["group"]]
        reply({"applied": host.call(lambda g=g: list(g.applied))})
    elif op == "quit":
        host.stop(destroy_groups=True, timeout=60)
        reply({"bye": True})
        return True
    return False


if __name__ == "__main__":
    main()
