"""pysyncobj publishes snapshots with a bare rename; dmq's replacement makes the file and the rename durable
before pysyncobj compacts the log on the strength of the snapshot (tests/chaos/test_snapshot_loss.py shows what a
lost rename did)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pysyncobj.serializer

from dmq_server.raft import pysyncobj_fixes


def test_install_routes_snapshot_renames_through_durable_replace() -> None:
    pysyncobj_fixes.install()
    assert pysyncobj.serializer.atomicReplace is pysyncobj_fixes.durable_replace


def test_durable_replace_fsyncs_the_file_and_then_its_directory(tmp_path: Path, monkeypatch) -> None:
    source, target = tmp_path / "snapshot.tar.tmp", tmp_path / "snapshot.tar"
    source.write_bytes(b"new")
    target.write_bytes(b"old")
    synced: list[tuple[str, bool]] = []  # (what, did the rename happen yet)
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        kind = "dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file"
        synced.append((kind, target.read_bytes() == b"new"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    assert pysyncobj_fixes.durable_replace(str(source), str(target)) is True
    assert target.read_bytes() == b"new" and not source.exists()
    assert synced == [("file", False), ("dir", True)]
