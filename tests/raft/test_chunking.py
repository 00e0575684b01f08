"""Commands >= appendEntriesBatchSizeBytes are sent in chunks. pysyncobj 0.3.17 decides the 'finish' chunk from
the raw command length instead of the pickled entry's, so an entry whose pickle crosses a chunk boundary that the
command does not gets a premature 'finish' (the follower unpickles a truncated buffer)."""



import pysyncobj.pickle as ps_pickle
from pysyncobj import SyncObj as StockSyncObj
from pysyncobj import SyncObjConf
from pysyncobj.node import TCPNode
from pysyncobj.syncobj import _RAFT_STATE
from dmq_server.raft import pysyncobj_fixes as fx

from .cluster import free_port

B = 4096  # appendEntriesBatchSizeBytes for the test


def _leader_with_big_entry(cls, command):
    me, other = "127.0.0.1:%d" % free_port(), "127.0.0.1:%d" % free_port()
    obj = cls(me, [other], SyncObjConf(autoTick=False, appendEntriesBatchSizeBytes=B))
    follower = TCPNode(other)
    obj._SyncObj__raftLog.add(command, 2, 1)
    obj._SyncObj__raftState = _RAFT_STATE.LEADER
    obj._SyncObj__raftCurrentTerm = 1
    obj._SyncObj__raftNextIndex[follower] = 2
    obj._SyncObj__raftMatchIndex[follower] = 1
    obj._SyncObj__connectedNodes.add(follower)
    sent = []
    obj._SyncObj__transport.send = lambda node, msg: sent.append(msg) or True
    obj._SyncObj__sendAppendEntries()
    return obj, sent


def _boundary_command():
    # a command shorter than 2*B whose pickled entry (command, 2, 1) is longer than 2*B
    for n in range(2 * B - 64, 2 * B):
        cmd = b"\x00" + bytes(n - 1)
        if n <= 2 * B < len(ps_pickle.dumps((cmd, 2, 1))):
            return cmd
    raise AssertionError("no boundary size found")


def test_stock_sends_premature_finish():
    cmd = _boundary_command()
    obj, sent = _leader_with_big_entry(StockSyncObj, cmd)
    try:
        kinds = [m["transmission"] for m in sent if "transmission" in m]
        assert kinds.count("finish") == 2 and kinds[-2] == "finish"  # a 'finish' before the last chunk
    finally:
        obj._doDestroy()


def test_fixed_sends_one_finish_and_follower_gets_the_entry():
    cmd = _boundary_command()
    obj, sent = _leader_with_big_entry(fx.SyncObj, cmd)
    try:
        chunks = [m for m in sent if "transmission" in m]
        assert [m["transmission"] for m in chunks] == ["start", "process", "finish"]
        assert ps_pickle.loads(b"".join(m["data"] for m in chunks)) == (cmd, 2, 1)
    finally:
        obj._doDestroy()
    # and a fixed follower appends it
    me, leader = "127.0.0.1:%d" % free_port(), "127.0.0.1:%d" % free_port()
    f = fx.SyncObj(me, [leader], SyncObjConf(autoTick=False, appendEntriesBatchSizeBytes=B))
    try:
        for m in chunks:
            m = dict(m, prevLogTerm=0)
            f._SyncObj__onMessageReceived(TCPNode(leader), m)
        assert f._SyncObj__raftLog[-1] == (cmd, 2, 1)
        assert [r["success"] for _, r in f._dmq_pendingReplies] == [False, False, True]
    finally:
        f._doDestroy()


def test_fixed_follower_survives_a_corrupt_transmission():
    me, leader = "127.0.0.1:%d" % free_port(), "127.0.0.1:%d" % free_port()
    f = fx.SyncObj(me, [leader], SyncObjConf(autoTick=False))
    try:
        base = {"type": "append_entries", "term": 1, "commit_index": 1, "prevLogIdx": 1, "prevLogTerm": 0}
        # 'process' + 'finish' without the 'start' (e.g. lost with a dropped connection)
        f._SyncObj__onMessageReceived(TCPNode(leader), dict(base, transmission="process", data=b"\x80\x04garbage"))
        f._SyncObj__onMessageReceived(TCPNode(leader), dict(base, transmission="finish", data=b"more"))
        assert len(f._SyncObj__raftLog) == 1
        last = f._dmq_pendingReplies[-1][1]
        assert (last["success"], last["reset"], last["next_node_idx"]) == (False, True, 2)
    finally:
        f._doDestroy()
