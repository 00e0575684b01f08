"""A Raft log kept in RocksDB, plugged into pysyncobj in place of its journal.

pysyncobj talks to its log through the ``pysyncobj.journal.Journal`` interface: ``add``, ``clear``,
``deleteEntriesFrom`` / ``deleteEntriesTo`` (both take *positions* in the log, not Raft indexes), ``__getitem__``
with ints and slices, ``__len__``, the commit-index / current-term / vote getters and setters, ``onOneSecondTimer``,
``flush`` and ``_destroy``. An entry is the tuple ``(command: bytes, index: int, term: int)``; the indexes of the
entries in the log are contiguous, the first one being whatever the first ``add`` after an empty log said.

Durability model (group commit):

* Every mutation is written with ``sync=False`` (WAL on). RocksDB's WAL is prefix-consistent, so after a crash the
  log is always a prefix of what was written, and a stored commit index never points past the stored entries.
* :meth:`RaftLog.sync` (alias :meth:`flush`) makes everything written so far durable with ONE
  ``flush_wal(sync=True)``, which releases the GIL during the fsync. It is a no-op when nothing was written since the
  last sync, and fsyncs nothing when a fsync of the shared space since this log's last write (another group's)
  already covered it. ``pysyncobj_fixes.SyncObj`` calls it before a follower acknowledges ``append_entries`` and before the
  leader counts its own entries toward the commit index.
* :meth:`setCurrentTerm` (term + vote) is written and fsynced before it returns, i.e. before pysyncobj sends a vote or
  a vote request that reflects it.
* The commit index is only a restart hint (it lets a restarted node re-apply its committed entries without waiting
  for a leader); it is written lazily (``onOneSecondTimer`` / ``sync``) and clamped to the last entry on open.

Storage layout (raw mode, big-endian integers, default column family only). A :class:`LogSpace` is one RocksDB
database. A node keeps the logs of all its groups in one space, each under its own key prefix ``P`` (``b"g"`` +
the group id's length (2) + the group id), so that one WAL fsync makes the writes of every group durable: a round
of the node's Raft loop in which several groups appended pays for one fsync, not one per group. A log opened on a
path of its own (tests, tools, a data directory written before the node shared its log) has the empty prefix.

* ``P + b"e" + index(8)``  -> ``term(8) + command``    one key per entry
* ``P + b"mfirst"``        -> ``index(8)``               first index of the log; absent when the log is empty
* ``P + b"mterm"``         -> ``term(8) + vote``         vote: ``b"\\x00"`` for None, ``b"\\x01" + utf-8 node id``
* ``P + b"mcommit"``       -> ``index(8)``               commit-index hint

Entries are removed with range deletes (one tombstone per truncation or compaction). Reads of recent entries come
from an in-memory tail cache, because pysyncobj reads the tail constantly (sending to followers, applying); older
entries (slow followers, replay after a restart) are read from RocksDB. The cache is a pure read cache: every entry
is in RocksDB before ``add`` returns, and nothing is acknowledged before :meth:`sync`.
"""

from __future__ import annotations

import os
import struct
import threading
import time
from collections.abc import Callable

from pysyncobj.journal import Journal
from rocksdict import Options, ReadOptions, Rdict, WriteBatch, WriteOptions

__all__ = ["RaftLog", "LogSpace", "LogError"]

_U64 = struct.Struct(">Q")
_ENTRY_PREFIX = b"e"
_ENTRY_END = b"f"  # exclusive upper bound of the entry key range (after the group's prefix)
_K_FIRST = b"mfirst"
_K_TERM = b"mterm"
_K_COMMIT = b"mcommit"
_GROUP_MARK = b"g"
_AFTER_GROUP_KEYS = b"\xff"  # a group's keys are its prefix + b"e..." or b"m..."
MAX_GROUP_ID_BYTES = 1024
_ENTRY_OVERHEAD = 96  # rough per-entry memory overhead of a cached tuple, for the cache byte budget


class LogError(Exception):
    """The caller broke the log's contract (non-contiguous index, ...) or the stored log is inconsistent."""


def group_prefix(group_id: str) -> bytes:
    """The key prefix of one group's log in a shared space. Length-prefixed, so no group's keys fall inside
    another's range (``a`` and ``ab`` included)."""
    raw = group_id.encode("utf-8")
    assert 0 < len(raw) <= MAX_GROUP_ID_BYTES, group_id
    return _GROUP_MARK + len(raw).to_bytes(2, "big") + raw


