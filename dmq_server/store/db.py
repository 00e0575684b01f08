"""Opening a partition's RocksDB with options measured for many small partitions per process."""

from __future__ import annotations

import os
import shutil
import threading

from rocksdict import (BlockBasedOptions, Cache, DBCompressionType, Options, Rdict, WriteBufferManager,
                       WriteOptions)


class SharedResources:
    """Block cache and memtable budget shared by every partition database of a process, made on first use."""

    def __init__(self, cache_bytes: int = 256 << 20, memtable_bytes: int = 512 << 20) -> None:
        self.cache_bytes = cache_bytes
        self.memtable_bytes = memtable_bytes
        self._cache: Cache | None = None
        self._manager: WriteBufferManager | None = None
        self._lock = threading.Lock()

    def cache(self) -> Cache:
        with self._lock:
            if self._cache is None:
                self._cache = Cache(self.cache_bytes)
            return self._cache

    def write_buffer_manager(self) -> WriteBufferManager:
        cache = self.cache()
        with self._lock:
            if self._manager is None:
                self._manager = WriteBufferManager.new_write_buffer_manager_with_cache(
                    self.memtable_bytes, False, cache)
            return self._manager


DEFAULT_RESOURCES = SharedResources()


def partition_options(resources: SharedResources, write_buffer_bytes: int) -> Options:
    options = Options(raw_mode=True)
    options.create_if_missing(True)
    # The WAL of a small partition would otherwise be kept until its memtable flushes.
    options.set_max_total_wal_size(64 << 20)
    options.set_write_buffer_size(write_buffer_bytes)
    options.set_max_write_buffer_number(3)
    options.set_max_background_jobs(2)
    options.set_bytes_per_sync(1 << 20)  # write flushes back gradually, not in one burst that stalls WAL fsyncs
    options.set_keep_log_file_num(2)
    options.set_compression_type(DBCompressionType.lz4())
    options.set_write_buffer_manager(resources.write_buffer_manager())
    # Safety net against tombstone-heavy files; consumed ranges are also compacted explicitly.
    options.add_compact_on_deletion_collector_factory(10_000, 5_000, 0.5)
    table = BlockBasedOptions()
    table.set_block_cache(resources.cache())
    table.set_bloom_filter(10, False)
    options.set_block_based_table_factory(table)
    return options


def open_partition_db(path: str, resources: SharedResources, write_buffer_bytes: int) -> Rdict:
    return Rdict(path, partition_options(resources, write_buffer_bytes))


def unsynced_writes() -> WriteOptions:
    """Writes go to the WAL without fsync: the Raft log, fsynced before acknowledging, is what makes them durable."""
    options = WriteOptions()
    options.sync = False
    return options


def replace_with_checkpoint(checkpoint_dir: str, path: str) -> None:
    """Replace the database at `path` (closed by the caller) by a copy of a checkpoint. The copy is complete before
    the old database goes; a crash between the two leaves no database, which Raft refills from its snapshot."""
    staging = path + ".restoring"
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(checkpoint_dir, staging)
    _fsync_tree(staging)  # durable before the Raft log that relies on it drops the entries it covers
    shutil.rmtree(path, ignore_errors=True)
    os.rename(staging, path)
    _fsync_path(os.path.dirname(os.path.abspath(path)))


def _fsync_path(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: str) -> None:
    """fsync every file of a directory tree (a copied checkpoint: a handful of files), then the directories."""
    for directory, _, files in os.walk(root):
        for name in files:
            _fsync_path(os.path.join(directory, name))
        _fsync_path(directory)
