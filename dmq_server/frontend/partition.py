"""The frontend's side of one partition this node leads: group commit, long polls, and the store's answers
turned into protocol results."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from dmq_client import protocol
from dmq_client.protocol import ErrorCode
from dmq_server.raft.group import AckMode, PartitionGroup, RaftUnavailable
from dmq_server.store import CommandError
from dmq_server.store import commands as store_commands
from dmq_server.store.config import QueueConfig, partition_config
from dmq_server.store.errors import BATCH_MISMATCH

from .batcher import COMMIT_TIMEOUT, PartitionBatcher
from .requests import OutgoingMessage, Receipt, RequestError, error_code

EMPTY_RETRY_SECONDS = 0.05  # a receive that found nothing although a message looked ready waits this long
READ_WAIT_SECONDS = 1.0  # how long a read on a new leader waits for its state to hold everything committed


def _entry_error(code: str) -> dict[str, Any]:
    messages = {
        "QueueFull": "the queue holds max_messages messages; retry later or raise the limit",
        "ReceiptExpired": "the message was received again or its visibility timeout passed since this receipt "
                          "was issued; receive it again",
    }
    return {"error": {"code": code, "message": messages.get(code, code)}}


class LocalPartition:
    """Created when this node leads the partition; dropped when it stops leading or the queue goes away."""

    def __init__(self, loop: asyncio.AbstractEventLoop, group: PartitionGroup, queue: dict[str, Any],
                 partition: int, leader_hint: Any) -> None:
        self.group = group
        self.queue_id: int = queue["id"]
        self.queue_name: str = queue["name"]
        self.partition = partition
        self._loop = loop
        ack = AckMode(queue["attrs"].get("ack_mode", "quorum"))
        self.batcher = PartitionBatcher(loop, group, ack, leader_hint)
        self.batcher.on_enqueued = self.wake
        self._waiters: set[asyncio.Future[bool]] = set()
        self.config = QueueConfig.from_dict(group.query(lambda store: store.config()))
        self._followed_attrs: dict[str, Any] | None = None  # the attributes follow_attributes last applied

    # ------------------------------------------------------------------ long polls

    def wake(self) -> None:
        waiters, self._waiters = self._waiters, set()
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(True)

    async def wait(self, seconds: float) -> None:
        waiter: asyncio.Future[bool] = self._loop.create_future()
        self._waiters.add(waiter)
        try:
            await asyncio.wait_for(waiter, max(seconds, 0.001))
        except asyncio.TimeoutError:
            pass
        finally:
            self._waiters.discard(waiter)

    def next_visible_at(self, now_ms: int) -> int | None:
        return self.group.query(lambda store: store.next_visible_at(now_ms))

    async def wait_for_messages(self, wait_ms: int) -> bool:
        """True once a receive would find a message here, False when `wait_ms` passed first."""
        deadline = time.monotonic() + wait_ms / 1000
        while True:
            now = _now_ms()
            due = self.next_visible_at(now)
            if due is not None and due <= now:
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            await self.wait(remaining if due is None else min(remaining, (due - now) / 1000))

    # ------------------------------------------------------------------ operations

    async def send(self, messages: list[OutgoingMessage], batch_id: str | None = None) -> list[dict[str, Any]]:
        """`batch_id`: the send's idempotency key; a retry within the dedup window gets the first results again,
        each marked duplicate, and enqueues nothing."""
        entries = list(messages)  # each is the store's enqueue entry already
        try:  # the store's own checks, per request, so one bad request cannot fail the ones it is coalesced with
            store_commands.parse_enqueue({"messages": entries}, self.config)
        except CommandError as exc:
            raise RequestError(error_code(exc.code), exc.message) from None
        size = sum(message.size() for message in messages)
        results = await self.batcher.enqueue(entries, size, None if batch_id is None else batch_id.encode())
        out = []
        for result in results:
            if "error" in result:
                if result["error"] == BATCH_MISMATCH:  # the whole send is one segment: every entry has it
                    raise RequestError(ErrorCode.INVALID_REQUEST, f"'batch_id' {batch_id!r} was used within the "
                                       "queue's dedup_window_ms for a send of another number of messages; a retry "
                                       "must repeat the same messages, a new send needs a new batch_id")
                out.append(_entry_error(result["error"]))
                if result.get("duplicate"):  # the first send's error, repeated for a retried batch
                    out[-1]["duplicate"] = True
            elif "accepted" in result:  # leader ack mode: durable on the leader, id assigned at commit
                out.append({"id": None, "duplicate": None})
            else:
                out.append({"id": protocol.message_id(self.partition, result["id"]),
                            "duplicate": result["duplicate"]})
        return out

    async def receive(self, count: int, visibility_ms: int | None, wait_ms: int,
                      max_bytes: int) -> list[dict[str, Any]]:
        deadline = time.monotonic() + wait_ms / 1000
        while True:
            now = _now_ms()
            due = self.next_visible_at(now)
            remaining = deadline - time.monotonic()
            if due is not None and due <= now:
                picked = await self.batcher.receive(count, visibility_ms, max_bytes)
                if picked or remaining <= 0:
                    return [self._message(message) for message in picked]
                await self.wait(min(remaining, EMPTY_RETRY_SECONDS))
                continue
            if remaining <= 0:
                return []
            await self.wait(remaining if due is None else min(remaining, (due - now) / 1000))

    def _message(self, message: dict[str, Any]) -> dict[str, Any]:
        """A received message as the protocol answers it: with the receipt that deletes it."""
        answer = self._shown(message)
        answer["receipt"] = protocol.receipt(self.queue_id, self.partition, message["id"], message["receive_count"])
        return answer

    def _shown(self, message: dict[str, Any]) -> dict[str, Any]:
        return {
            "id": protocol.message_id(self.partition, message["id"]),
            "body": message["body"],
            "attributes": message["attrs"],
            "group": message["group"],
            "receive_count": message["receive_count"],
            "enqueued_at": message["enqueued_at"],
        }

    async def _per_receipt(self, receipts: list[Receipt], submit: Any, answer: Any) -> list[dict[str, Any]]:
        """Receipts of a deleted queue of the same name fail alone; the others go to the partition."""
        assert all(receipt.partition == self.partition for receipt in receipts)
        mine = [i for i, receipt in enumerate(receipts) if receipt.queue_id == self.queue_id]
        results: list[dict[str, Any]] = [{"error": {"code": ErrorCode.INVALID_RECEIPT.value,
                                                    "message": "the receipt belongs to a deleted queue of the "
                                                               "same name"}}] * len(receipts)
        if mine:
            for i, result in zip(mine, await submit(mine)):
                results[i] = _entry_error(result["error"]) if "error" in result else answer(result)
        return results

    async def delete(self, receipts: list[Receipt]) -> list[dict[str, Any]]:
        return await self._per_receipt(
            receipts, lambda mine: self.batcher.delete([[receipts[i].sequence, receipts[i].receive_count]
                                                        for i in mine]),
            lambda result: {"ok": True})

    async def change_visibility(self, entries: list[tuple[Receipt, int]]) -> list[dict[str, Any]]:
        return await self._per_receipt(
            [receipt for receipt, _ in entries],
            lambda mine: self.batcher.change_visibility([[entries[i][0].sequence, entries[i][0].receive_count,
                                                          entries[i][1]] for i in mine]),
            lambda result: {"ok": True, "deadline": result["deadline"]})

    async def command(self, command: dict[str, Any]) -> Any:
        """One command outside the batcher (purge, tick, ack of dead letters)."""
        future: asyncio.Future[dict[str, Any]] = self._loop.create_future()

        def done(outcome: dict[str, Any]) -> None:
            self._loop.call_soon_threadsafe(lambda: None if future.done() else future.set_result(outcome))

        try:
            self.group.submit(command, done)
        except RaftUnavailable as exc:
            raise RequestError(error_code(exc.code), str(exc), None) from None
        try:
            outcome = await asyncio.wait_for(future, COMMIT_TIMEOUT)
        except asyncio.TimeoutError:
            raise RequestError(ErrorCode.TIMEOUT, f"not committed within {COMMIT_TIMEOUT:.0f} s; the outcome is "
                                                  "unknown") from None
        if "error" in outcome:
            raise RequestError(error_code(outcome["error"]), str(outcome.get("message")))
        return outcome["result"]

    async def stats(self) -> dict[str, Any]:
        await self._caught_up()
        return self.group.query(lambda store: store.stats(_now_ms()))

    async def peek(self, count: int, max_bytes: int, after: int = 0) -> list[dict[str, Any]]:
        """The partition's first `count` messages above sequence `after`, in any state (at most `max_bytes` of
        them, the first always), as a receive returns them but without a receipt, plus `state` and
        `visible_at`. Nothing changes."""
        await self._caught_up()
        peeked = self.group.query(lambda store: store.peek(count, max_bytes, after))
        return [{**self._shown(message), "state": message["state"], "visible_at": message["visible_at"]}
                for message in peeked]

    async def follow_attributes(self, attrs: dict[str, Any], partitions: int) -> None:
        """Bring the partition to its queue's attributes, which update_queue may have changed: the ack mode of
        sends, here, and the store's configuration through a configure command, so that every replica changes
        it at the same point of its log. Called every housekeeping round: cheap while `attrs` is the same map."""
        if attrs is self._followed_attrs:
            return
        self.batcher.ack = AckMode(attrs.get("ack_mode", "quorum"))
        wanted = partition_config(attrs, partitions)
        # The first time, `config` (read when this node became leader) may predate committed changes: look.
        if self._followed_attrs is None or wanted != self.config:
            await self._caught_up()  # the configuration in place includes every committed change
            current = QueueConfig.from_dict(self.group.query(lambda store: store.config()))
            changes = {name: value for name, value in wanted.to_dict().items()
                       if name != "fifo" and getattr(current, name) != value}  # fifo never changes
            if changes:
                current = QueueConfig.from_dict(await self.command({"op": "configure", "now": _now_ms(),
                                                                    "attrs": changes}))
            self.config = current
        self._followed_attrs = attrs

    async def _caught_up(self) -> None:
        """Wait until this leader's state holds everything committed: a leader new in its term may not yet, and
        a read would miss messages whose sends were acknowledged."""
        deadline = time.monotonic() + READ_WAIT_SECONDS
        while not self.group.leader_state_complete():
            if time.monotonic() >= deadline:
                raise RequestError(ErrorCode.UNAVAILABLE, "the partition's new leader is still catching up; retry")
            await asyncio.sleep(0.005)


def _now_ms() -> int:
    return int(time.time() * 1000)
