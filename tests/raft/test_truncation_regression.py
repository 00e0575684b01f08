"""Regression test for the pysyncobj 0.3.17 follower truncation bug, and the leader's nextIndex handling.

Stock 0.3.17: a follower that receives a stale or re-sent ``append_entries`` deletes every entry after
``prevLogIdx``, even entries that match the leader's and that it has already acknowledged (and the leader counted
as committed). The leader re-sends such messages because it rewinds ``nextIndex`` on every acknowledgement.

These tests drive the message handler of a real SyncObj directly (no ticking, no peer), deterministically.
"""


import pytest

from pysyncobj import SyncObj as StockSyncObj
from pysyncobj import SyncObjConf
from pysyncobj.node import TCPNode
from pysyncobj.syncobj import _RAFT_STATE
from dmq_server.raft import pysyncobj_fixes as fx

from .cluster import free_port
from dmq_server.raft.log import RaftLog


def _make(cls, journal=None):
    me, leader = "127.0.0.1:%d" % free_port(), "127.0.0.1:%d" % free_port()  # nobody listens on 'leader'
    conf = SyncObjConf(autoTick=False, journalFile=journal)
    obj = cls(me, [leader], conf)
    return obj, TCPNode(leader)


def _ae(prev_idx, prev_term, entries, commit, term=1):
    return {"type": "append_entries", "term": term, "commit_index": commit, "entries": entries,
            "prevLogIdx": prev_idx, "prevLogTerm": prev_term}


def _cmd(i):
    return (b"\x00cmd%d" % i, i, 1)  # REGULAR command byte + payload; never applied here


def _scenario(obj, leader):
    recv = obj._SyncObj__onMessageReceived
    log = obj._SyncObj__raftLog
    assert [e[1] for e in log[:]] == [1]  # the initial no-op (term 0)
    # 1. the leader replicates entries 2..5; the follower appends and acknowledges next_node_idx=6
    recv(leader, _ae(1, 0, [_cmd(i) for i in range(2, 6)], commit=1))
    # 2. a heartbeat: the leader has committed 2..5 (counting this follower's acknowledgement)
    recv(leader, _ae(5, 1, [], commit=5))
    assert obj.raftCommitIndex == 5
    # 3. a stale / re-sent message covering only 2..3 arrives
    recv(leader, _ae(1, 0, [_cmd(2), _cmd(3)], commit=5))
    return [e[1] for e in log[:]], obj.raftCommitIndex


def test_stock_pysyncobj_truncates_acknowledged_entries():
    obj, leader = _make(StockSyncObj)
    try:
        indexes, commit = _scenario(obj, leader)
        # the bug: acknowledged, committed entries 4 and 5 are gone and the commit index went backwards
        assert indexes == [1, 2, 3]
        assert commit == 3
    finally:
        obj._doDestroy()


@pytest.mark.parametrize("journal", ["memory", "rocksdb"])
def test_fixed_follower_keeps_matching_entries(tmp_path, journal):
    log = RaftLog(str(tmp_path / "log")) if journal == "rocksdb" else None
    obj, leader = _make(fx.SyncObj, log)
    try:
        indexes, commit = _scenario(obj, leader)
        assert indexes == [1, 2, 3, 4, 5]
        assert commit == 5
        assert obj._dmq_truncations == 0
        replies = [m for _, m in obj._dmq_pendingReplies]
        # acks are queued until the log is synced; the stale message acknowledges only what it verified
        assert [(m["success"], m["next_node_idx"]) for m in replies] == [(True, 6), (True, 6), (True, 4)]
        if log is not None:
            assert log.dirty
        obj._dmq_syncAndReply()
        assert obj._dmq_pendingReplies == []
        if log is not None:
            assert not log.dirty and log.durableLastIndex == 5
    finally:
        obj._doDestroy()


