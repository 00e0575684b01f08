"""Request dispatch: metadata operations to the metadata group's leader, message operations to the partition's
leader. Every node accepts every request; what another node leads is forwarded to it (the seed's load balancer
role), once, with the principal it is done for."""

from __future__ import annotations

import asyncio
import contextvars
import itertools
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from dmq_client import protocol
from dmq_client.concurrency import await_all
from dmq_client.protocol import ErrorCode
from dmq_server.metadata.placement import place_partitions
from dmq_server.raft.group import RaftUnavailable
from dmq_server.metadata.naming import partition_group_id

from . import requests as rq
from .auth import INTERNAL, Identity
from .partition import LocalPartition
from .peers import PeerClients
from .requests import RequestError
from .topology import Topology

T = TypeVar("T")
ALIVE_MS = 5_000  # a node whose last heartbeat is older is not given new partitions
LEADER_WAIT_SECONDS = 10.0  # create_queue returns once every partition has a leader, or after this long
SOURCE_QUEUE_ATTRIBUTE = "dmq-source-queue"  # set on messages moved to a dead-letter queue, read by redrive
METADATA_TIMEOUT = 10.0
FORWARD_LEADER_CHECK_SECONDS = 0.1  # a forwarded request checks this often that its partition's leader is unchanged
READ_INDEX_SECONDS = 1.0  # a follower's metadata read waits at most this long for the leader and for catching up
STATS_LEADER_WAIT_SECONDS = 2.0  # get_queue waits this long for a partition's leader before counting it unavailable
STATS_RETRY_SECONDS = 0.02
# A receive without a partition tries the partitions led here first (no forwarding hop). Every this many passes
# it starts at a rotating partition of them all instead, so that a partition whose leader no consumer calls is
# still drained while the local ones stay full.
RECEIVE_SPREAD_EVERY = 4


# The request being handled: (queue, partition) -> the client address of the node its part was forwarded to (and
# done by). Keyed by queue too: a redrive runs operations on two queues.
_request_forwards: contextvars.ContextVar[dict[tuple[str, int], str] | None] = contextvars.ContextVar(
    "request_forwards", default=None)


def _now_ms() -> int:
    return int(time.time() * 1000)


def _purge(local: LocalPartition, purge_id: str | None) -> Awaitable[Any]:
    return local.command({"op": "purge", "now": _now_ms(), "purge_id": purge_id})  # the store takes a null id


