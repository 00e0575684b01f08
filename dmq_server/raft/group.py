"""A Raft group: pysyncobj (with dmq's fixes) over a RocksDB log, a store as the state machine (a queue
partition's store unless told otherwise, or the metadata store), its checkpoints as snapshots.

Commands travel as opaque msgpack bytes through ONE replicated entry point (a second @replicated method would
shift pysyncobj's method ids). The state machine never raises on a bad command: the store's typed error becomes
the result, because pysyncobj re-applies an entry that raised on every tick, forever.
"""

from __future__ import annotations

import collections
import dataclasses
import enum
import io
import logging
import os
import shutil
import tarfile
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

import msgpack
from pysyncobj import SyncObjConf, replicated
from pysyncobj.config import FAIL_REASON

from dmq_server.store import CommandError, PartitionStoreFactory, StoreOptions

from . import pysyncobj_fixes
from .host import RaftHost
from .log import LogSpace, RaftLog

log = logging.getLogger(__name__)

# A command is bounded well below what one Raft entry should carry: a batch of 1,000 messages of 1 KiB, or one
# of the largest messages a queue accepts, with room for the envelope.
MAX_COMMAND_BYTES = 2 << 20
HANDOVER_PATIENCE = 1.0  # seconds a leadership handover keeps asking for a target that is not caught up yet
STEP_DOWN_RETRY = 0.1  # seconds: a planned stop's handover is asked again this often while this replica leads
_SNAPSHOT_META = "raft.msgpack"
_SNAPSHOT_STORE = "store"

Result = dict[str, Any]
Callback = Callable[[Result], None]
T = TypeVar("T")


class StateMachine(Protocol):
    """What a group replicates: deterministic, applies each Raft index once, durable up to applied_index."""

    @property
    def applied_index(self) -> int: ...

    def apply(self, index: int, command: Any) -> Any:
        """Apply the command at `index` (a no-op at or below applied_index); raise CommandError to reject it."""

    def checkpoint(self, target_dir: str) -> None:
        """A consistent copy of the state at applied_index into a new directory."""

    def close(self) -> None: ...


class StoreFactory(Protocol):
    def open(self, path: str) -> StateMachine: ...

    def restore(self, checkpoint_dir: str, path: str) -> StateMachine:
        """Replace the store at `path` (closed) by the checkpoint's content and open it."""


class AckMode(str, enum.Enum):
    """When a write is acknowledged. QUORUM: committed on a majority, each of which fsynced it; survives the
    loss of any minority. LEADER: fsynced on the leader, replicated after (the seed's asynchronous
    replication): faster, but a write the leader had not yet replicated when it failed can be lost, since the
    new leader overwrites that index."""

    QUORUM = "quorum"
    LEADER = "leader"


class _LeaderAck:
    """A submit acknowledged when the leader's log has the entry durably, before it commits."""

    __slots__ = ("callback", "fired")

    def __init__(self, callback: Callback) -> None:
        self.callback = callback
        self.fired = False

    def durable(self, index: int, term: int) -> None:
        if not self.fired:
            self.fired = True
            self.callback({"accepted": {"index": index, "term": term}})

    def finished(self, outcome: Result) -> None:
        if not self.fired:  # failed (or committed) before the leader's fsync was seen
            self.fired = True
            self.callback(outcome)


