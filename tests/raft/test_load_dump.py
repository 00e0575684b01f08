"""Loading a snapshot must not throw away the log entries that follow it (stock 0.3.17 cleared the whole log when
its first entries were older than the snapshot, e.g. after a crash between writing a snapshot and compacting the
log, losing acknowledged entries)."""


import pytest

from pysyncobj import SyncObj as StockSyncObj
from pysyncobj import SyncObjConf
from dmq_server.raft import pysyncobj_fixes as fx

from .cluster import free_port
from dmq_server.raft.log import RaftLog


def _node(cls, journal=None):
    obj = cls("127.0.0.1:%d" % free_port(), ["127.0.0.1:%d" % free_port()],
              SyncObjConf(autoTick=False, journalFile=journal))
    log = obj._SyncObj__raftLog
    for i in range(2, 11):
        log.add(b"\x01", i, 1)  # no-ops, indexes 2..10
    return obj, log


def _snapshot(log, last_idx):
    entries = {e[1]: e for e in log[:]}
    return (None, entries[last_idx], entries[last_idx - 1], set())


def test_stock_load_dump_clears_the_tail():
    obj, log = _node(StockSyncObj)
    try:
        data = _snapshot(log, 6)
        obj._SyncObj__serializer.deserialize = lambda: data
        obj._SyncObj__loadDumpFile(clearJournal=False)
        assert [e[1] for e in log[:]] == [5, 6]  # 7..10 lost
    finally:
        obj._doDestroy()


@pytest.mark.parametrize("clear", [False, True])
def test_fixed_load_dump_keeps_the_tail(tmp_path, clear):
    obj, log = _node(fx.SyncObj, RaftLog(str(tmp_path / "log")))
    try:
        data = _snapshot(log, 6)
        obj._SyncObj__serializer.deserialize = lambda: data
        obj._SyncObj__loadDumpFile(clearJournal=clear)
        assert [e[1] for e in log[:]] == [5, 6, 7, 8, 9, 10]
        assert obj.raftLastApplied == 6
    finally:
        obj._doDestroy()


def test_fixed_load_dump_replaces_a_log_that_does_not_hold_the_snapshot():
    obj, log = _node(fx.SyncObj)
    try:
        data = (None, (b"\x01", 20, 3), (b"\x01", 19, 3), set())
        obj._SyncObj__serializer.deserialize = lambda: data
        obj._SyncObj__loadDumpFile(clearJournal=True)
        assert log[:] == [(b"\x01", 19, 3), (b"\x01", 20, 3)]
        assert obj.raftLastApplied == 20
    finally:
        obj._doDestroy()
