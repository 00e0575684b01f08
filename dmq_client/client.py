"""Client: the blocking SDK, safe to share between threads.

    with Client(["127.0.0.1:7400"]) as dmq:
        dmq.create_queue("jobs", partitions=4)
        dmq.send("jobs", b"hello")
        for msg in dmq.receive("jobs", max_messages=10, wait_seconds=5):
            with msg:                # deleted when the block succeeds, released when it raises
                handle(msg.body)

It runs an AsyncClient on an event loop in a background thread, so both clients share one implementation;
concurrent calls from many threads meet on that loop and are batched per partition there.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import signal
import ssl
import threading
from collections.abc import Callable, Coroutine, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from types import TracebackType
from typing import Any, TypeVar

from .aio import CONSUME_WAIT, AsyncClient
from .connection import CLIENT_NAME
from .message import AsyncMessage, Message
from .model import Body, PeekedMessage, QueueInfo, SendEntry

T = TypeVar("T")

# How often a thread blocked on the loop wakes up: a blocked consume() looks at its stop event, and the main thread
# runs a signal handler whose signal the kernel handed to another thread (else Ctrl-C waits for a long poll's end).
POLL_SECONDS = 0.2


def _wait(future: concurrent.futures.Future[T], every_poll: Callable[[], None] = lambda: None) -> T:
    """future.result(), waking every POLL_SECONDS to call `every_poll` (and let pending signal handlers run)."""
    while True:
        try:
            return future.result(POLL_SECONDS)
        except TimeoutError:
            if future.done():
                raise  # the operation's own TimeoutError
            every_poll()


class Client:
    """The blocking client; the parameters are AsyncClient's."""

    def __init__(self, nodes: Sequence[str] | str, token: str | None = None, tls: ssl.SSLContext | None = None,
                 *, request_timeout: float = 10.0, retry_seconds: float = 30.0, connect_timeout: float = 5.0,
                 linger: float = 0.0, max_batch: int = 1_000, max_in_flight_batches: int = 4,
                 client_name: str = CLIENT_NAME) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="dmq-client", daemon=True)
        self._thread.start()
        try:
            self._async = self._run(_make(nodes, token, tls, request_timeout=request_timeout,
                                          retry_seconds=retry_seconds, connect_timeout=connect_timeout,
                                          linger=linger, max_batch=max_batch,
                                          max_in_flight_batches=max_in_flight_batches, client_name=client_name))
        except BaseException:
            self._stop_loop()
            raise
        self._closed = False

    def _run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        if threading.current_thread() is self._thread:
            coroutine.close()
            raise RuntimeError("a blocking dmq Client cannot be called from its own event loop thread")
        future = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        try:
            return _wait(future)
        except BaseException:
            future.cancel()
            raise

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10.0)
        if not self._thread.is_alive():
            self._loop.close()

    def close(self) -> None:
        """Send what is batched, wait for it, close the connections and stop the background thread."""
        if self._closed:
            return
        self._closed = True
        try:
            self._run(self._async.close())
        finally:
            self._stop_loop()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # ------------------------------------------------------------------ queues

    def create_queue(self, name: str, **attributes: Any) -> QueueInfo:
        return self._run(self._async.create_queue(name, **attributes))

    def update_queue(self, name: str, **attributes: Any) -> QueueInfo:
        return self._run(self._async.update_queue(name, **attributes))

    def delete_queue(self, name: str) -> None:
        self._run(self._async.delete_queue(name))

    def list_queues(self, prefix: str = "") -> list[str]:
        return self._run(self._async.list_queues(prefix))

    def get_queue(self, name: str) -> QueueInfo:
        return self._run(self._async.get_queue(name))

    def purge_queue(self, name: str) -> int:
        return self._run(self._async.purge_queue(name))

    def redrive(self, dead_letter_queue: str, to: str | None = None, max_messages: int = 1_000) -> dict[str, int]:
        return self._run(self._async.redrive(dead_letter_queue, to, max_messages))

    def cluster_status(self) -> dict[str, Any]:
        return self._run(self._async.cluster_status())

    # ------------------------------------------------------------------ messages

    def send(self, queue: str, body: Body, *, attributes: dict[str, Any] | None = None,
             dedup_id: str | None = None, group: str | None = None, delay: float = 0) -> str | None:
        return self._run(self._async.send(queue, body, attributes=attributes, dedup_id=dedup_id, group=group,
                                          delay=delay))

    def send_batch(self, queue: str, entries: Iterable[Body | SendEntry | dict[str, Any]]) -> list[str | None]:
        return self._run(self._async.send_batch(queue, list(entries)))

    def receive(self, queue: str, max_messages: int = 1, wait_seconds: float = 0,
                visibility_timeout: float | None = None) -> list[Message]:
        received = self._run(self._async.receive(queue, max_messages, wait_seconds, visibility_timeout))
        return [Message(inner, self._run) for inner in received]

    def peek(self, queue: str, max_messages: int = 10, *, partition: int | None = None,
             after: str | None = None) -> list[PeekedMessage]:
        return self._run(self._async.peek(queue, max_messages, partition=partition, after=after))

    def delete_batch(self, queue: str, receipts: Iterable[str]) -> None:
        self._run(self._async.delete_batch(queue, list(receipts)))

    # ------------------------------------------------------------------ workers

    def consume(self, queue: str, handler: Callable[[Message], Any], concurrency: int = 1, *,
                visibility_timeout: float | None = None, wait_seconds: float = CONSUME_WAIT,
                stop: threading.Event | None = None, handle_signals: bool = True) -> int:
        """Run `handler` on every message, in `concurrency` threads, each inside `with msg:`. Returns the number
        handled successfully once `stop` is set or (called from the main thread, with `handle_signals`)
        SIGTERM/SIGINT arrives; the handlers running then finish first (a graceful drain)."""
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        loop_stop = asyncio.Event()
        pool = ThreadPoolExecutor(concurrency, thread_name_prefix="dmq-worker")

        async def run_in_thread(message: AsyncMessage) -> None:
            await self._loop.run_in_executor(pool, handler, Message(message, self._run))

        def request_stop(*_: object) -> None:
            self._loop.call_soon_threadsafe(loop_stop.set)

        previous: dict[int, Any] = {}
        if handle_signals and threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                previous[signum] = signal.signal(signum, request_stop)
        future = asyncio.run_coroutine_threadsafe(
            self._async.consume(queue, run_in_thread, concurrency, visibility_timeout=visibility_timeout,
                                wait_seconds=wait_seconds, stop=loop_stop, handle_signals=False), self._loop)

        def poll_stop() -> None:
            if stop is not None and stop.is_set():
                request_stop()

        try:
            return _wait(future, poll_stop)
        except BaseException:
            request_stop()
            future.cancel()
            raise
        finally:
            for signum, handler_before in previous.items():
                signal.signal(signum, handler_before)
            pool.shutdown(wait=True)


async def _make(nodes: Sequence[str] | str, token: str | None, tls: ssl.SSLContext | None,
                **options: Any) -> AsyncClient:
    return AsyncClient(nodes, token, tls, **options)  # built on the loop it will run on
