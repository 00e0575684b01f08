"""Simulate a crash that loses unsynced writes (power loss) on a killed node: cut every RocksDB write-ahead log
in its data directory back to what was fsynced.

What is fsynced where (see the analysis in the module's report; file:line references are to dmq_server):

* Raft logs (``<data>/raftlog``, one database for every group of the node, or ``.../raftlog`` of a group that
  keeps a log of its own): every write is unsynced; ``LogSpace.sync`` (raft/log.py) makes all of them durable
  with ``flush_wal(True)``, before acknowledgements and votes. Which WAL sizes were durable is known only to the
  node, so the node records them: :func:`record_synced_wals` after each sync, appending ``<wal path> <size>``
  lines to a sync record (the chaos launcher `dmq_server.chaos.node` installs it; see its ``--sync-record``).
* Stores (``.../store``, partition and metadata): written without fsync (store/db.py:66-70) and never
  ``flush_wal(True)``-ed; only their SST files and MANIFEST (written by memtable flushes, which RocksDB fsyncs,
  and by the checkpoint of each snapshot, which flushes the memtable first) are durable. So the worst case
  keeps none of a store's WAL: every store WAL is cut to 0 bytes.

RocksDB's WAL is a sequence of records; a file cut anywhere recovers to a prefix (point-in-time recovery, the
default), which is exactly "lost everything after the last fsync". SST, MANIFEST, CURRENT and OPTIONS files are
left alone (RocksDB fsyncs them before using them). Not simulated: loss of un-fsynced directory entries (renames,
new files) and of un-fsynced non-RocksDB files (an incoming snapshot, a restored store copy).
"""

from __future__ import annotations

import dataclasses
import os
import re

__all__ = ["WAL_NAME", "wal_files", "record_synced_wals", "read_sync_record", "rocksdb_dirs", "LossReport",
           "lose_unsynced_writes"]

WAL_NAME = re.compile(r"^[0-9]+\.log$")  # RocksDB WAL files: 000123.log (the info log is "LOG")
MAX_DB_DIRS = 100_000  # bounds the walk of a data directory


def wal_files(db_dir: str) -> list[str]:
    try:
        names = os.listdir(db_dir)
    except FileNotFoundError:
        return []
    return sorted(os.path.join(db_dir, name) for name in names if WAL_NAME.match(name))


def record_synced_wals(db_dir: str, record_fd: int) -> None:
    """Append the size of every WAL of `db_dir` to the sync record. Call right after ``flush_wal(True)`` on the
    thread that writes that database, so no write lands between the fsync and the sizes."""
    lines = []
    for path in wal_files(db_dir):
        try:
            lines.append(f"{os.path.abspath(path)} {os.path.getsize(path)}\n")
        except FileNotFoundError:  # deleted as obsolete meanwhile (a memtable flush made it so)
            continue
    if lines:
        os.write(record_fd, "".join(lines).encode())  # one O_APPEND write: lines of concurrent dbs never mix


def read_sync_record(path: str) -> dict[str, int]:
    """WAL path -> the size at its last fsync (the last line for a path wins; a torn last line is skipped)."""
    synced: dict[str, int] = {}
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        return synced
    for line in text.split("\n"):
        wal, _, size = line.rpartition(" ")
        if wal and size.isdigit():
            synced[wal] = int(size)
    return synced


def rocksdb_dirs(data_dir: str) -> list[str]:
    """Every RocksDB database under a node's data directory (a directory holding CURRENT)."""
    found = []
    for count, (dirpath, _dirnames, filenames) in enumerate(os.walk(data_dir)):
        if count >= MAX_DB_DIRS:
            raise RuntimeError(f"more than {MAX_DB_DIRS} directories under {data_dir}")
        if "CURRENT" in filenames:
            found.append(dirpath)
    return sorted(found)


@dataclasses.dataclass
class LossReport:
    truncated: list[tuple[str, int, int]] = dataclasses.field(default_factory=list)  # (wal, size before, after)
    skipped: list[str] = dataclasses.field(default_factory=list)  # raft log WALs left whole (no sync record)

    @property
    def bytes_lost(self) -> int:
        return sum(before - after for _, before, after in self.truncated)

    def summary(self) -> str:
        files = sum(1 for _, before, after in self.truncated if after < before)
        return f"{self.bytes_lost} bytes cut from {files} WAL file(s); {len(self.skipped)} raft-log WAL(s) kept"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (dead, not yet reaped) still answers signal 0
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def lose_unsynced_writes(data_dir: str, sync_record: str | None, *, pid: int | None = None) -> LossReport:
    """Cut the WALs of a dead node's data directory to what was fsynced. Raft-log WALs are cut to the sizes in
    `sync_record` (0 for a WAL it never mentions: created after the last fsync); without a record they are left
    whole (only the stores lose their tails). Store WALs are cut to 0. `pid`: the node's process, which must have
    exited (refuses to touch a running node's files)."""
    if pid is not None and _pid_alive(pid):
        raise RuntimeError(f"process {pid} is still running; kill it before simulating the loss")
    synced = read_sync_record(sync_record) if sync_record is not None else None
    report = LossReport()
    for db in rocksdb_dirs(data_dir):
        is_log = os.path.basename(db) == "raftlog"
        for wal in wal_files(db):
            size = os.path.getsize(wal)
            if is_log and synced is None:
                report.skipped.append(wal)
                continue
            keep = min(size, synced.get(os.path.abspath(wal), 0)) if is_log and synced is not None else 0
            if keep < size:
                os.truncate(wal, keep)
            report.truncated.append((wal, size, keep))
    return report