class RaftUnavailable(Exception):
    """The group cannot take the command now; `leader` is the address a client should try instead, if known."""

    def __init__(self, code: str, message: str, leader: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.leader = leader


@dataclasses.dataclass(frozen=True)
class GroupTimings:
    """Raft timing. The election timeout bounds failover; it must stay well above the heartbeat (pysyncobj
    requires 3x) and above tick stalls on a loaded 2-core machine, or load alone triggers elections."""

    heartbeat: float = 0.05
    election_min: float = 0.3
    election_max: float = 0.45
    connection_timeout: float = 3.5
    tick: float = 0.005
    snapshot_min_entries: int = 200_000
    snapshot_min_seconds: int = 600
    quiet_after: float | None = 1.0  # idle seconds before the group stops heartbeating on a RaftHost; None: never


@dataclasses.dataclass(frozen=True)
class GroupSpec:
    group_id: str
    self_address: str  # this replica's Raft address, host:port
    peers: tuple[str, ...]  # the other replicas
    data_dir: str
    timings: GroupTimings = GroupTimings()
    password: str | None = None  # authenticates inter-node traffic when the group owns its TCP transport
    bind_address: str | None = None  # where its own TCP transport listens (default: self_address)


def _encode_entry(entry: tuple[bytes, int, int]) -> list[Any]:
    return [entry[0], entry[1], entry[2]]


def _decode_entry(raw: list[Any]) -> tuple[bytes, int, int]:
    return raw[0], raw[1], raw[2]


class PartitionGroup(pysyncobj_fixes.SyncObj):
    """One replica of one Raft group. Thread model: pysyncobj's tick thread (or a host's) applies commands and
    runs callbacks; `submit` may be called from any thread."""

    def __init__(self, spec: GroupSpec, *, store_options: StoreOptions | None = None,
                 host: RaftHost | None = None, store_factory: StoreFactory | None = None,
                 log_space: LogSpace | None = None) -> None:
        """With a `host`, the group shares the node's port, connections and loop thread (how a node runs many
        partitions); without one it owns a pysyncobj TCP transport and tick thread (tests, tools). The state
        machine comes from `store_factory`, by default a partition store with `store_options`. With a
        `log_space`, the Raft log is kept in the node's shared log (one fsync for all groups); without one, or
        when the data directory already holds a log of its own, in `data_dir/raftlog`."""
        assert store_factory is None or store_options is None, "store options belong to the store factory"
        if not pysyncobj_fixes.installed():
            pysyncobj_fixes.install()
        os.makedirs(spec.data_dir, exist_ok=True)
        self.spec = spec
        self._host = host
        self._store_path = os.path.join(spec.data_dir, "store")
        self._store_factory: StoreFactory = store_factory or PartitionStoreFactory(store_options)
        # The store and its lock exist before SyncObj starts ticking: loading a dump happens on the tick thread.
        self._store_lock = threading.RLock()
        self.store = self._store_factory.open(self._store_path)
        own_log = os.path.join(spec.data_dir, "raftlog")
        if log_space is None or os.path.isdir(own_log):
            self._raft_log = RaftLog(own_log)
        else:
            self._raft_log = RaftLog(space=log_space, group_id=spec.group_id)
        timings = spec.timings
        conf = SyncObjConf(
            journalFile=self._raft_log,
            fullDumpFile=os.path.join(spec.data_dir, "snapshot.tar"),
            serializer=self._serialize,
            deserializer=self._deserialize,
            autoTick=host is None,
            autoTickPeriod=timings.tick,
            appendEntriesUseBatch=False,  # send at once: a lone command does not wait for a batching tick
            appendEntriesPeriod=timings.heartbeat,
            raftMinTimeout=timings.election_min,
            raftMaxTimeout=timings.election_max,
            leaderFallbackTimeout=timings.election_max * 2,
            connectionTimeout=timings.connection_timeout,
            connectionRetryTime=0.5,
            commandsQueueSize=10_000,
            logCompactionMinEntries=timings.snapshot_min_entries,
            logCompactionMinTime=timings.snapshot_min_seconds,
            password=spec.password,
            bindAddress=spec.bind_address or spec.self_address,  # never pysyncobj's default, 0.0.0.0
            dynamicMembershipChange=False,
            onStateChanged=self._on_state_changed,
        )
        transport = None if host is None else host.transport_for(spec.group_id)
        if timings.quiet_after is None:
            self._dmq_quiesce = False
        else:
            self._dmq_quietAfter = timings.quiet_after
        self._tick_actions: collections.deque[Callable[[], None]] = collections.deque()
        super().__init__(spec.self_address, list(spec.peers), conf, transport=transport)
        if host is not None:
            host.add(self)

    def _on_state_changed(self, old: int, new: int) -> None:
        log.info("group %s: %s -> %s in term %d", self.spec.group_id, _STATES.get(old, old), _STATES.get(new, new),
                 self.raftCurrentTerm)
        if old == _LEADER and new != _LEADER and self._lost_majority():
            self._release_waiting_commands()

    def _lost_majority(self) -> bool:
        """The step-down was pysyncobj's leader fallback: no majority answered within leaderFallbackTimeout (the
        test of SyncObj._onTick). Not a handover or a higher term seen: the majority is reachable then, the next
        leader commits the waiting entries, and their commands are answered as this replica applies them."""
        deadline = time.monotonic() - self._SyncObj__conf.leaderFallbackTimeout
        heard = self._SyncObj__lastResponseTime
        others = self._SyncObj__otherNodes
        responding = 1 + sum(1 for node in others if heard.get(node, 0.0) > deadline)
        return responding <= (len(others) + 1) / 2

    def _release_waiting_commands(self) -> None:
        """A leader cut off from its majority answers the commands still waiting for a commit at once: "outcome
        unknown, retry" (the entry may yet commit under the next leader; a retry with the same batch or dedup ids
        is answered from it). pysyncobj would keep them until this replica applies their indexes, after the
        partition heals, so clients waited for their own timeouts while another leader was already serving."""
        waiting = self._SyncObj__commandsWaitingCommit
        callbacks = [callback for subscribers in waiting.values() for _, callback in subscribers]
        waiting.clear()
        for callback in callbacks:
            callback(None, FAIL_REASON.LEADER_CHANGED)

    # ------------------------------------------------------------------ the state machine

    def _dmq_resumeIndex(self) -> int:
        return self.store.applied_index

    @replicated
    def _apply_entry(self, data: bytes) -> Result:
        index = self.raftLastApplied + 1
        try:
            command = msgpack.unpackb(data)
        except Exception:  # bytes from our own leader; undecodable means a bug, never a reason to halt the group
            log.error("group %s: undecodable command at index %d", self.spec.group_id, index)
            return {"error": "InvalidCommand", "message": "command is not valid msgpack"}
        try:
            with self._store_lock:
                return {"result": self.store.apply(index, command)}
        except CommandError as error:
            return {"error": error.code, "message": error.message}

    # ------------------------------------------------------------------ submitting

    def submit(self, command: dict[str, Any], callback: Callback, ack: AckMode = AckMode.QUORUM) -> None:
        """Replicate `command` and call `callback` once, from the tick thread. QUORUM: with {"result": ...} or
        {"error": code, "message": ...} once it is committed on a majority and applied here. LEADER: with
        {"accepted": {"index", "term"}} once the leader's log holds it durably (its result is not waited for),
        or with an error."""
        data = msgpack.packb(command)
        if len(data) > MAX_COMMAND_BYTES:
            raise RaftUnavailable("CommandTooLarge", f"command of {len(data)} bytes exceeds {MAX_COMMAND_BYTES}")
        if not self._isLeader():
            raise RaftUnavailable("NotLeader", f"this node is not the leader of {self.spec.group_id}",
                                  self.leader_address())

        deliver = callback
        if ack == AckMode.LEADER:
            leader_ack = _LeaderAck(callback)
            deliver = leader_ack.finished

        def done(result: Any, error: int) -> None:
            if error == FAIL_REASON.SUCCESS:
                deliver(result)
            else:
                deliver({"error": "Unavailable" if error != FAIL_REASON.NOT_LEADER else "NotLeader",
                         "message": f"no commit could be confirmed ({_FAILURES.get(error, error)}); "
                                    "its outcome is unknown, retry it with the same dedup ids",
                         "leader": self.leader_address()})

        if ack == AckMode.LEADER:
            done.leader_ack = leader_ack  # type: ignore[attr-defined]  # found again once the entry is durable
        self._apply_entry(data, callback=done)

    def submit_sync(self, command: dict[str, Any], timeout: float = 10.0, ack: AckMode = AckMode.QUORUM) -> Result:
        """Blocking submit, for tests and tools."""
        finished = threading.Event()
        outcome: list[Result] = []

        def callback(result: Result) -> None:
            outcome.append(result)
            finished.set()

        self.submit(command, callback, ack)
        if not finished.wait(timeout):
            raise RaftUnavailable("Timeout", f"no commit within {timeout} s; the outcome is unknown")
        return outcome[0]

    def is_leader(self) -> bool:
        return self._isLeader()

    def leader_state_complete(self) -> bool:
        """Leader, with its term's first entry (pysyncobj's no-op) applied. Until then, entries committed in
        earlier terms may be missing from its state (Raft §8), so reads must wait. pysyncobj applies the same
        rule before it changes the cluster."""
        noop = self.__dict__.get("_SyncObj__noopIDx")
        return self._isLeader() and noop is not None and self.raftLastApplied >= noop

    def leader_address(self) -> str | None:
        leader = self._getLeader()
        return None if leader is None else getattr(leader, "address", str(leader))

    def lost_its_leader(self) -> bool:
        """No leader known now, though this replica has heard one since it started: an election is under way,
        or this node is cut off from the others. (A replica just started has heard none yet.)"""
        return self._getLeader() is None and self._dmq_leaderContact > 0.0

    def query(self, reader: Callable[[Any], T]) -> T:
        """Run a read-only query on the store (the state machine), safe against a snapshot install swapping it."""
        with self._store_lock:
            return reader(self.store)

    # ------------------------------------------------------------------ snapshots

    def _serialize(self, file_name: str, raft_data: tuple[Any, Any, Any]) -> None:
        """Called on the tick thread when the state is exactly raftLastApplied: a checkpoint of the store
        (RocksDB: hard links) plus pysyncobj's last two entries, tarred into one file that pysyncobj can ship."""
        last_entry, previous_entry, nodes = raft_data
        staging = file_name + ".checkpoint"
        shutil.rmtree(staging, ignore_errors=True)
        with self._store_lock:
            self.store.checkpoint(staging)
        meta = msgpack.packb({
            "last": _encode_entry(last_entry),
            "previous": _encode_entry(previous_entry),
            "nodes": sorted(getattr(node, "address", str(node)) for node in nodes),
        })
        try:
            with open(file_name, "wb") as raw, tarfile.open(fileobj=raw, mode="w") as tar:
                info = tarfile.TarInfo(_SNAPSHOT_META)
                info.size = len(meta)
                tar.addfile(info, io.BytesIO(meta))
                tar.add(staging, arcname=_SNAPSHOT_STORE)
                tar.close()
                raw.flush()
                os.fsync(raw.fileno())
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _deserialize(self, file_name: str) -> tuple[Any, Any, Any]:
        """Install a snapshot. At start-up the dump on disk is usually older than the store (the store applied
        entries after it); the store is only replaced when it is behind the snapshot, e.g. a follower catching
        up after missing compacted entries, or a store that lost its unsynced tail in a power failure."""
        with tarfile.open(file_name, mode="r") as tar:
            member = tar.getmember(_SNAPSHOT_META)
            extracted = tar.extractfile(member)
            assert extracted is not None
            meta = msgpack.unpackb(extracted.read())
            raft_data = (_decode_entry(meta["last"]), _decode_entry(meta["previous"]), set(meta["nodes"]))
            snapshot_index = raft_data[0][1]
            if self.store.applied_index >= snapshot_index:
                return raft_data
            staging = file_name + ".restore"
            shutil.rmtree(staging, ignore_errors=True)
            store_members = [m for m in tar.getmembers()
                             if m.name == _SNAPSHOT_STORE or m.name.startswith(_SNAPSHOT_STORE + "/")]
            tar.extractall(staging, members=store_members, filter="data")
        try:
            with self._store_lock:
                self.store.close()
                self.store = self._store_factory.restore(os.path.join(staging, _SNAPSHOT_STORE), self._store_path)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        log.info("group %s: installed snapshot at index %d", self.spec.group_id, snapshot_index)
        return raft_data

    # ------------------------------------------------------------------ lifecycle

    def step_down(self, timeout: float = 2.0) -> bool:
        """Hand leadership to the most caught-up follower (Raft TimeoutNow) before a planned stop, so writes
        pause for one round trip instead of an election timeout. True when this replica is no longer leader."""
        deadline = time.monotonic() + timeout
        requested_at = 0.0
        while self._isLeader() and time.monotonic() < deadline:
            if time.monotonic() - requested_at > STEP_DOWN_RETRY:  # granted, and the target did not win: again
                requested_at = time.monotonic()
                self._transfer_leadership(None, lambda handed: None, STEP_DOWN_RETRY)
            time.sleep(0.005)
        return not self._isLeader()

    def hand_leadership_to(self, address: str, outcome: Callable[[bool], None],
                           patience: float = HANDOVER_PATIENCE) -> None:
        """Ask the replica at `address` to take leadership over (Raft TimeoutNow), from the tick thread.
        `outcome(False)` when pysyncobj denies it: this replica does not lead, or that one is not caught up."""
        self._transfer_leadership(address, outcome, patience)

    def _transfer_leadership(self, address: str | None, outcome: Callable[[bool], None], patience: float) -> None:
        """pysyncobj grants a transfer only while the target holds every entry of the leader's log, which under
        load is true for moments between appends: a denied request is asked again at each tick, before the tick
        appends new commands, for up to `patience` seconds. `address` None: the most caught-up follower."""
        give_up_at = time.monotonic() + patience

        def attempt() -> None:
            self.transferLeadership(address, answered)

        def answered(_: Any, error: int) -> None:
            if error == FAIL_REASON.REQUEST_DENIED and time.monotonic() < give_up_at:
                self._on_next_tick(attempt)
            else:
                outcome(error == FAIL_REASON.SUCCESS)

        self._on_next_tick(attempt)

    def _on_next_tick(self, action: Callable[[], None]) -> None:
        """Run `action` once on the tick thread, where pysyncobj's Raft state may be touched, at the start of the
        next tick: after the poll took the followers' acknowledgements in, before new commands are appended."""
        self._tick_actions.append(action)

    def _dmq_afterSync(self) -> None:
        """The actions queued for this tick; then leader-mode acknowledgements: right after the tick's fsync,
        entries this leader's log holds durably are acknowledged, without waiting for the followers."""
        for _ in range(len(self._tick_actions)):  # an action queued by one of these runs at the next tick
            action = self._tick_actions.popleft()
            try:
                action()
            except Exception:  # a caller's callback must not cost the group its tick
                log.exception("group %s: a tick action failed", self.spec.group_id)
        waiting = self._SyncObj__commandsWaitingCommit
        if not waiting or not self._isLeader():
            return
        durable = self._raft_log.durableLastIndex
        for index, subscribers in list(waiting.items()):
            if index > durable:
                continue
            for term, callback in subscribers:
                leader_ack = getattr(callback, "leader_ack", None)
                if leader_ack is not None:
                    leader_ack.durable(index, term)

    def close(self, *, graceful: bool = True) -> None:
        """Stop: hand leadership over first (graceful), then stop ticking and close the log and the store
        (the snapshot file stays for the next start)."""
        if graceful:
            self.step_down()
        if self._host is None:
            self.destroy_synchronous()
        else:
            self._host.remove(self, destroy=True)
        with self._store_lock:
            self.store.close()
        self._raft_log.close()


_STATES = {0: "follower", 1: "candidate", 2: "leader"}
_LEADER = 2
_FAILURES = {value: name for name, value in vars(FAIL_REASON).items() if isinstance(value, int)}
