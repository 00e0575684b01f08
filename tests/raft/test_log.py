"""Unit tests of the RocksDB Raft log (dmq_server.raft.log.RaftLog)."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from dmq_server.raft.log import LogError, LogSpace, RaftLog, group_prefix

REPO = Path(__file__).resolve().parents[2]


def _entries(lo, hi, term=1, size=10):
    return [(b"c%d-" % i + b"x" * size, i, term) for i in range(lo, hi + 1)]


def _fill(log, lo, hi, term=1, size=10):
    for e in _entries(lo, hi, term, size):
        log.add(*e)


def test_empty_log_defaults(tmp_path):
    log = RaftLog(str(tmp_path / "l"))
    assert len(log) == 0
    assert log[:] == []
    assert log.getCurrentTerm() == 0
    assert log.getVotedForNodeId() is None
    assert log.getRaftCommitIndex() == 1
    with pytest.raises(IndexError):
        log[0]
    log.close()


def test_add_read_and_reopen(tmp_path):
    p = str(tmp_path / "l")
    log = RaftLog(p)
    _fill(log, 1, 50)
    assert len(log) == 50
    assert log[0] == (b"c1-" + b"x" * 10, 1, 1)
    assert log[-1][1] == 50
    assert [e[1] for e in log[10:20]] == list(range(11, 21))
    assert [e[1] for e in log[45:]] == list(range(46, 51))
    assert log[::10] == [log[i] for i in range(0, 50, 10)]
    assert isinstance(log[3][0], bytes)
    log.sync()
    log.close()
    log = RaftLog(p)
    assert log[:] == _entries(1, 50)
    with pytest.raises(LogError):
        log.add(b"gap", 52, 1)
    log.close()


def test_reopen_preloads_only_the_newest_entries(tmp_path):
    """Opening a long log decodes only its tail into the cache (a start-up that decoded every entry held the GIL
    long enough to starve the Raft loop); everything older is still read, from RocksDB."""
    p = str(tmp_path / "l")
    log = RaftLog(p)
    _fill(log, 1, 3000)
    log.sync()
    log.close()
    log = RaftLog(p, preload_entries=100)
    assert log._cache_len() == 100
    assert log[:] == _entries(1, 3000)
    assert log.getEntries(2900, 5) == _entries(2900, 2904)
    log.add(b"next", 3001, 2)
    assert log[-1] == (b"next", 3001, 2) and log._cache_len() == 101
    log.close()


def test_first_add_defines_first_index(tmp_path):
    log = RaftLog(str(tmp_path / "l"))
    log.add(b"a", 100, 3)
    log.add(b"b", 101, 3)
    assert log[0] == (b"a", 100, 3) and log[1] == (b"b", 101, 3) and len(log) == 2
    assert log.getEntries(99) == [] and log.getEntries(100, 1) == [(b"a", 100, 3)]
    log.close()


def test_term_and_vote_persist_and_are_synced(tmp_path):
    p = str(tmp_path / "l")
    log = RaftLog(p)
    n = log.syncCount
    log.setCurrentTerm(7, "127.0.0.1:1234")
    assert log.syncCount == n + 1 and not log.dirty  # fsynced before returning
    assert (log.getCurrentTerm(), log.getVotedForNodeId()) == (7, "127.0.0.1:1234")
    log.close()
    log = RaftLog(p)
    assert (log.getCurrentTerm(), log.getVotedForNodeId()) == (7, "127.0.0.1:1234")
    log.setCurrentTerm(8, None)
    log.close()
    log = RaftLog(p)
    assert (log.getCurrentTerm(), log.getVotedForNodeId()) == (8, None)
    log.close()


def test_commit_index_persisted_lazily_and_clamped(tmp_path):
    p = str(tmp_path / "l")
    log = RaftLog(p)
    _fill(log, 1, 10)
    log.setRaftCommitIndex(8)
    log.onOneSecondTimer()
    log.sync()
    log.close()
    log = RaftLog(p)
    assert log.getRaftCommitIndex() == 8
    log.deleteEntriesFrom(5)  # last index 5 < stored commit 8 (cannot happen with the fixes, but be safe)
    log.close()
    log = RaftLog(p)
    assert log.getRaftCommitIndex() == 5
    log.close()


def test_sync_is_group_commit(tmp_path):
    log = RaftLog(str(tmp_path / "l"))
    assert log.sync() is False  # nothing to do
    _fill(log, 1, 100)
    assert log.dirty and log.durableLastIndex == 0
    assert log.sync() is True
    assert log.syncCount == 1 and log.durableLastIndex == 100 and not log.dirty
    assert log.sync() is False and log.syncCount == 1
    log.add(b"z", 101, 1)
    log.flush()  # pysyncobj's name for it
    assert log.syncCount == 2 and log.durableLastIndex == 101
    log.close()


def test_truncation_delete_entries_from(tmp_path):
    p = str(tmp_path / "l")
    log = RaftLog(p, cache_max_entries=4)
    _fill(log, 1, 20, term=1)
    log.deleteEntriesFrom(12)  # positions >= 12, i.e. indexes >= 13
    assert len(log) == 12 and log[-1][1] == 12
    _fill(log, 13, 15, term=2)
    assert [e[2] for e in log[10:]] == [1, 1, 2, 2, 2]
    log.deleteEntriesFrom(1)  # below the cache start: only the first entry remains
    assert log[:] == _entries(1, 1)
    log.deleteEntriesFrom(5)  # past the end: no-op
    assert len(log) == 1
    log.close()
    log = RaftLog(p)
    assert log[:] == _entries(1, 1)
    _fill(log, 2, 3, term=3)
    assert [e[2] for e in log[:]] == [1, 3, 3]
    log.close()


def test_compaction_delete_entries_to(tmp_path):
    p = str(tmp_path / "l")
    log = RaftLog(p, cache_max_entries=8)
    _fill(log, 1, 100)
    log.deleteEntriesTo(40)  # keep positions >= 40, i.e. indexes >= 41
    assert len(log) == 60 and log[0][1] == 41 and log[1][1] == 42 and log[-1][1] == 100
    assert log.getEntries(40) == [] and log.getEntries(41, 2) == _entries(41, 42)
    log.deleteEntriesTo(0)
    assert log[0][1] == 41
    log.close()
    log = RaftLog(p)
    assert log[:] == _entries(41, 100)
    log.deleteEntriesTo(60)  # everything: empty, like MemoryJournal's journal[entryTo:]
    assert len(log) == 0
    log.add(b"s1", 200, 5)
    log.add(b"s2", 201, 5)
    log.close()
    log = RaftLog(p)
    assert log[:] == [(b"s1", 200, 5), (b"s2", 201, 5)]
    log.close()


def test_clear_then_snapshot_entries(tmp_path):
    p = str(tmp_path / "l")
    log = RaftLog(p)
    _fill(log, 1, 30)
    log.clear()
    assert len(log) == 0
    log.add(b"prev", 500, 4)
    log.add(b"last", 501, 4)
    log.close()
    log = RaftLog(p)
    assert log[:] == [(b"prev", 500, 4), (b"last", 501, 4)]
    log.close()


def test_get_entries_max_size_matches_pysyncobj(tmp_path):
    log = RaftLog(str(tmp_path / "l"), cache_max_entries=5)
    for i in range(1, 31):
        log.add(bytes(i * 10), i, 1)

    def stock(lst, fromIdx, count=None, maxSizeBytes=None):  # pysyncobj 0.3.17 SyncObj.__getEntries
        first = lst[0][1]
        if fromIdx is None or fromIdx < first:
            return []
        diff = fromIdx - first
        result = lst[diff:] if count is None else lst[diff:diff + count]
        if maxSizeBytes is None:
            return result
        total, i = 0, 0
        for i, entry in enumerate(result):
            total += len(entry[0])
            if total >= maxSizeBytes:
                break
        return result[:i + 1]

    model = log[:]
    for frm in (None, 0, 1, 2, 7, 24, 25, 26, 30, 31, 40):
        for count in (None, 1, 3, 100):
            for mx in (None, 1, 50, 300, 10_000):
                assert log.getEntries(frm, count, mx) == stock(model, frm, count, mx), (frm, count, mx)
    log.close()


def test_large_commands_and_small_cache_budget(tmp_path):
    p = str(tmp_path / "l")
    log = RaftLog(p, cache_max_bytes=300_000)
    big = [(os.urandom(100_000), i, 2) for i in range(1, 11)]
    for e in big:
        log.add(*e)
    assert log._cache_len() <= 3  # the budget keeps only the tail in memory
    assert log[:] == big and log[0] == big[0] and log.getEntries(2, 2) == big[1:3]
    log.close()
    assert RaftLog(p)[:] == big


def test_synced_entries_survive_kill9(tmp_path):
    """A process that synced and then dies with SIGKILL leaves a readable, prefix-consistent log."""
    p = str(tmp_path / "l")
    code = textwrap.dedent(f"""
        import os, signal
        from dmq_server.raft.log import RaftLog
        log = RaftLog({p!r})
        log.setCurrentTerm(3, "n1")
        for i in range(1, 1001):
            log.add(b"cmd%d" % i, i, 3)
        log.setRaftCommitIndex(900)
        log.sync()
        for i in range(1001, 1101):
            log.add(b"cmd%d" % i, i, 3)   # not synced: may or may not survive
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    r = subprocess.run([sys.executable, "-c", code], cwd=str(REPO), timeout=60,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
    assert r.returncode == -9
    log = RaftLog(p)
    assert log.getCurrentTerm() == 3 and log.getVotedForNodeId() == "n1"
    assert 1000 <= len(log) <= 1100 and log[0] == (b"cmd1", 1, 3)
    assert [e[1] for e in log[:]] == list(range(1, len(log) + 1))
    assert log.getRaftCommitIndex() == 900
    log.close()


def test_one_fsync_of_a_shared_space_covers_every_log_in_it(tmp_path):
    space = LogSpace(str(tmp_path / "space"))
    a, b = RaftLog(space=space, group_id="a"), RaftLog(space=space, group_id="b")
    _fill(a, 1, 3)
    _fill(b, 1, 2)
    assert a.sync() is True and a.syncCount == 1
    assert b.sync() is False and b.syncCount == 0  # a's fsync came after b's writes
    assert not b.dirty and b.durableLastIndex == 2
    _fill(b, 3, 3)
    assert b.sync() is True and b.durableLastIndex == 3
    assert a.sync() is False  # nothing written since
    a.close()
    b.close()
    space.close()


def test_groups_of_a_space_are_isolated_and_dropped_alone(tmp_path):
    """Group ids that prefix each other ("q1.p1", "q1.p10") keep apart, through truncation, compaction and
    clear; dropping one group removes its keys only."""
    path = str(tmp_path / "space")
    space = LogSpace(path)
    logs = {gid: RaftLog(space=space, group_id=gid) for gid in ("q1.p1", "q1.p10", "q1.p2")}
    for n, log in enumerate(logs.values()):
        _fill(log, 1, 20 + n)
        log.setCurrentTerm(n + 1, "n%d" % n)
    logs["q1.p1"].deleteEntriesFrom(5)  # truncation: a range delete up to the end of its entries
    logs["q1.p10"].deleteEntriesTo(10)  # compaction
    logs["q1.p2"].clear()
    for log in logs.values():
        log.close()
    space.close()
    space = LogSpace(path)
    reopened = {gid: RaftLog(space=space, group_id=gid) for gid in logs}
    assert [e[1] for e in reopened["q1.p1"][:]] == list(range(1, 6))
    assert [e[1] for e in reopened["q1.p10"][:]] == list(range(11, 22))
    assert len(reopened["q1.p2"]) == 0
    assert [log.getCurrentTerm() for log in reopened.values()] == [1, 2, 3]
    for log in reopened.values():
        log.close()
    space.drop("q1.p1")
    assert not [k for k in space.db.keys() if k.startswith(group_prefix("q1.p1"))]
    assert [e[1] for e in RaftLog(space=space, group_id="q1.p10")[:]] == list(range(11, 22))
    assert RaftLog(space=space, group_id="q1.p1").getCurrentTerm() == 0
    space.close()


class LogModel(RuleBasedStateMachine):
    """Random operation sequences against a plain list (what MemoryJournal does), with reopens."""

    def __init__(self):
        super().__init__()
        import tempfile
        self.dir = tempfile.mkdtemp(prefix="dmq-raftlog-")
        self.path = os.path.join(self.dir, "l")
        self.log = RaftLog(self.path, cache_max_entries=6, cache_max_bytes=2_000)
        self.model = []
        self.term = 1

    def _next_idx(self):
        return self.model[-1][1] + 1 if self.model else 1

    @rule(n=st.integers(1, 8), size=st.integers(0, 400), bump=st.booleans())
    def add(self, n, size, bump):
        if bump:
            self.term += 1
        for _ in range(n):
            e = (os.urandom(size), self._next_idx(), self.term)
            self.log.add(*e)
            self.model.append(e)

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def delete_from(self, data):
        pos = data.draw(st.integers(1, len(self.model)))
        self.log.deleteEntriesFrom(pos)
        del self.model[pos:]

    @precondition(lambda self: len(self.model) > 2)
    @rule(data=st.data())
    def delete_to(self, data):
        pos = data.draw(st.integers(0, len(self.model) - 2))
        self.log.deleteEntriesTo(pos)
        self.model = self.model[pos:]

    @rule(sync=st.booleans())
    def reopen(self, sync):
        if sync:
            self.log.sync()
        self.log.close()
        self.log = RaftLog(self.path, cache_max_entries=6, cache_max_bytes=2_000)

    @rule(data=st.data())
    def read(self, data):
        n = len(self.model)
        a = data.draw(st.integers(-n - 2, n + 2))
        b = data.draw(st.integers(-n - 2, n + 2))
        assert self.log[a:b] == self.model[a:b]
        assert self.log[a:] == self.model[a:]
        if n:
            i = data.draw(st.integers(-n, n - 1))
            assert self.log[i] == self.model[i]

    @invariant()
    def same(self):
        assert len(self.log) == len(self.model)
        if self.model:
            assert self.log[0] == self.model[0] and self.log[-1] == self.model[-1]

    def teardown(self):
        self.log.close()
        import shutil
        shutil.rmtree(self.dir, ignore_errors=True)


TestLogModel = LogModel.TestCase
TestLogModel.settings = settings(max_examples=40, stateful_step_count=30, deadline=None,
                                 suppress_health_check=[HealthCheck.too_slow])


class SharedSpaceLogModel(LogModel):
    """The same, for a log sharing its space with a neighbour whose group id extends its own: nothing done to
    one log touches the other."""

    def __init__(self):
        super().__init__()
        self.log.close()
        self.space = LogSpace(os.path.join(self.dir, "space"))
        self._open()
        self.neighbour_entries = _entries(1, 30)
        for e in self.neighbour_entries:
            self.neighbour.add(*e)

    def _open(self):
        self.log = RaftLog(space=self.space, group_id="q7.p1", cache_max_entries=6, cache_max_bytes=2_000)
        self.neighbour = RaftLog(space=self.space, group_id="q7.p10", cache_max_entries=6)

    @rule(sync=st.booleans())
    def reopen(self, sync):
        if sync:
            self.log.sync()
        self.log.close()
        self.neighbour.close()
        self.space.close()
        self.space = LogSpace(os.path.join(self.dir, "space"))
        self._open()

    @invariant()
    def neighbour_untouched(self):
        if hasattr(self, "neighbour_entries"):
            assert self.neighbour[:] == self.neighbour_entries

    def teardown(self):
        self.log.close()
        self.neighbour.close()
        self.space.close()
        super().teardown()


TestSharedSpaceLogModel = SharedSpaceLogModel.TestCase
TestSharedSpaceLogModel.settings = settings(max_examples=30, stateful_step_count=30, deadline=None,
                                            suppress_health_check=[HealthCheck.too_slow])