def group_keys(group_id: str) -> tuple[bytes, bytes]:
    """The key range [low, high) of one group's log in a shared space."""
    prefix = group_prefix(group_id)
    return prefix, prefix + _AFTER_GROUP_KEYS


def _log_options() -> Options:
    options = Options(raw_mode=True)
    options.create_if_missing(True)
    options.set_max_background_jobs(2)
    options.set_max_total_wal_size(64 << 20)
    options.set_write_buffer_size(16 << 20)
    # Write flushed SST files back 1 MiB at a time: one large writeback at a flush's end made the next WAL
    # fsync wait behind it for hundreds of milliseconds, long enough for an election.
    options.set_bytes_per_sync(1 << 20)
    return options


class LogSpace:
    """One RocksDB database holding Raft logs, and the fsync that makes them durable (group commit).

    Writes are numbered; a log remembers the number of its last write and asks :meth:`sync` for it, which fsyncs
    only when no fsync since that write has covered it already (a fsync of the WAL covers every write made
    before it, whichever log made it)."""

    def __init__(self, path: str, options: Options | None = None) -> None:
        os.makedirs(path, exist_ok=True)
        self.path = path
        self.db = Rdict(path, options if options is not None else _log_options())
        self._lock = threading.Lock()
        self._written = 0  # number of the last write
        self._synced = 0  # writes up to this number are durable
        self._closed = False

    def wrote(self) -> int:
        """Count a write that has returned; its number, for :meth:`sync`."""
        with self._lock:
            self._written += 1
            return self._written

    def sync(self, written: int) -> bool:
        """Make the writes up to number `written` durable: one WAL fsync (GIL released), unless one since did.
        True if it fsynced."""
        with self._lock:
            if written <= self._synced:
                return False
            covered = self._written
        started = time.perf_counter()
        self.db.flush_wal(True)
        RaftLog.observe_fsync(time.perf_counter() - started)
        with self._lock:
            self._synced = max(self._synced, covered)
        return True

    def sync_all(self) -> None:
        """Make every write so far durable, numbered or not (a commit hint, a range delete): one fsync."""
        self.sync(self.wrote())

    def drop(self, group_id: str) -> None:
        """Delete every key of one group's log (its group was removed; its log is closed), durably."""
        self.db.delete_range(*group_keys(group_id))
        self.sync_all()

    def close(self) -> None:
        if self._closed:
            return
        self.sync_all()
        self.db.close()
        self._closed = True


