"""A dmq node: the Raft host, the metadata replica, the partition replicas the metadata assigns to it, the client
port, metrics, and the cluster manager's periodic duties.

Threads: the asyncio loop (client sessions, dispatch, the duties below) and the Raft host's loop (every group's
Raft work). Opening and closing partition stores runs in a worker thread so the client port never stalls on disk.

Duties, each bounded in work per round:
- reconcile: host exactly the partitions whose replica set names this node (create new ones, remove those of
  deleted queues and delete their data);
- heartbeat: report liveness and the groups this node leads to the metadata group (at once when that changes);
- housekeeping, on partitions led here: tick when a visibility timeout, delay or retention is due; move dead
  letters to the dead-letter queue; hand leadership to a partition's preferred replica when it is back;
- on nodes outside the metadata group: fetch the metadata from a member when its versions move.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import shutil
import signal
import ssl
import time
from typing import Any

from dmq_server.config import NodeConfig
from dmq_server.metadata.naming import partition_group_id, queue_id_of
from dmq_server.metadata.store import MetadataStoreFactory
from dmq_server.metrics import NodeMetrics, PartitionSample
from dmq_server.raft import pysyncobj_fixes
from dmq_server.raft.group import GroupSpec, GroupTimings, PartitionGroup
from dmq_server.raft.host import RaftHost
from dmq_server.raft.log import LogSpace, RaftLog
from dmq_server.store import StoreOptions
from dmq_server.store.config import partition_config
from dmq_server.store.limits import MAX_ATTRIBUTES
from dmq_server.store.partition import PartitionStoreFactory

from .frontend import requests as rq
from .frontend.auth import Authenticator, Identity, internal_token
from .frontend.broker import SOURCE_QUEUE_ATTRIBUTE, Broker
from .frontend.peers import PeerClients
from .frontend.requests import RequestError
from .frontend.server import FrontendServer
from .frontend.topology import Peer, Topology

log = logging.getLogger(__name__)

METADATA_GROUP = "meta"
RECONCILE_SECONDS = 0.1
HEARTBEAT_SECONDS = 1.0
METADATA_FETCH_SECONDS = 0.5  # nodes outside the metadata group refresh their copy this often
HOUSEKEEPING_SECONDS = 0.25
REBALANCE_SECONDS = 5.0  # a partition's leadership is handed to its preferred replica at most this often
DEAD_LETTER_BATCH = 100
STOP_STEP_DOWN_SECONDS = 3.0


class Node:
    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.metrics = NodeMetrics(config.node_id, rq.OPERATIONS)
        self._stopping: asyncio.Event | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._rebalanced_at: dict[str, float] = {}
        self._heartbeat_due = 0.0
        self._last_leading: list[str] | None = None
        self._fetch_due = 0.0

    # ------------------------------------------------------------------ lifecycle

    def _timings(self) -> GroupTimings:
        raft = self.config.raft
        return GroupTimings(heartbeat=raft.heartbeat_ms / 1000, election_min=raft.election_min_ms / 1000,
                            election_max=raft.election_max_ms / 1000,
                            snapshot_min_entries=raft.snapshot_min_entries,
                            snapshot_min_seconds=raft.snapshot_min_seconds,
                            quiet_after=raft.quiet_after_ms / 1000 if raft.quiet_after_ms else None)

    async def run(self) -> None:
        """Serve until stop() (or SIGTERM/SIGINT), then shut down cleanly."""
        try:
            await self.start()
        except BaseException:
            await self._abandon_start()
            raise
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop)
        assert self._stopping is not None
        await self._stopping.wait()
        await self.shutdown()

    async def start(self) -> None:
        config = self.config
        loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        pysyncobj_fixes.install()
        RaftLog.observe_fsync = staticmethod(self.metrics.fsync)  # type: ignore[assignment]
        os.makedirs(os.path.join(config.data_dir, "partitions"), exist_ok=True)
        # One Raft log database for every group of the node: one WAL, one fsync per round of the Raft loop.
        self.log_space = await loop.run_in_executor(None, LogSpace, os.path.join(config.data_dir, "raftlog"))
        # A single node has no peers to authenticate; its Raft port still needs a secret.
        secret = config.secret or secrets.token_hex(16)
        self.host = RaftHost(str(config.raft_address), secret, bind_address=str(config.raft_bind),
                             liveness_timeout=config.raft.election_min_ms / 1000,
                             connection_timeout=max(3.0, 3 * config.raft.election_min_ms / 1000))
        self.host.start()
        me = config.node(config.node_id)
        metadata_group = None
        if config.node_id in config.metadata_nodes:
            peers = tuple(str(config.node(n).raft) for n in config.metadata_nodes if n != config.node_id)
            spec = GroupSpec(METADATA_GROUP, str(me.raft), peers, os.path.join(config.data_dir, "metadata"),
                             self._timings())
            metadata_group = await loop.run_in_executor(None, lambda: PartitionGroup(
                spec, host=self.host, store_factory=MetadataStoreFactory(), log_space=self.log_space))
        self.topology = Topology(config.node_id, [Peer(n.id, str(n.raft), str(n.client)) for n in config.nodes],
                                 metadata_group)
        self.store_options = StoreOptions()
        self.peers = PeerClients(internal_token(config.secret), self._client_tls(), config.node_id)
        self.broker = Broker(loop, self.topology, self.peers, self.metrics, max_queues=config.limits.max_queues,
                             max_partitions=config.limits.max_partitions_per_queue)
        principals = {p.token: Identity(p.name, tuple((perm.queues, perm.actions) for perm in p.permissions))
                      for p in config.principals}
        authenticator = Authenticator(principals, anonymous=config.anonymous, secret=config.secret)
        self.frontend = FrontendServer(self.broker, authenticator, self.metrics, node_id=config.node_id,
                                       max_connections=config.limits.max_connections,
                                       max_in_flight=config.limits.max_in_flight_per_connection,
                                       max_frame_bytes=config.limits.max_frame_bytes)
        self.metrics.sample_partitions_with(self._sample_partitions)
        await self.frontend.start(config.client_address.host, config.client_address.port, self._server_tls())
        self._metrics_server = None
        if config.metrics_address is not None:
            self._metrics_server = self.metrics.serve(config.metrics_address.host, config.metrics_address.port)
        for duty in (self._reconcile_loop, self._heartbeat_loop, self._housekeeping_loop):
            self._tasks.append(asyncio.ensure_future(duty()))
        log.info("node %s serving clients on %s, raft on %s (bound %s), metrics on %s", config.node_id,
                 config.client_address, config.raft_address, config.raft_bind, config.metrics_address or "off")

    async def _abandon_start(self) -> None:
        """Release what a failed start() (say, a client port in use) had started. The Raft host's thread must not
        be left running: one still in the store's native code at interpreter exit aborts the process (SIGABRT)
        instead of exiting with the daemon's status 1."""
        loop = asyncio.get_running_loop()
        topology = getattr(self, "topology", None)
        if topology is not None and topology.metadata_group is not None:
            await loop.run_in_executor(None, lambda: topology.metadata_group.close(graceful=False))
        if getattr(self, "host", None) is not None:
            self.host.stop()
        if getattr(self, "log_space", None) is not None:
            self.log_space.close()

    def stop(self) -> None:
        if self._stopping is not None:
            self._stopping.set()

    async def shutdown(self) -> None:
        """Stop accepting, hand off leadership of what this node leads, flush and close everything."""
        loop = asyncio.get_running_loop()
        log.info("node %s stopping", self.config.node_id)
        self.frontend.stop_accepting()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        groups = list(self.topology.groups.values())
        if self.topology.metadata_group is not None:
            groups.append(self.topology.metadata_group)
        leaders = [group for group in groups if group.is_leader() and group.spec.peers]
        await asyncio.gather(*(loop.run_in_executor(None, group.step_down, STOP_STEP_DOWN_SECONDS)
                               for group in leaders))
        await self.frontend.close()
        await self.peers.close()
        for group in groups:
            await loop.run_in_executor(None, lambda g=group: g.close(graceful=False))
        self.host.stop()
        self.log_space.close()
        if self._metrics_server is not None:
            server, thread = self._metrics_server
            server.shutdown()
        log.info("node %s stopped", self.config.node_id)

    def _server_tls(self) -> ssl.SSLContext | None:
        tls = self.config.tls
        if tls is None:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(tls.cert_file, tls.key_file)
        return context

    def _client_tls(self) -> ssl.SSLContext | None:
        """How this node connects to the others' client ports when forwarding: TLS verified against the CA
        file (or the node certificate itself, for a self-signed cluster)."""
        tls = self.config.tls
        if tls is None:
            return None
        context = ssl.create_default_context(cafile=tls.ca_file or tls.cert_file)
        context.check_hostname = False  # nodes are addressed by IP in the config; the certificate is pinned
        return context

    # ------------------------------------------------------------------ duties

    async def _every(self, seconds: float, duty: Any) -> None:
        while True:
            try:
                await duty()
            except asyncio.CancelledError:
                raise
            except RequestError as exc:
                log.debug("%s: %s", duty.__name__, exc.message)
            except Exception:
                log.exception("%s failed; retrying", duty.__name__)
            await asyncio.sleep(seconds)

    async def _reconcile_loop(self) -> None:
        await self._every(RECONCILE_SECONDS, self._reconcile)

    async def _heartbeat_loop(self) -> None:
        await self._every(0.05, self._heartbeat)

    async def _housekeeping_loop(self) -> None:
        await self._every(HOUSEKEEPING_SECONDS, self._housekeeping)

    async def _reconcile(self) -> None:
        topology = self.topology
        if topology.metadata_group is None and time.monotonic() >= self._fetch_due:
            self._fetch_due = time.monotonic() + METADATA_FETCH_SECONDS
            await self._fetch_metadata()
        view = topology.view()
        if view.version < 0:
            return
        wanted: dict[str, tuple[dict[str, Any], int]] = {}
        for record in view.queues.values():
            for index, replicas in enumerate(record["partitions"]):
                if self.config.node_id in replicas:
                    wanted[partition_group_id(record["id"], index)] = (record, index)
        loop = asyncio.get_running_loop()
        for group_id, (record, index) in wanted.items():
            if group_id not in topology.groups:
                group = await loop.run_in_executor(None, self._open_partition, record, index)
                topology.groups = {**topology.groups, group_id: group}
        for group_id in list(topology.groups):
            if group_id not in wanted and self._deleted(group_id, view.next_queue_id):
                group = topology.groups[group_id]
                topology.groups = {g: v for g, v in topology.groups.items() if g != group_id}
                self.broker.forget_partition(group_id)
                await loop.run_in_executor(None, self._remove_partition, group)
        await loop.run_in_executor(None, self._remove_orphans, set(topology.groups), view.next_queue_id)

    @staticmethod
    def _deleted(group_id: str, next_queue_id: int) -> bool:
        """A partition not in the metadata is only removed when its queue was created and deleted since: a
        metadata replica that is behind (say, replaying after a restart) must never cost a partition its data."""
        queue_id = queue_id_of(group_id)
        return queue_id is not None and queue_id < next_queue_id

    def _open_partition(self, record: dict[str, Any], index: int) -> PartitionGroup:
        config = self.config
        replicas = record["partitions"][index]
        group_id = partition_group_id(record["id"], index)
        peers = tuple(str(config.node(node).raft) for node in replicas if node != config.node_id)
        spec = GroupSpec(group_id, str(config.raft_address), peers,
                         os.path.join(config.data_dir, "partitions", group_id), self._timings())
        # The attributes the queue was created with, not its current ones: a replica that starts its store now
        # replays the log from the start, and the changes since are configure commands in that log.
        initial = record.get("initial_attrs", record["attrs"])
        factory = PartitionStoreFactory(self.store_options, partition_config(initial, len(record["partitions"])))
        log.info("hosting partition %d of queue %s (%s) with %s", index, record["name"], group_id, list(replicas))
        return PartitionGroup(spec, host=self.host, store_factory=factory, log_space=self.log_space)

    def _remove_partition(self, group: PartitionGroup) -> None:
        group.close(graceful=False)
        self._erase_partition(group.spec.group_id, group.spec.data_dir)
        log.info("removed partition %s and its data (its queue was deleted)", group.spec.group_id)

    def _remove_orphans(self, hosted: set[str], next_queue_id: int) -> None:
        """Data of partitions of queues deleted while this node was down."""
        root = os.path.join(self.config.data_dir, "partitions")
        for name in os.listdir(root):
            if name not in hosted and self._deleted(name, next_queue_id):
                self._erase_partition(name, os.path.join(root, name))
                log.info("removed data of partition %s (its queue was deleted)", name)

    def _erase_partition(self, group_id: str, data_dir: str) -> None:
        """Its keys in the node's Raft log first, then its directory: after a crash in between, the next start
        finds the directory as an orphan and erases both."""
        self.log_space.drop(group_id)
        shutil.rmtree(data_dir, ignore_errors=True)

    async def _fetch_metadata(self) -> None:
        for node_id in self.config.metadata_nodes:
            try:
                snapshot = await self.peers.call(self.topology.peers[node_id].client, "metadata_snapshot", {},
                                                 on_behalf="cluster", timeout=2.0)
            except RequestError:
                continue
            self.topology.install_view(snapshot)
            return

    async def _heartbeat(self) -> None:
        leading = sorted(group_id for group_id, group in self.topology.groups.items() if group.is_leader())
        now = time.monotonic()
        if leading == self._last_leading and now < self._heartbeat_due:
            return
        await self.broker.heartbeat(self.config.node_id, leading)
        self._last_leading = leading
        self._heartbeat_due = now + HEARTBEAT_SECONDS

    async def _housekeeping(self) -> None:
        now_ms = int(time.time() * 1000)
        view = self.topology.view()
        liveness = self.topology.nodes()
        for local in self.broker.local_partitions():
            due = local.group.query(lambda store: store.next_due_at(now_ms))
            if due is not None and due <= now_ms:
                result = await local.command({"op": "tick", "now": now_ms})
                if result["returned"] or result["due"]:
                    local.wake()
            record = view.queues.get(local.queue_name)
            if record is None or record["id"] != local.queue_id:
                continue
            try:
                await local.follow_attributes(record["attrs"], len(record["partitions"]))
            except RequestError as exc:  # this partition's leader changed or stalled: the next round retries
                log.debug("applying the attributes of %s to partition %d: %s", record["name"], local.partition,
                          exc.message)
            if (await local.stats())["dead_letters"]:
                await self._move_dead_letters(local, record)
            self._rebalance(local, record, liveness)

    async def _move_dead_letters(self, local: Any, record: dict[str, Any]) -> None:
        """Send a batch of the partition's dead letters to the queue's dead-letter queue, then drop them here.
        The dedup id makes a repeated move (a crash between the two steps) enqueue once."""
        target = record["attrs"].get("dead_letter_queue")
        if target not in self.topology.view().queues:
            return  # kept (and counted in metrics) until the dead-letter queue exists again
        letters = local.group.query(lambda store: store.dead_letters(DEAD_LETTER_BATCH))
        if not letters:
            return
        messages = []
        for letter in letters:
            attributes = dict(letter["attrs"] or {})
            if SOURCE_QUEUE_ATTRIBUTE in attributes or len(attributes) < MAX_ATTRIBUTES:  # never keep a forged one
                attributes[SOURCE_QUEUE_ATTRIBUTE] = record["name"]
            messages.append(rq.OutgoingMessage(letter["body"], attributes or None, None,
                                               f"dlq:{record['id']}:{local.partition}:{letter['id']}",
                                               letter["group"] or None))
        results = await self.broker.send_messages(target, messages)
        if any("error" in result for result in results):
            log.warning("moving dead letters of %s to %s: %s", record["name"], target,
                        next(r for r in results if "error" in r)["error"])
            return
        await local.command({"op": "ack_dead_letters", "now": int(time.time() * 1000),
                             "upto": max(letter["id"] for letter in letters)})
        self.metrics.messages("dead_lettered", record["name"], "cluster", len(letters))

    def _rebalance(self, local: Any, record: dict[str, Any], liveness: dict[str, dict[str, Any]]) -> None:
        """Leaders spread as placement intended: hand a partition to its preferred replica when it is alive."""
        preferred = record["partitions"][local.partition][0]
        if preferred == self.config.node_id:
            return
        info = liveness.get(preferred)
        if info is None or time.time() * 1000 - info["seen"] > 3_000:
            return
        group_id = local.group.spec.group_id
        now = time.monotonic()
        if now - self._rebalanced_at.get(group_id, -1e9) < REBALANCE_SECONDS:
            return
        self._rebalanced_at[group_id] = now

        def outcome(handed: bool) -> None:
            if handed:
                log.info("handing leadership of %s to its preferred replica %s", group_id, preferred)
            else:  # typically not caught up (just restarted, or cut off); or this replica no longer leads
                log.info("leadership of %s stays here for now: the handover to its preferred replica %s was "
                         "denied (not caught up, or no longer led here)", group_id, preferred)

        local.group.hand_leadership_to(str(self.config.node(preferred).raft), outcome)

    # ------------------------------------------------------------------ metrics

    def _sample_partitions(self) -> list[PartitionSample]:
        samples: list[PartitionSample] = []
        now_ms = int(time.time() * 1000)
        by_group = {partition_group_id(r["id"], i): (r["name"], i)
                    for r in self.topology.view().queues.values() for i in range(len(r["partitions"]))}
        for group_id, group in list(self.topology.groups.items()):
            if group_id not in by_group:
                continue
            queue, index = by_group[group_id]
            leader = group.is_leader()
            lag = None
            stats = None
            if leader:
                match = list(group._SyncObj__raftMatchIndex.values())
                last = group._SyncObj__getCurrentLogIndex()
                lag = max((last - m for m in match), default=0)
                stats = group.query(lambda store: store.stats(now_ms))
            samples.append((queue, index, group_id, "leader" if leader else "follower", group.raftCurrentTerm,
                            group.raftCommitIndex, group.raftLastApplied, lag, stats))
        return samples
