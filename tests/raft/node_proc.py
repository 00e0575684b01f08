"""One Raft node in its own process, driven over stdin/stdout with JSON lines (tests and benchmarks).

    python tests/raft/node_proc.py --self 127.0.0.1:P1 --peer 127.0.0.1:P2 --peer 127.0.0.1:P3 \
        --data DIR [--mode dmq|dmq-nofsync|stock-journal|stock-memory] [--period 0.02] [--unbatched]

Requests (one JSON object per line on stdin), one JSON reply line each on stdout:
    {"op": "status"}
    {"op": "push", "n": N, "size": S, "timeout": T}           N sequential sync commands; latencies
    {"op": "load", "cmds": N, "msgs": M, "msg_size": B, "window": W, "timeout": T}
                                                              N async commands of M msgpack messages each
    {"op": "big", "sizes": [..], "timeout": T}                sync commands of the given byte sizes
    {"op": "applied"}                                         ids of the applied commands, in order
    {"op": "quit"}
The state machine records the id of every applied command. A command is ``msgpack([id, payload])`` replicated
through one @replicated entry point, as dmq does.
"""

import argparse
import json
import os
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import msgpack  # noqa: E402
from pysyncobj import SyncObj as StockSyncObj  # noqa: E402
from pysyncobj import SyncObjConf, replicated  # noqa: E402
from pysyncobj.config import FAIL_REASON  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--self", dest="me", required=True)
    ap.add_argument("--peer", action="append", default=[])
    ap.add_argument("--data", required=True)
    ap.add_argument("--mode", default="dmq")
    ap.add_argument("--period", type=float, default=0.02)
    ap.add_argument("--tick", type=float, default=0.01)
    ap.add_argument("--unbatched", action="store_true")
    ap.add_argument("--min-timeout", type=float, default=0.5)
    ap.add_argument("--max-timeout", type=float, default=1.0)
    a = ap.parse_args()
    os.makedirs(a.data, exist_ok=True)

    if a.mode.startswith("dmq"):
        from dmq_server.raft import pysyncobj_fixes as fx
        from dmq_server.raft.log import RaftLog
        fx.install()
        base = fx.SyncObj
        journal = RaftLog(os.path.join(a.data, "raftlog"))
        if a.mode == "dmq-nofsync":
            journal.sync = journal.flush = lambda: False
    else:
        base = StockSyncObj
        journal = os.path.join(a.data, "journal.bin") if a.mode == "stock-journal" else None

    class Node(base):
        def __init__(self):
            self.applied = []
            conf = SyncObjConf(journalFile=journal, appendEntriesPeriod=a.period, autoTickPeriod=a.tick,
                               raftMinTimeout=a.min_timeout, raftMaxTimeout=a.max_timeout,
                               appendEntriesUseBatch=not a.unbatched, connectionTimeout=max(3.5, a.max_timeout),
                               logCompactionMinEntries=10 ** 9, logCompactionMinTime=10 ** 9)
            super().__init__(a.me, a.peer, conf)

        @replicated
        def apply(self, cmd):
            cid, _payload = msgpack.unpackb(cmd)
            self.applied.append(cid)
            return cid

    node = Node()
    counter = [int(time.time() * 1000) % 10 ** 9 * 1000]

    def next_id():
        counter[0] += 1
        return counter[0]

    def reply(obj):
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()

    for line in sys.stdin:
        req = json.loads(line)
        op = req["op"]
        if op == "status":
            st = node.getStatus()
            leader = st["leader"]
            reply({"leader": node._isLeader(), "leader_addr": leader.address if leader is not None else None,
                   "term": st["raft_term"], "commit": st["commit_idx"], "applied_idx": st["last_applied"],
                   "log_len": st["log_len"], "n_applied": len(node.applied),
                   "truncations": getattr(node, "_dmq_truncations", None)})
        elif op == "push":
            lat, ok, errors = [], [], []
            payload = os.urandom(req.get("size", 100))
            for _ in range(req["n"]):
                cid = next_id()
                t0 = time.perf_counter()
                try:
                    node.apply(msgpack.packb([cid, payload]), sync=True, timeout=req.get("timeout", 10))
                    lat.append(time.perf_counter() - t0)
                    ok.append(cid)
                except Exception as e:  # noqa: BLE001
                    errors.append(repr(e))
            reply({"lat": lat, "ok": ok, "errors": errors[:5], "n_errors": len(errors)})
        elif op == "load":
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
                node.apply(msgpack.packb([cid, msgs]), callback=make_cb(cid, time.perf_counter()))
            done.wait(max(0.0, deadline - time.monotonic()))
            elapsed = time.perf_counter() - t_start
            with lock:
                reply({"elapsed": elapsed, "acked": list(acked), "n_failed": len(failed),
                       "failed": sorted(set(failed)), "lat": list(lat)})
        elif op == "big":
            res = []
            for size in req["sizes"]:
                cid = next_id()
                t0 = time.perf_counter()
                try:
                    node.apply(msgpack.packb([cid, os.urandom(size)]), sync=True, timeout=req.get("timeout", 20))
                    res.append([size, cid, time.perf_counter() - t0, None])
                except Exception as e:  # noqa: BLE001
                    res.append([size, cid, time.perf_counter() - t0, repr(e)])
            reply({"results": res})
        elif op == "applied":
            reply({"applied": list(node.applied)})
        elif op == "quit":
            node.destroy_synchronous()
            reply({"bye": True})
            return


if __name__ == "__main__":
    main()