class RaftLog(Journal):
    # Called with every fsync's duration in seconds; the node points it at its metrics (one node per process).
    observe_fsync: Callable[[float], None] = staticmethod(lambda seconds: None)
    """RocksDB-backed Raft log for pysyncobj (see the module docstring).

    Not thread-safe for concurrent mutation: pysyncobj calls it from its tick thread only. ``len()`` and the
    properties may be read from other threads.
    """

    def __init__(self, path: str | None = None, *, space: LogSpace | None = None, group_id: str | None = None,
                 cache_max_bytes: int = 64 << 20, cache_max_entries: int = 200_000, preload_entries: int = 1024,
                 options: Options | None = None):
        """A log of its own at `path`, or the log of `group_id` in a node's shared `space`."""
        assert (path is None) != (space is None), "a log lives at a path of its own or in a shared space"
        assert (space is None) == (group_id is None), "a log in a shared space belongs to a group"
        assert space is None or options is None, "a shared space was opened with its own options"
        self._owns_space = space is None
        self._space = LogSpace(path, options) if space is None else space
        self._path = self._space.path
        self._db = self._space.db
        prefix = b"" if group_id is None else group_prefix(group_id)
        self._prefix = prefix
        self._entry_prefix = prefix + _ENTRY_PREFIX
        self._entry_end = prefix + _ENTRY_END
        self._k_first, self._k_term, self._k_commit = prefix + _K_FIRST, prefix + _K_TERM, prefix + _K_COMMIT
        self._index_at = len(self._entry_prefix)  # where the index starts in an entry key
        self._written = 0  # the space's number of this log's last write
        self._wo = WriteOptions()
        self._wo.sync = False
        self._cache_max_bytes = max(1, int(cache_max_bytes))
        self._cache_max_entries = max(2, int(cache_max_entries))
        self._lock = threading.Lock()  # guards the (rare) cross-thread readers against cache compaction
        self._closed = False

        # Durability bookkeeping
        self._dirty = False  # something was written since the last flush_wal(sync=True)
        self._sync_count = 0  # number of fsyncs performed (metrics / tests)
        self._durable_last = 0  # last index known durable (0: none)

        # Meta
        raw = self._db.get(self._k_term)
        if raw is None:
            self._term, self._vote = 0, None
        else:
            self._term = _U64.unpack_from(raw)[0]
            self._vote = raw[9:].decode("utf-8") if raw[8:9] == b"\x01" else None
        raw = self._db.get(self._k_commit)
        self._commit = _U64.unpack(raw)[0] if raw is not None else 1
        self._commit_saved = True

        # Bounds
        raw = self._db.get(self._k_first)
        last = self._find_last_index()
        if raw is None and last is not None:
            raise LogError(f"stored log has entries (up to {last}) but no first-index record")
        if raw is None or last is None:
            self._first, self._last = 0, -1  # empty: len == 0
        else:
            self._first, self._last = _U64.unpack(raw)[0], last
            if self._last < self._first:
                raise LogError(f"stored log bounds inconsistent: first={self._first} last={self._last}")
        self._durable_last = self._last if self._last >= self._first else 0
        if self._last >= self._first and self._commit > self._last:
            self._commit = self._last  # a commit hint never points past the log (cf. pysyncobj PR #197)

        # Tail cache: entries for indexes [self._cache_start, self._last], stored in self._cache[self._cache_off:]
        self._cache: list = []
        self._cache_off = 0
        self._cache_bytes = 0
        self._cache_start = self._last + 1
        self._head: list = []  # the first (up to) 2 entries, pysyncobj reads log[0] and log[1] constantly
        if len(self) > 0:
            # Only the newest entries: decoding the whole log (100k+ entries after a busy half hour) held the GIL
            # for ~200 ms per group at start-up, long enough to starve the Raft loop into spurious elections.
            # Older entries are read from RocksDB when a follower that far behind asks for them.
            start = max(self._first, self._last - min(self._cache_max_entries, max(1, preload_entries)) + 1)
            entries = self._read_db(start, self._last + 1)
            if len(entries) != self._last - start + 1 or (entries and entries[0][1] != start):
                raise LogError(f"stored log has a gap between {start} and {self._last}")
            self._cache_start = start
            for e in entries:
                self._cache_append(e)
            self._trim_cache()
        self._refresh_head()

    # ------------------------------------------------------------------ helpers

    def _ekey(self, index: int) -> bytes:
        return self._entry_prefix + _U64.pack(index)

    def _decode_entry(self, key: bytes, value: bytes) -> tuple:
        return (value[8:], _U64.unpack_from(key, self._index_at)[0], _U64.unpack_from(value)[0])

    def _find_last_index(self):
        ro = ReadOptions()
        ro.set_iterate_upper_bound(self._entry_end)
        for key in self._db.keys(backwards=True, from_key=self._entry_end, read_opt=ro):
            if key[:self._index_at] == self._entry_prefix:
                return _U64.unpack_from(key, self._index_at)[0]
            break
        return None

    def _read_db(self, lo: int, hi: int, max_bytes: int | None = None) -> list:
        """Entries with lo <= index < hi from RocksDB, stopping after the entry that reaches max_bytes."""
        if hi <= lo:
            return []
        ro = ReadOptions()
        ro.set_iterate_upper_bound(self._ekey(hi))
        out = []
        total = 0
        for key, value in self._db.items(from_key=self._ekey(lo), read_opt=ro):
            e = self._decode_entry(key, value)
            out.append(e)
            if max_bytes is not None:
                total += len(e[0])
                if total >= max_bytes:
                    break
        return out

    def _cache_append(self, entry) -> None:
        self._cache.append(entry)
        self._cache_bytes += len(entry[0]) + _ENTRY_OVERHEAD

    def _cache_len(self) -> int:
        return len(self._cache) - self._cache_off

    def _trim_cache(self) -> None:
        # Drop the oldest cached entries while over budget, always keeping the last one.
        while self._cache_len() > 1 and (self._cache_bytes > self._cache_max_bytes or
                                         self._cache_len() > self._cache_max_entries):
            e = self._cache[self._cache_off]
            self._cache_bytes -= len(e[0]) + _ENTRY_OVERHEAD
            self._cache_off += 1
            self._cache_start += 1
        self._compact_cache_list()

    def _compact_cache_list(self) -> None:
        if self._cache_off > 1024 and self._cache_off * 2 > len(self._cache):
            with self._lock:
                del self._cache[:self._cache_off]
                self._cache_off = 0

    def _reset_cache(self, start: int) -> None:
        with self._lock:
            self._cache = []
            self._cache_off = 0
            self._cache_bytes = 0
            self._cache_start = start

    def _refresh_head(self) -> None:
        if len(self) == 0:
            self._head = []
        else:
            self._head = self._range(self._first, min(self._first + 2, self._last + 1))

    def _range(self, lo: int, hi: int, max_bytes: int | None = None) -> list:
        """Entries with lo <= index < hi (clamped to the log), optionally cut like pysyncobj's __getEntries."""
        lo = max(lo, self._first)
        hi = min(hi, self._last + 1)
        if hi <= lo:
            return []
        if lo >= self._cache_start:
            with self._lock:
                base = self._cache_off - self._cache_start
                out = self._cache[base + lo:base + hi]
            if max_bytes is not None:
                out = _cut(out, max_bytes)
            return out
        out = self._read_db(lo, min(hi, self._cache_start), max_bytes)
        if max_bytes is not None:
            total = sum(len(e[0]) for e in out)
            if total >= max_bytes or hi <= self._cache_start:
                return out
            return out + _cut(self._range(self._cache_start, hi), max_bytes - total)
        if hi > self._cache_start:
            out.extend(self._range(self._cache_start, hi))
        return out

    def _mark_written(self) -> None:
        self._dirty = True
        self._written = self._space.wrote()

    # ------------------------------------------------------------------ Journal interface

    def add(self, command, idx, term):
        if not isinstance(command, bytes):
            command = bytes(command)
        if len(self) == 0:
            first = idx
        elif idx != self._last + 1:
            raise LogError(f"non-contiguous append: index {idx} after {self._last}")
        else:
            first = None
        if first is not None:
            wb = WriteBatch(raw_mode=True)
            wb.put(self._ekey(idx), _U64.pack(term) + command)
            wb.put(self._k_first, _U64.pack(idx))
            self._db.write(wb, self._wo)
            self._first = idx
            self._reset_cache(idx)
        else:
            self._db.put(self._entry_prefix + _U64.pack(idx), _U64.pack(term) + command, self._wo)
        self._mark_written()
        entry = (command, idx, term)
        self._last = idx
        self._cache_append(entry)
        if len(self._head) < 2:
            self._head.append(entry)
        if self._cache_bytes > self._cache_max_bytes or self._cache_len() > self._cache_max_entries:
            self._trim_cache()

    def extend(self, entries) -> None:
        """Append several entries (same contract as repeated :meth:`add`)."""
        for e in entries:
            self.add(*e)

    def clear(self):
        if len(self) > 0:
            wb = WriteBatch(raw_mode=True)
            wb.delete_range(self._ekey(0), self._entry_end)
            wb.delete(self._k_first)
            self._db.write(wb, self._wo)
            self._mark_written()
        self._first, self._last = 0, -1
        self._durable_last = min(self._durable_last, 0)
        self._reset_cache(0)
        self._head = []

    def deleteEntriesFrom(self, entryFrom):
        """Delete the entries at positions >= entryFrom (Raft conflict truncation)."""
        n = len(self)
        if entryFrom < 0:
            entryFrom = max(0, n + entryFrom)
        if entryFrom >= n:
            return
        if entryFrom == 0:
            self.clear()
            return
        idx_from = self._first + entryFrom
        self._db.delete_range(self._ekey(idx_from), self._entry_end, self._wo)
        self._mark_written()
        self._last = idx_from - 1
        self._durable_last = min(self._durable_last, self._last)
        if idx_from > self._cache_start:
            with self._lock:
                keep = self._cache_off + (idx_from - self._cache_start)
                for e in self._cache[keep:]:
                    self._cache_bytes -= len(e[0]) + _ENTRY_OVERHEAD
                del self._cache[keep:]
        else:
            self._reset_cache(idx_from)
        self._head = [e for e in self._head if e[1] <= self._last]

    def deleteEntriesTo(self, entryTo):
        """Delete the entries at positions < entryTo (compaction after a snapshot)."""
        n = len(self)
        if entryTo <= 0:
            return
        if entryTo >= n:
            self.clear()
            return
        new_first = self._first + entryTo
        wb = WriteBatch(raw_mode=True)
        wb.delete_range(self._ekey(self._first), self._ekey(new_first))
        wb.put(self._k_first, _U64.pack(new_first))
        self._db.write(wb, self._wo)
        self._mark_written()
        self._first = new_first
        if new_first > self._cache_start:
            with self._lock:
                drop = new_first - self._cache_start
                for e in self._cache[self._cache_off:self._cache_off + drop]:
                    self._cache_bytes -= len(e[0]) + _ENTRY_OVERHEAD
                self._cache_off += drop
                self._cache_start = new_first
            self._compact_cache_list()
        self._refresh_head()

    def __getitem__(self, item):
        n = len(self)
        if isinstance(item, slice):
            start, stop, step = item.indices(n)
            if step != 1:
                return [self[i] for i in range(start, stop, step)]
            return self._range(self._first + start, self._first + stop)
        if item < 0:
            item += n
        if item < 0 or item >= n:
            raise IndexError("log index out of range")
        if item < len(self._head):
            return self._head[item]
        idx = self._first + item
        if idx >= self._cache_start:
            with self._lock:
                return self._cache[self._cache_off + idx - self._cache_start]
        return self._range(idx, idx + 1)[0]

    def __len__(self):
        return self._last - self._first + 1

    def getEntries(self, fromIdx, count=None, maxSizeBytes=None):
        """pysyncobj's ``SyncObj.__getEntries`` semantics, reading only what is needed.

        Entries from Raft index ``fromIdx`` (``[]`` if it is None or below the first entry), at most ``count`` of
        them, and when ``maxSizeBytes`` is given cut after the entry at which the summed command sizes reach it.
        """
        if fromIdx is None or len(self) == 0 or fromIdx < self._first:
            return []
        hi = self._last + 1 if count is None else min(self._last + 1, fromIdx + count)
        return self._range(fromIdx, hi, maxSizeBytes)

    @property
    def firstIndex(self) -> int:
        return self._first

    @property
    def lastIndex(self) -> int:
        return self._last

    # --- meta

    def setRaftCommitIndex(self, raftCommitIndex):
        if raftCommitIndex != self._commit:
            self._commit = raftCommitIndex
            self._commit_saved = False

    def getRaftCommitIndex(self):
        return self._commit

    def setCurrentTerm(self, term, votedForNodeId):
        vote = b"\x00" if votedForNodeId is None else b"\x01" + str(votedForNodeId).encode("utf-8")
        self._db.put(self._k_term, _U64.pack(term) + vote, self._wo)
        self._mark_written()
        self.sync()  # Raft: term and vote are durable before any message reflecting them is sent
        self._term, self._vote = term, votedForNodeId

    def getCurrentTerm(self):
        return self._term

    def getVotedForNodeId(self):
        return self._vote

    def _save_commit(self) -> None:
        if not self._commit_saved:
            # Not marked dirty: the hint rides along with the next fsync (or close) - an idle group does no fsync.
            self._db.put(self._k_commit, _U64.pack(self._commit), self._wo)
            self._commit_saved = True

    def onOneSecondTimer(self):
        self._save_commit()

    # --- durability

    def sync(self) -> bool:
        """Make every write so far durable: one WAL fsync (GIL released), unless a fsync of the space made after
        this log's last write (another group's, in a shared space) did it already. Returns True if it fsynced."""
        if not self._dirty:
            return False
        self._save_commit()
        fsynced = self._space.sync(self._written)
        self._dirty = False
        self._sync_count += fsynced
        self._durable_last = self._last if len(self) else 0
        return fsynced

    flush = sync

    @property
    def dirty(self) -> bool:
        return self._dirty

    @property
    def syncCount(self) -> int:
        return self._sync_count

    @property
    def durableLastIndex(self) -> int:
        """Last index covered by the last fsync (0 when unknown / empty)."""
        return self._durable_last

    def _destroy(self):
        self.close()

    def close(self) -> None:
        """Durable, then closed; a shared space stays open for the other groups."""
        if self._closed:
            return
        self._save_commit()
        if self._owns_space:
            self._space.close()
        else:
            self._space.sync_all()  # the commit hint too
        self._dirty = False
        self._closed = True

    def __repr__(self):
        return f"RaftLog(first={self._first}, last={self._last}, term={self._term}, vote={self._vote!r})"


def _cut(entries: list, max_bytes: int) -> list:
    total = 0
    for i, e in enumerate(entries):
        total += len(e[0])
        if total >= max_bytes:
            return entries[:i + 1]
    return entries