class Broker:
    def __init__(self, loop: asyncio.AbstractEventLoop, topology: Topology, peers: PeerClients, metrics: Any,
                 *, max_queues: int, max_partitions: int) -> None:
        self._loop = loop
        self.topology = topology
        self._peers = peers
        self._metrics = metrics
        self._max_queues = max_queues
        self._max_partitions = max_partitions
        self._local: dict[str, LocalPartition] = {}
        self._round_robin = itertools.count()

    # ------------------------------------------------------------------ entry point

    async def handle(self, identity: Identity, op: Any, args: Any, on_behalf: Any = None,
                     forwarded_to: dict[int, str] | None = None) -> Any:
        """Run one request for `identity`. Another node forwards with `on_behalf` (the principal's name); such a
        request is executed here or refused, never forwarded again. `forwarded_to` is filled with the partitions
        whose part of the request another node did, and that node's client address: their leader, for the
        client's cache."""
        forwards: dict[tuple[str, int], str] | None = {} if forwarded_to is not None else None
        _request_forwards.set(forwards)
        forwarded = identity.internal and isinstance(on_behalf, str)
        principal = on_behalf if forwarded else identity.name
        if identity.internal and op in self._internal_ops:
            return await self._internal_ops[op](self, rq._args(args))
        request = rq.parse(op, args, max_partitions=self._max_partitions)
        queue = _queue_of(request)
        if queue is not None and not identity.internal:
            identity.require(rq.PERMISSION[op], queue)
            if isinstance(request, rq.Redrive) and request.to is not None:
                identity.require("send", request.to)
        if isinstance(request, rq.QueueOp):
            handler = _QUEUE_OPS[request.op]
        else:
            handler = self._handlers[type(request)]
        answer = await handler(self, request, identity, principal, forwarded)
        if forwarded_to is not None and forwards:
            forwarded_to.update((partition, address) for (name, partition), address in forwards.items()
                                if name == queue)
        return answer

    # ------------------------------------------------------------------ metadata operations

    def _queue(self, name: str) -> dict[str, Any]:
        record = self.topology.view().queues.get(name)
        if record is None:
            raise RequestError(ErrorCode.QUEUE_NOT_FOUND, f"queue {name!r} does not exist; create it first")
        return record

    async def _data_queue(self, name: str) -> dict[str, Any]:
        """The queue a message operation names. Known here, it is used as is (a queue's partitions never change);
        unknown, this replica may simply lag behind a create made through another node, so it catches up with
        the metadata leader (a read index) before answering QueueNotFound."""
        if name not in self.topology.view().queues:
            await self._read_index()
        return self._queue(name)

    async def _at_metadata_leader(self, op: str, args: dict[str, Any], principal: str, forwarded: bool) -> Any:
        """Forward a metadata write to the metadata leader; None when this node is the leader."""
        leader = self.topology.metadata_leader()
        if leader is None:
            raise RequestError(ErrorCode.UNAVAILABLE, "the metadata group has no leader right now; retry shortly")
        if leader.node_id == self.topology.node_id:
            return None
        if forwarded:
            raise RequestError(ErrorCode.NOT_LEADER, "this node does not lead the metadata group", leader.client)
        return await self._peers.call(leader.client, op, args, on_behalf=principal)

    async def metadata_submit(self, command: dict[str, Any]) -> Any:
        group = self.topology.metadata_group
        if group is None or not group.is_leader():
            raise RequestError(ErrorCode.UNAVAILABLE, "metadata leadership moved; retry")
        future: asyncio.Future[dict[str, Any]] = self._loop.create_future()
        try:
            group.submit(command, lambda outcome: self._loop.call_soon_threadsafe(
                lambda: None if future.done() else future.set_result(outcome)))
        except RaftUnavailable as exc:
            raise RequestError(ErrorCode.UNAVAILABLE, f"metadata leadership moved ({exc}); retry") from None
        try:
            outcome = await asyncio.wait_for(future, METADATA_TIMEOUT)
        except asyncio.TimeoutError:
            raise RequestError(ErrorCode.TIMEOUT, "the metadata change was not committed in time; its outcome is "
                                                  "unknown, check and retry") from None
        if "error" in outcome:
            raise RequestError(rq.error_code(outcome["error"]), str(outcome.get("message")))
        return outcome["result"]

    async def _create_queue(self, request: rq.CreateQueue, identity: Identity, principal: str,
                            forwarded: bool) -> Any:
        args = {"name": request.name, "attributes": request.attributes.to_dict()}
        remote = await self._at_metadata_leader("create_queue", args, principal, forwarded)
        if remote is not None:
            return remote
        attributes = request.attributes
        view = self.topology.view()
        if attributes.dead_letter_queue is not None and attributes.dead_letter_queue not in view.queues:
            raise RequestError(ErrorCode.QUEUE_NOT_FOUND, f"dead-letter queue {attributes.dead_letter_queue!r} "
                                                          "does not exist; create it first")
        nodes = sorted(self.topology.peers)
        replication = attributes.replication or (3 if len(nodes) >= 3 else 1)
        if replication > len(nodes):
            raise rq.invalid(f"replication {replication} needs {replication} nodes; the cluster has {len(nodes)}")
        now = _now_ms()
        alive = {node for node, info in self.topology.nodes().items() if now - info["seen"] < ALIVE_MS}
        alive.add(self.topology.node_id)
        load: dict[str, int] = {node: 0 for node in nodes}
        for record in view.queues.values():
            for replicas in record["partitions"]:
                load[replicas[0]] = load.get(replicas[0], 0) + 1
        placement = place_partitions(nodes, alive, attributes.partitions, replication, load)
        attrs = attributes.to_dict()
        attrs["replication"] = replication
        record = await self.metadata_submit({"op": "create_queue", "now": now, "name": request.name,
                                             "attrs": attrs, "partitions": placement,
                                             "max_queues": self._max_queues})
        await self._wait_for_leaders(record)
        return self._describe(record)

    async def _update_queue(self, request: rq.UpdateQueue, identity: Identity, principal: str,
                            forwarded: bool) -> Any:
        args = {"name": request.name, "attributes": dict(request.changes)}
        remote = await self._at_metadata_leader("update_queue", args, principal, forwarded)
        if remote is not None:
            return remote
        group = self.topology.metadata_group
        if group is None:
            raise RequestError(ErrorCode.UNAVAILABLE, "metadata leadership moved; retry")
        # The leader's own state, which may be ahead of this node's view: the update is computed from it, and the
        # metadata store refuses it (QueueChanged, retried by clients) if another update commits first.
        record = group.query(lambda store: store.get_queue(request.name))
        if record is None:
            raise RequestError(ErrorCode.QUEUE_NOT_FOUND, f"queue {request.name!r} does not exist")
        attrs = rq.updated_attributes(record["attrs"], request.changes)
        target = attrs.get("dead_letter_queue")
        if target == request.name:
            raise rq.invalid("a queue cannot be its own dead-letter queue")
        if target is not None and group.query(lambda store: store.get_queue(target)) is None:
            raise RequestError(ErrorCode.QUEUE_NOT_FOUND, f"dead-letter queue {target!r} does not exist; create "
                                                          "it first")
        if attrs != record["attrs"]:
            record = await self.metadata_submit({"op": "update_queue", "now": _now_ms(), "name": request.name,
                                                 "id": record["id"], "attrs": attrs, "previous": record["attrs"]})
        return self._describe(record)

    async def _wait_for_leaders(self, record: dict[str, Any]) -> None:
        deadline = time.monotonic() + LEADER_WAIT_SECONDS
        groups = [partition_group_id(record["id"], p) for p in range(len(record["partitions"]))]
        while time.monotonic() < deadline:
            if all(self.topology.leader_of(group) is not None for group in groups):
                return
            await asyncio.sleep(0.02)

    async def _delete_queue(self, request: rq.QueueOp, identity: Identity, principal: str, forwarded: bool) -> Any:
        remote = await self._at_metadata_leader("delete_queue", {"name": request.name}, principal, forwarded)
        if remote is not None:
            return remote
        await self.metadata_submit({"op": "delete_queue", "now": _now_ms(), "name": request.name})
        return {"deleted": request.name}

    def _describe(self, record: dict[str, Any]) -> dict[str, Any]:
        partitions = []
        for index, replicas in enumerate(record["partitions"]):
            leader = self.topology.leader_of(partition_group_id(record["id"], index))
            partitions.append({
                "partition": index,
                "leader": None if leader is None else leader.client,
                "replicas": [self.topology.peers[node].client for node in replicas if node in self.topology.peers],
            })
        return {"name": record["name"], "id": record["id"], "version": record["version"],
                "created_at": record["created_at"], "attributes": record["attrs"], "partitions": partitions}

    async def _read_index(self) -> None:
        """Raft's read index, for metadata reads on a follower: wait until this replica has applied every change
        the metadata leader had applied when the read arrived. A client that deleted a queue through one node then
        never sees it listed by another. Without an answer from the leader the local replica answers as it is."""
        leader = self.topology.metadata_leader()
        if leader is None or leader.node_id == self.topology.node_id:
            return
        try:
            version = await self._peers.call(leader.client, "metadata_version", {}, on_behalf="cluster",
                                             timeout=READ_INDEX_SECONDS)
        except RequestError:
            return
        deadline = time.monotonic() + READ_INDEX_SECONDS
        while self.topology.view().version < version and time.monotonic() < deadline:
            await asyncio.sleep(0.005)

    async def _lookup(self, request: rq.QueueOp, identity: Identity, principal: str, forwarded: bool) -> Any:
        await self._read_index()
        return self._describe(self._queue(request.name))

    async def _get_queue(self, request: rq.QueueOp, identity: Identity, principal: str, forwarded: bool) -> Any:
        await self._read_index()
        record = self._queue(request.name)
        description = self._describe(record)
        totals: dict[str, int] = {}
        unavailable = 0

        async def stats_of(partition: int) -> dict[str, int] | None:
            # Through a handover or an election the partition has no reachable leader for a moment: wait it out,
            # bounded, before leaving the partition out of the totals.
            deadline = time.monotonic() + STATS_LEADER_WAIT_SECONDS
            while True:
                try:
                    return await self._on_partition(record, partition, forwarded, principal, "partition_stats",
                                                    lambda: {"queue": record["name"]}, lambda local: local.stats())
                except RequestError as exc:
                    if exc.code not in _LEADERLESS or time.monotonic() >= deadline:
                        return None
                await asyncio.sleep(STATS_RETRY_SECONDS)

        for stats in await asyncio.gather(*(stats_of(p) for p in range(len(record["partitions"])))):
            if stats is None:
                unavailable += 1
                continue
            for name in ("count", "ready", "in_flight", "delayed", "bytes", "dead_letters"):
                totals[name] = totals.get(name, 0) + stats[name]
            totals["oldest_age_ms"] = max(totals.get("oldest_age_ms", 0), stats["oldest_age_ms"])
        description["stats"] = totals
        description["unavailable_partitions"] = unavailable
        return description

    async def _list_queues(self, request: rq.ListQueues, identity: Identity, principal: str,
                           forwarded: bool) -> Any:
        await self._read_index()
        return sorted(name for name in self.topology.view().queues
                      if name.startswith(request.prefix) and (identity.internal or identity.allows(None, name)))

    async def _purge_queue(self, request: rq.PurgeQueue, identity: Identity, principal: str,
                           forwarded: bool) -> Any:
        """Every partition purged under the request's purge id: when one fails, a retry with the same id gets the
        counts of those already purged again and purges only the rest."""
        record = await self._data_queue(request.name)
        purged = await asyncio.gather(*(
            self._on_partition(record, p, forwarded, principal, "purge_partition",
                               lambda: {"queue": record["name"], "purge_id": request.purge_id},
                               lambda local: _purge(local, request.purge_id))
            for p in range(len(record["partitions"]))))
        return {"purged": sum(result["purged"] for result in purged)}

    async def _cluster_status(self, request: rq.ClusterStatus, identity: Identity, principal: str,
                              forwarded: bool) -> Any:
        view = self.topology.view()
        now = _now_ms()
        leader = self.topology.metadata_leader()
        nodes = []
        liveness = self.topology.nodes()
        for node_id, peer in sorted(self.topology.peers.items()):
            info = liveness.get(node_id, {})
            seen = info.get("seen")
            nodes.append({"id": node_id, "client": peer.client, "raft": peer.raft,
                          "alive": seen is not None and now - seen < ALIVE_MS,
                          "last_heartbeat_ms_ago": None if seen is None else max(0, now - seen),
                          "leading": len(info.get("leading", ()))})
        partitions = []
        for record in sorted(view.queues.values(), key=lambda r: r["name"]):
            for index, replicas in enumerate(record["partitions"]):
                group = partition_group_id(record["id"], index)
                partitions.append({"queue": record["name"], "partition": index, "group": group,
                                   "leader": view.leaders.get(group), "replicas": replicas})
        return {"node": self.topology.node_id, "metadata_leader": None if leader is None else leader.node_id,
                "metadata_version": view.version, "nodes": nodes, "partitions": partitions}

    # ------------------------------------------------------------------ routing to partition leaders

    def local_partition(self, record: dict[str, Any], partition: int) -> LocalPartition | None:
        group_id = partition_group_id(record["id"], partition)
        group = self.topology.groups.get(group_id)
        if group is None or not group.is_leader():
            self._local.pop(group_id, None)
            return None
        local = self._local.get(group_id)
        if local is None or local.group is not group:
            local = LocalPartition(self._loop, group, record, partition,
                                   lambda: self._leader_client(group_id))
            self._local[group_id] = local
        return local

    def local_partitions(self) -> list[LocalPartition]:
        """The partitions this node leads now (used by the node's housekeeping)."""
        found = []
        for record in self.topology.view().queues.values():
            for index in range(len(record["partitions"])):
                local = self.local_partition(record, index)
                if local is not None:
                    found.append(local)
        return found

    def forget_partition(self, group_id: str) -> None:
        self._local.pop(group_id, None)

    def _leader_client(self, group_id: str) -> str | None:
        leader = self.topology.leader_of(group_id)
        return None if leader is None or leader.node_id == self.topology.node_id else leader.client

    async def _on_partition(self, record: dict[str, Any], partition: int, forwarded: bool, principal: str,
                            op: str, forward_args: Callable[[], dict[str, Any]],
                            local_call: Callable[[LocalPartition], Awaitable[T]]) -> T:
        """Run `local_call` when this node leads the partition, else forward `op` with `forward_args()` to its
        leader (following one NotLeader hint); the arguments are built only then, since a local call needs no
        wire form. A forwarded request is never forwarded again."""
        local = self.local_partition(record, partition)
        if local is not None:
            return await local_call(local)
        group_id = partition_group_id(record["id"], partition)
        leader = self.topology.leader_of(group_id)
        hint = None if leader is None or leader.node_id == self.topology.node_id else leader.client
        if forwarded or hint is None:
            raise RequestError(ErrorCode.NOT_LEADER if hint else ErrorCode.UNAVAILABLE,
                               f"partition {partition} of queue {record['name']!r} "
                               + ("is led by another node" if hint else "has no leader right now; retry shortly"),
                               hint)
        args = forward_args()
        if op not in ("delete", "change_visibility"):  # these take no 'partition': their receipts name it
            args["partition"] = partition
        try:
            answer = await self._forward(group_id, hint, op, args, principal)
        except RequestError as exc:
            if exc.code != ErrorCode.NOT_LEADER or not exc.leader or exc.leader == hint:
                raise
            hint = exc.leader
            answer = await self._forward(group_id, hint, op, args, principal)
        forwards = _request_forwards.get()
        if forwards is not None:
            forwards[record["name"], partition] = hint
        return answer

    async def _forward(self, group_id: str, address: str, op: str, args: dict[str, Any], principal: str) -> Any:
        """`op` at the partition leader at `address`. When this node learns of another leader meanwhile, or no
        longer knows one, the answer is Unavailable at once, outcome unknown (the SDK retries, a send under its
        batch id): a request forwarded over a link that was then cut would otherwise wait for it to heal."""
        self._metrics.forwarded(op)
        call = asyncio.ensure_future(self._peers.call(address, op, args, on_behalf=principal))
        try:
            while True:
                done, _ = await asyncio.wait((call,), timeout=FORWARD_LEADER_CHECK_SECONDS)
                if done:
                    return call.result()
                leader = self.topology.leader_of(group_id)
                if leader is None or leader.client != address:
                    raise RequestError(ErrorCode.UNAVAILABLE, f"{op} was forwarded to {address}, which no longer "
                                       f"leads the partition as far as this node knows; its outcome is unknown, "
                                       f"retry")
        finally:
            call.cancel()

    def _partition_count(self, record: dict[str, Any], requested: int | None) -> int:
        count = len(record["partitions"])
        if requested is not None and requested >= count:
            raise rq.invalid(f"queue {record['name']!r} has {count} partitions; 'partition' must be below that")
        return count

    def _pick_partition(self, record: dict[str, Any], count: int) -> int:
        """Sends without a key: round robin, over the partitions led here when there are any (no forwarding)."""
        turn = next(self._round_robin)
        local = [p for p in range(count) if self.local_partition(record, p) is not None]
        return local[turn % len(local)] if local else turn % count

    # ------------------------------------------------------------------ message operations

    async def _send(self, request: rq.Send, identity: Identity, principal: str, forwarded: bool) -> Any:
        record = await self._data_queue(request.queue)
        count = self._partition_count(record, request.partition)
        fifo = bool(record["attrs"].get("fifo"))
        by_partition: dict[int, list[int]] = {}
        unkeyed = None
        for index, message in enumerate(request.messages):
            if request.partition is not None:
                partition = request.partition
            elif fifo and message.group is not None:  # one group, one partition: order per group holds
                partition = protocol.partition_of_key(message.group, count)
            elif message.dedup_id is not None:  # a retried send lands where its dedup id is remembered
                partition = protocol.partition_of_key(message.dedup_id, count)
            else:
                if unkeyed is None:
                    unkeyed = self._pick_partition(record, count)
                partition = unkeyed
            by_partition.setdefault(partition, []).append(index)
        results: list[Any] = [None] * len(request.messages)

        async def send_to(partition: int, indexes: list[int]) -> None:
            messages = [request.messages[i] for i in indexes]

            def forward_args() -> dict[str, Any]:
                args: dict[str, Any] = {"queue": record["name"], "messages": [_wire_message(m) for m in messages]}
                if request.batch_id is not None:  # with an explicit partition: every message is here
                    args["batch_id"] = request.batch_id
                return args

            answers = await self._on_partition(record, partition, forwarded, principal, "send", forward_args,
                                               lambda local: local.send(messages, request.batch_id))
            for index, answer in zip(indexes, answers):
                results[index] = answer

        await await_all([send_to(p, indexes) for p, indexes in by_partition.items()])
        if not forwarded:
            self._metrics.messages("sent", record["name"], principal,
                                   sum(1 for r in results if "error" not in r and not r.get("duplicate")))
        return results

    async def send_messages(self, queue: str, messages: list[rq.OutgoingMessage]) -> list[dict[str, Any]]:
        """A send by the node itself (dead letters moving to their dead-letter queue)."""
        return await self._send(rq.Send(queue, tuple(messages), None), INTERNAL, INTERNAL.name, False)

    async def _receive(self, request: rq.Receive, identity: Identity, principal: str, forwarded: bool) -> Any:
        record = await self._data_queue(request.queue)
        count = self._partition_count(record, request.partition)
        wait_ms = record["attrs"].get("receive_wait_ms", 0) if request.wait_ms is None else request.wait_ms
        # Received messages are invisible once picked, so the partition picks no more than the answer's byte
        # budget holds (request.max_bytes; a multi-partition receive gives each partition its share).
        if request.partition is not None or count == 1:
            partition = request.partition or 0
            messages = await self._receive_one(record, partition, request.max_messages, request.visibility_ms,
                                               wait_ms, forwarded, principal, request.max_bytes)
        else:
            messages = await self._receive_many(record, count, request, wait_ms, forwarded, principal)
        if not forwarded:
            self._metrics.messages("received", record["name"], principal, len(messages))
            self._metrics.messages("redelivered", record["name"], principal,
                                   sum(1 for message in messages if message["receive_count"] > 1))
            if not messages:
                self._metrics.messages("empty_receives", record["name"], principal, 1)
        return messages

    def _receive_one(self, record: dict[str, Any], partition: int, count: int, visibility_ms: int | None,
                     wait_ms: int, forwarded: bool, principal: str, max_bytes: int) -> Awaitable[list[Any]]:
        def forward_args() -> dict[str, Any]:
            args = {"queue": record["name"], "max_messages": count, "wait_ms": wait_ms, "max_bytes": max_bytes}
            if visibility_ms is not None:
                args["visibility_timeout_ms"] = visibility_ms
            return args

        return self._on_partition(record, partition, forwarded, principal, "receive", forward_args,
                                  lambda local: local.receive(count, visibility_ms, wait_ms, max_bytes))

    async def _receive_many(self, record: dict[str, Any], count: int, request: rq.Receive, wait_ms: int,
                            forwarded: bool, principal: str) -> list[Any]:
        """Receives draw from every partition: one pass without waiting, starting at a rotating partition; when
        it finds nothing, wait until any partition has a message (each leader wakes on its own sends)."""
        deadline = time.monotonic() + wait_ms / 1000
        share = max(1, request.max_bytes // count)
        while True:
            collected: list[Any] = []
            # A partition gives its first message even when it exceeds the partition's share: what is left of
            # the whole budget bounds the answer (it must fit a frame; its messages are leased already).
            budget = request.max_bytes
            for partition in self._receive_order(record, count):
                try:
                    picked = await self._receive_one(record, partition, request.max_messages - len(collected),
                                                     request.visibility_ms, 0, forwarded, principal,
                                                     min(share, budget))
                except RequestError as exc:
                    if exc.code not in (ErrorCode.UNAVAILABLE, ErrorCode.NOT_LEADER, ErrorCode.TIMEOUT):
                        raise
                    continue
                collected += picked
                budget -= sum(len(message["body"]) for message in picked)
                if len(collected) >= request.max_messages or budget <= 0:
                    break
            remaining_ms = int((deadline - time.monotonic()) * 1000)
            if collected or remaining_ms <= 0:
                return collected
            waits = [asyncio.ensure_future(self._on_partition(
                record, p, forwarded, principal, "wait_messages",
                lambda: {"queue": record["name"], "wait_ms": remaining_ms},
                lambda local: local.wait_for_messages(remaining_ms))) for p in range(count)]
            try:
                await asyncio.wait(waits, timeout=remaining_ms / 1000, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for wait in waits:
                    wait.cancel()
                await asyncio.gather(*waits, return_exceptions=True)

    def _receive_order(self, record: dict[str, Any], count: int) -> list[int]:
        """The partitions a receive without one visits: from a rotating start, those led here first (each
        visited elsewhere costs a forwarding hop), except every RECEIVE_SPREAD_EVERY turns."""
        turn = next(self._round_robin)
        start = turn // RECEIVE_SPREAD_EVERY  # not turn: the spread turns would then always start alike
        rotated = [(start + offset) % count for offset in range(count)]
        if turn % RECEIVE_SPREAD_EVERY == 0:
            return rotated
        local: list[int] = []
        remote: list[int] = []
        for partition in rotated:
            (remote if self.local_partition(record, partition) is None else local).append(partition)
        return local + remote

    async def _peek(self, request: rq.Peek, identity: Identity, principal: str, forwarded: bool) -> Any:
        """The oldest messages of one partition, or of every partition merged by enqueue time, read at each
        partition's leader (a follower may lag). A partition without a leader fails the peek, after the SDK's
        retries: a peek that silently left one out would show a queue that is not there."""
        record = await self._data_queue(request.queue)
        count = self._partition_count(record, request.partition)
        partitions = [request.partition] if request.partition is not None else list(range(count))
        share = max(1, request.max_bytes // len(partitions))
        found: list[list[dict[str, Any]]] = [[] for _ in partitions]

        def forward_args() -> dict[str, Any]:
            args = {"queue": record["name"], "max_messages": request.max_messages, "max_bytes": share}
            if request.after:
                args["after"] = protocol.message_id(partitions[0], request.after)
            return args

        async def peek_in(slot: int, partition: int) -> None:
            found[slot] = await self._on_partition(record, partition, forwarded, principal, "peek", forward_args,
                                                   lambda local: local.peek(request.max_messages, share,
                                                                            request.after))

        await await_all([peek_in(slot, partition) for slot, partition in enumerate(partitions)])
        if len(found) == 1:
            return found[0]
        merged = sorted((m for messages in found for m in messages), key=lambda m: (m["enqueued_at"], m["id"]))
        # Each partition may exceed its share by one large first message: the answer keeps to the budget.
        shown, size = [], 0
        for message in merged[:request.max_messages]:
            size += len(message["body"])
            if shown and size > request.max_bytes:
                break
            shown.append(message)
        return shown

    def _by_partition(self, record: dict[str, Any], receipts: list[rq.Receipt | None]) -> dict[int, list[int]]:
        groups: dict[int, list[int]] = {}
        count = len(record["partitions"])
        for index, receipt in enumerate(receipts):
            if receipt is not None and receipt.partition < count:
                groups.setdefault(receipt.partition, []).append(index)
        return groups

    async def _delete(self, request: rq.Delete, identity: Identity, principal: str, forwarded: bool) -> Any:
        record = await self._data_queue(request.queue)
        results: list[Any] = [_invalid_receipt()] * len(request.receipts)

        async def delete_in(partition: int, indexes: list[int]) -> None:
            receipts = [request.receipts[i] for i in indexes]
            answers = await self._on_partition(
                record, partition, forwarded, principal, "delete",
                lambda: {"queue": record["name"], "receipts": [r.text for r in receipts if r is not None]},
                lambda local: local.delete(receipts))  # type: ignore[arg-type]
            for index, answer in zip(indexes, answers):
                results[index] = answer

        await await_all([delete_in(p, ix) for p, ix in self._by_partition(record, list(request.receipts)).items()])
        if not forwarded:
            self._metrics.messages("deleted", record["name"], principal, sum(1 for r in results if r.get("ok")))
        return results

    async def _change_visibility(self, request: rq.ChangeVisibility, identity: Identity, principal: str,
                                 forwarded: bool) -> Any:
        record = await self._data_queue(request.queue)
        results: list[Any] = [_invalid_receipt()] * len(request.entries)
        receipts = [receipt for receipt, _ in request.entries]

        async def change_in(partition: int, indexes: list[int]) -> None:
            entries = [request.entries[i] for i in indexes]
            answers = await self._on_partition(
                record, partition, forwarded, principal, "change_visibility",
                lambda: {"queue": record["name"], "entries": [[r.text, t] for r, t in entries if r is not None]},
                lambda local: local.change_visibility(entries))  # type: ignore
            for index, answer in zip(indexes, answers):
                results[index] = answer

        await await_all([change_in(p, ix) for p, ix in self._by_partition(record, receipts).items()])
        return results

    async def _redrive(self, request: rq.Redrive, identity: Identity, principal: str, forwarded: bool) -> Any:
        """Move messages from a dead-letter queue back to the queue each came from (or to `to`): receive, send
        with a dedup id derived from the message (a retried redrive sends once), then delete."""
        record = await self._data_queue(request.queue)
        if request.to is not None:
            await self._data_queue(request.to)
        moved = skipped = 0
        while moved + skipped < request.max_messages:
            batch = await self._receive(rq.Receive(record["name"], min(100, request.max_messages - moved - skipped),
                                                   0, 60_000, None), identity, principal, False)
            if not batch:
                break
            by_target: dict[str, list[dict[str, Any]]] = {}
            for message in batch:
                attributes = dict(message["attributes"])
                source = attributes.pop(SOURCE_QUEUE_ATTRIBUTE, None)
                target = request.to or source
                if not self._may_redrive_to(target, record["name"], identity, explicit=request.to is not None):
                    skipped += 1
                    continue
                message["attributes"] = attributes
                by_target.setdefault(target, []).append(message)
            for target, messages in by_target.items():
                entries = tuple(rq.OutgoingMessage(m["body"], m["attributes"] or None, None,
                                                   f"redrive:{record['id']}:{m['id']}:{m['receive_count']}",
                                                   m["group"] or None) for m in messages)
                sent = await self._send(rq.Send(target, entries, None), identity, principal, False)
                done = [m["receipt"] for m, outcome in zip(messages, sent) if "error" not in outcome]
                if done:
                    await self._delete(rq.Delete(record["name"], tuple(rq._receipt(r) for r in done)), identity,
                                       principal, False)
                moved += len(done)
                skipped += len(messages) - len(done)
        return {"moved": moved, "skipped": skipped}

    def _may_redrive_to(self, target: Any, dead_letter_queue: str, identity: Identity, *, explicit: bool) -> bool:
        """A message goes back to the queue it names only if that queue really dead-letters into this one (any
        sender could set the attribute), and only where the caller may send."""
        queue = self.topology.view().queues.get(target) if isinstance(target, str) else None
        if queue is None or not (identity.internal or identity.allows("send", target)):
            return False
        return explicit or queue["attrs"].get("dead_letter_queue") == dead_letter_queue

    # ------------------------------------------------------------------ node-to-node operations

    async def _partition_internal(self, args: dict[str, Any], call: Callable[[LocalPartition], Awaitable[Any]]) -> Any:
        record = await self._data_queue(rq.queue_name(args.get("queue")))
        partition = args.get("partition")
        if type(partition) is not int or not 0 <= partition < len(record["partitions"]):
            raise rq.invalid("'partition' is required and must name a partition of the queue")
        return await self._on_partition(record, partition, True, "cluster", "", dict, call)

    async def _op_partition_stats(self, args: dict[str, Any]) -> Any:
        return await self._partition_internal(args, lambda local: local.stats())

    async def _op_purge_partition(self, args: dict[str, Any]) -> Any:
        purge_id = rq.text_field(args.get("purge_id"), "purge_id")
        return await self._partition_internal(args, lambda local: _purge(local, purge_id))

    async def _op_wait_messages(self, args: dict[str, Any]) -> Any:
        wait_ms = args.get("wait_ms")
        if type(wait_ms) is not int or not 0 <= wait_ms <= rq.MAX_WAIT_MS:
            raise rq.invalid(f"'wait_ms' must be an integer from 0 to {rq.MAX_WAIT_MS}")
        return await self._partition_internal(args, lambda local: local.wait_for_messages(wait_ms))

    async def _op_heartbeat(self, args: dict[str, Any]) -> Any:
        node, leading = args.get("node"), args.get("leading")
        if node not in self.topology.peers or not isinstance(leading, list):
            raise rq.invalid("heartbeat needs 'node' (a cluster node id) and 'leading' (a list of group ids)")
        return await self.heartbeat(node, leading)

    async def heartbeat(self, node: str, leading: list[str]) -> Any:
        """Record a node's liveness and the groups it leads, on the metadata leader."""
        leader = self.topology.metadata_leader()
        if leader is None:
            raise RequestError(ErrorCode.UNAVAILABLE, "the metadata group has no leader right now")
        if leader.node_id != self.topology.node_id:
            return await self._peers.call(leader.client, "heartbeat", {"node": node, "leading": leading},
                                          on_behalf="cluster", timeout=5.0)
        return await self.metadata_submit({"op": "heartbeat", "now": _now_ms(), "node": node, "leading": leading})

    async def _op_metadata_version(self, args: dict[str, Any]) -> Any:
        group = self.topology.metadata_group
        if group is None or not group.is_leader():
            raise RequestError(ErrorCode.NOT_LEADER, "this node does not lead the metadata group")
        return self.topology.view().version

    async def _op_metadata_snapshot(self, args: dict[str, Any]) -> Any:
        group = self.topology.metadata_group
        if group is None:
            raise RequestError(ErrorCode.UNAVAILABLE, "this node holds no metadata replica")
        return group.query(lambda store: store.snapshot())

    _internal_ops: dict[str, Callable[["Broker", dict[str, Any]], Awaitable[Any]]] = {
        "partition_stats": _op_partition_stats,
        "purge_partition": _op_purge_partition,
        "wait_messages": _op_wait_messages,
        "heartbeat": _op_heartbeat,
        "metadata_snapshot": _op_metadata_snapshot,
        "metadata_version": _op_metadata_version,
    }
    _handlers: dict[type, Callable[..., Awaitable[Any]]] = {
        rq.CreateQueue: _create_queue,
        rq.UpdateQueue: _update_queue,
        rq.Send: _send,
        rq.Receive: _receive,
        rq.Peek: _peek,
        rq.Delete: _delete,
        rq.ChangeVisibility: _change_visibility,
        rq.ListQueues: _list_queues,
        rq.PurgeQueue: _purge_queue,
        rq.Redrive: _redrive,
        rq.ClusterStatus: _cluster_status,
    }

_LEADERLESS = (ErrorCode.NOT_LEADER, ErrorCode.UNAVAILABLE)  # errors that end once the partition has a leader
_QUEUE_OPS = {"delete_queue": Broker._delete_queue, "get_queue": Broker._get_queue, "lookup": Broker._lookup}


def _queue_of(request: Any) -> str | None:
    for field in ("queue", "name"):
        value = getattr(request, field, None)
        if isinstance(value, str):
            return value
    return None


def _wire_message(message: rq.OutgoingMessage) -> dict[str, Any]:
    wire: dict[str, Any] = {"body": message.body}
    for field in ("attributes", "delay_ms", "dedup_id", "group"):
        value = getattr(message, field)
        if value is not None:
            wire[field] = value
    return wire


def _invalid_receipt() -> dict[str, Any]:
    return {"error": {"code": ErrorCode.INVALID_RECEIPT.value,
                      "message": "not a receipt of this queue; use the receipt a receive returned"}}
