"""The unsynced-writes simulation on real RocksDB databases written by a process that is then SIGKILLed."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from dmq_server.chaos.unsynced import lose_unsynced_writes, read_sync_record, rocksdb_dirs, wal_files

REPO = Path(__file__).resolve().parents[2]

# Writes 10 log entries and syncs, then 5 more without a sync, and 3 commands to a partition store (never
# fsynced), then dies by SIGKILL: the page cache keeps every write, a power loss would keep only the synced ones.
_WRITER = textwrap.dedent("""
    import os, signal, sys
    from dmq_server.chaos.node import install_sync_recorder
    data, record = sys.argv[1], sys.argv[2]
    install_sync_recorder(record)
    from dmq_server.raft.log import RaftLog
    from dmq_server.store import PartitionStoreFactory
    log = RaftLog(os.path.join(data, "partitions", "q1.p0", "raftlog"))
    for i in range(1, 11):
        log.add(b"command %d" % i, i, 1)
    assert log.sync()
    for i in range(11, 16):
        log.add(b"command %d" % i, i, 1)
    store = PartitionStoreFactory().open(os.path.join(data, "partitions", "q1.p0", "store"))
    for i in range(1, 4):
        store.apply(i, {"op": "enqueue", "now": 1000, "messages": [[b"body", None, None, None, None]]})
    assert store.applied_index == 3
    os.kill(os.getpid(), signal.SIGKILL)
""")


def _write_and_die(data: Path, record: Path) -> int:
    proc = subprocess.run([sys.executable, "-c", _WRITER, str(data), str(record)], cwd=str(REPO),
                          env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, timeout=60)
    assert proc.returncode == -9, proc.stderr.decode()
    return proc.returncode


def _reopen(data: Path) -> tuple[int, int]:
    """(last log index, store applied index) as a restarted node would find them."""
    from dmq_server.raft.log import RaftLog
    from dmq_server.store import PartitionStoreFactory

    log = RaftLog(str(data / "partitions" / "q1.p0" / "raftlog"))
    store = PartitionStoreFactory().open(str(data / "partitions" / "q1.p0" / "store"))
    try:
        return log.lastIndex, store.applied_index
    finally:
        log.close()
        store.close()


def test_kill_9_alone_loses_nothing(tmp_path: Path) -> None:
    """The control: SIGKILL keeps unsynced writes (they are in the page cache), so the simulation is needed."""
    _write_and_die(tmp_path / "data", tmp_path / "sync.log")
    assert _reopen(tmp_path / "data") == (15, 3)


def test_the_simulation_cuts_back_to_the_last_fsync(tmp_path: Path) -> None:
    data, record = tmp_path / "data", tmp_path / "sync.log"
    _write_and_die(data, record)
    synced = read_sync_record(str(record))
    assert len(synced) == 1 and all(size > 0 for size in synced.values())
    report = lose_unsynced_writes(str(data), str(record))
    assert {os.path.basename(os.path.dirname(w)) for w, before, after in report.truncated if after < before} \
        == {"raftlog", "store"}
    assert _reopen(data) == (10, 0)  # the 5 unsynced entries and the whole store tail are gone


def test_without_a_sync_record_only_the_stores_lose_their_tail(tmp_path: Path) -> None:
    data = tmp_path / "data"
    _write_and_die(data, tmp_path / "sync.log")
    report = lose_unsynced_writes(str(data), None)
    assert len(report.skipped) == 1 and "raft-log" in report.summary()
    assert _reopen(data) == (15, 0)


def test_a_running_process_is_refused(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError):
        lose_unsynced_writes(str(tmp_path), None, pid=os.getpid())


def test_helpers_find_databases_and_wals(tmp_path: Path) -> None:
    db = tmp_path / "partitions" / "q1.p0" / "store"
    db.mkdir(parents=True)
    for name in ("CURRENT", "000007.log", "LOG", "LOG.old.1", "000008.sst"):
        (db / name).write_bytes(b"x")
    assert rocksdb_dirs(str(tmp_path)) == [str(db)]
    assert wal_files(str(db)) == [str(db / "000007.log")]
    record = tmp_path / "sync.log"
    record.write_text(f"{db}/000007.log 5\n{db}/000007.log 9\n{db}/000009.log 1")  # last line torn? kept: whole
    assert read_sync_record(str(record)) == {f"{db}/000007.log": 9, f"{db}/000009.log": 1}


# Two groups' logs in one node-wide space: group b's fsync covers group a's earlier writes, so a's sync does no
# fsync of its own; a's later writes are unsynced when the process dies.
_SHARED_WRITER = textwrap.dedent("""
    import os, signal, sys
    from dmq_server.chaos.node import install_sync_recorder
    data, record = sys.argv[1], sys.argv[2]
    install_sync_recorder(record)
    from dmq_server.raft.log import LogSpace, RaftLog
    space = LogSpace(os.path.join(data, "raftlog"))
    a = RaftLog(space=space, group_id="q1.p0")
    b = RaftLog(space=space, group_id="q1.p1")
    for i in range(1, 11):
        a.add(b"a %d" % i, i, 1)
    for i in range(1, 6):
        b.add(b"b %d" % i, i, 1)
    assert b.sync() and not a.sync()  # b's fsync made a's ten entries durable too
    assert a.durableLastIndex == 10 and not a.dirty
    for i in range(11, 16):
        a.add(b"a %d" % i, i, 1)
    os.kill(os.getpid(), signal.SIGKILL)
""")


def test_a_shared_log_fsync_covers_every_group_written_before_it(tmp_path: Path) -> None:
    from dmq_server.raft.log import LogSpace, RaftLog

    data, record = tmp_path / "data", tmp_path / "sync.log"
    proc = subprocess.run([sys.executable, "-c", _SHARED_WRITER, str(data), str(record)], cwd=str(REPO),
                          env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, timeout=60)
    assert proc.returncode == -9, proc.stderr.decode()
    report = lose_unsynced_writes(str(data), str(record))
    assert report.bytes_lost > 0  # a's five unsynced entries
    space = LogSpace(str(data / "raftlog"))
    try:
        a = RaftLog(space=space, group_id="q1.p0")
        b = RaftLog(space=space, group_id="q1.p1")
        assert [e[0] for e in a[:]] == [b"a %d" % i for i in range(1, 11)]
        assert [e[0] for e in b[:]] == [b"b %d" % i for i in range(1, 6)]
    finally:
        space.close()
