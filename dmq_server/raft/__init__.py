"""Raft layer of dmq: pysyncobj (published package) plus dmq's fixes and a RocksDB-backed Raft log.

Call :func:`dmq_server.raft.pysyncobj_fixes.install` once at process start, then derive Raft groups from
:class:`dmq_server.raft.pysyncobj_fixes.SyncObj` and pass a :class:`dmq_server.raft.log.RaftLog` as
``SyncObjConf(journalFile=...)``.
"""