def test_fixed_follower_truncates_only_from_first_conflict():
    obj, leader = _make(fx.SyncObj)
    recv = obj._SyncObj__onMessageReceived
    log = obj._SyncObj__raftLog
    try:
        recv(leader, _ae(1, 0, [_cmd(i) for i in range(2, 8)], commit=3))  # 2..7 in term 1, commit 3
        assert obj.raftCommitIndex == 3
        # a term-2 leader: agrees on 2..4, its entry 5 (term 2) conflicts with ours
        new = [(b"\x00n%d" % i, i, 2) for i in (5, 6)]
        recv(leader, _ae(1, 0, [_cmd(2), _cmd(3), _cmd(4)] + new, commit=3, term=2))
        assert [(e[1], e[2]) for e in log[:]] == [(1, 0), (2, 1), (3, 1), (4, 1), (5, 2), (6, 2)]
        assert obj._dmq_truncations == 1
        # a conflict at or below the commit index is refused, nothing is deleted
        recv(leader, _ae(1, 0, [(b"\x00bad", 2, 2)], commit=3, term=2))
        assert len(log) == 6 and obj._dmq_refusedConflicts == 1
    finally:
        obj._doDestroy()


def test_fixed_follower_commits_only_verified_entries():
    obj, leader = _make(fx.SyncObj)
    recv = obj._SyncObj__onMessageReceived
    try:
        recv(leader, _ae(1, 0, [_cmd(i) for i in range(2, 8)], commit=1))  # log 1..7
        # a new leader (term 2) whose log matches only up to 3 sends a heartbeat with commit 10 and prev 3
        recv(leader, _ae(3, 1, [], commit=10, term=2))
        assert obj.raftCommitIndex == 3  # stock: min(10, last log index 7) = 7, including unverified 4..7
    finally:
        obj._doDestroy()


def _make_leader(cls):
    obj, follower = _make(cls)
    for i in range(2, 13):
        obj._SyncObj__raftLog.add(b"\x00x", i, 1)
    obj._SyncObj__raftState = _RAFT_STATE.LEADER
    obj._SyncObj__raftCurrentTerm = 1
    obj._SyncObj__raftNextIndex[follower] = 10  # optimistic: 2..9 are in flight
    obj._SyncObj__raftMatchIndex[follower] = 5
    obj._SyncObj__lastResponseTime[follower] = 0
    return obj, follower


def _nni(nxt, success, reset=False):
    return {"type": "next_node_idx", "next_node_idx": nxt, "success": success, "reset": reset}


def test_stock_leader_rewinds_next_index_on_ack():
    obj, f = _make_leader(StockSyncObj)
    try:
        obj._SyncObj__onMessageReceived(f, _nni(7, True))
        assert obj._SyncObj__raftMatchIndex[f] == 6 and obj._SyncObj__raftNextIndex[f] == 7  # rewound: resends 7..9
    finally:
        obj._doDestroy()


def test_fixed_leader_never_rewinds_on_ack_and_backs_off_on_rejection():
    obj, f = _make_leader(fx.SyncObj)
    nxt, match = obj._SyncObj__raftNextIndex, obj._SyncObj__raftMatchIndex
    try:
        obj._SyncObj__onMessageReceived(f, _nni(7, True))
        assert (match[f], nxt[f]) == (6, 10)
        obj._SyncObj__onMessageReceived(f, _nni(4, True))  # stale ack
        assert (match[f], nxt[f]) == (6, 10)
        obj._SyncObj__onMessageReceived(f, _nni(11, True))
        assert (match[f], nxt[f]) == (10, 11)
        obj._SyncObj__onMessageReceived(f, _nni(99, False, reset=True))  # a rejection never raises nextIndex
        assert (match[f], nxt[f]) == (10, 11)
        # Replies arrive in order, so a rejection below the match index means the follower lost its log (a
        # wiped disk): lowering both is safe (commits only wait longer) and lets the leader resend or snapshot.
        obj._SyncObj__onMessageReceived(f, _nni(8, False, reset=True))
        assert (match[f], nxt[f]) == (7, 8)
        # Later messages of the same heartbeat are rejected with higher hints: they must not undo the back-off.
        obj._SyncObj__onMessageReceived(f, _nni(10, False, reset=True))
        assert (match[f], nxt[f]) == (7, 8)
        obj._SyncObj__onMessageReceived(f, _nni(13, True))
        assert (match[f], nxt[f]) == (12, 13)
        obj._SyncObj__onMessageReceived(f, _nni(12, False, reset=False))  # chunk progress: no change
        assert nxt[f] == 13
    finally:
        obj._doDestroy()
