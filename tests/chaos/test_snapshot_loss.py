"""A power loss may keep a log compaction but lose the snapshot file it relied on.

pysyncobj publishes a snapshot with os.rename(tmp, snapshot.tar) (pysyncobj/serializer.py:93, atomicReplace) and
never fsyncs the directory; the next tick compacts the log (syncobj.py:1427), and the next RaftLog.sync makes that
durable. A crash that keeps the fsynced log but not the un-fsynced rename leaves a log starting above index 2 and
no snapshot: pysyncobj starts with raftLastApplied = 1 (syncobj.py:177), RaftLog.getEntries(2) is [] below the
first index (raft/log.py:361), so the replica never applies again, yet it can still win elections.

Deleting snapshot.tar after a clean stop reproduces that state exactly. Fixed twice over: the rename is now
fsynced with its directory before the compaction (pysyncobj_fixes.durable_replace), and a group whose log starts
past what pysyncobj believes applied resumes after the store's applied index (PartitionGroup._dmq_resumeIndex).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from dmq_client.testing import free_ports
from dmq_server.raft.group import GroupSpec, GroupTimings, PartitionGroup, RaftUnavailable


def _enqueue(body: bytes, now: int) -> dict:
    return {"op": "enqueue", "now": now, "messages": [[body, None, None, None, None]]}


def _leader(group: PartitionGroup, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not group.is_leader() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert group.is_leader()


def test_a_replica_that_lost_its_snapshot_file_still_applies(tmp_path: Path) -> None:
    spec = GroupSpec("g", f"127.0.0.1:{free_ports(1)[0]}", (), str(tmp_path),
                     GroupTimings(snapshot_min_entries=1000, snapshot_min_seconds=1))
    group = PartitionGroup(spec)
    try:
        _leader(group)
        for i in range(20):
            group.submit_sync(_enqueue(b"m%d" % i, 1000 + i))
        deadline = time.monotonic() + 10
        while group._raft_log.firstIndex <= 1 and time.monotonic() < deadline:  # snapshot, then compaction
            group.submit_sync(_enqueue(b"tick", 2000))
            time.sleep(0.2)
        assert group._raft_log.firstIndex > 2
    finally:
        group.close(graceful=False)
    os.remove(tmp_path / "snapshot.tar")  # the rename that a power loss may undo

    group = PartitionGroup(spec)
    try:
        _leader(group)
        try:
            result = group.submit_sync(_enqueue(b"after", 3000), timeout=3)
        except RaftUnavailable:
            pytest.fail(f"no apply after restart: lastApplied {group.raftLastApplied}, "
                        f"commit {group.raftCommitIndex}, log first {group._raft_log.firstIndex}")
        assert "result" in result
    finally:
        group.close(graceful=False)
