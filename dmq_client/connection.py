"""One session with one dmq node: the handshake, then pipelined requests answered in any order.

`Connection` is blocking and thread-safe (many threads may call at once; a reader thread matches answers to
requests); `AsyncConnection` is its asyncio twin. Both speak dmq_client.protocol and nothing else.
"""

from __future__ import annotations

import asyncio
import itertools
import socket
import ssl
import threading
from concurrent.futures import Future
from typing import Any

from . import protocol
from .errors import DmqError, ProtocolViolation, Timeout, Unavailable, error_from

CLIENT_NAME = "dmq-py/0.1"
DEFAULT_TIMEOUT = 30.0


def split_address(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ValueError(f"address {address!r} is not host:port")
    return host.strip("[]"), int(port)


def _check_welcome(welcome: dict[str, Any], address: str) -> dict[str, Any]:
    if "error" in welcome:
        raise error_from(welcome["error"])
    if welcome.get("dmq") != protocol.VERSION:
        raise ProtocolViolation(f"{address} speaks protocol version {welcome.get('dmq')!r}, not {protocol.VERSION}")
    return welcome


def _handshake_failed(address: str, exc: OSError) -> Unavailable:
    """A connection reset or timed out mid-handshake (a node dying) is retryable, like a refused connect."""
    return Unavailable(f"connection to {address} failed during the handshake: {exc}")


def _checked(answer: dict[str, Any]) -> dict[str, Any]:
    """The answer to a request, its error raised."""
    if "error" in answer:
        raise error_from(answer["error"])
    return answer


class Connection:
    """A blocking session; `call` may be used from many threads at once."""

    def __init__(self, address: str, token: str | None = None, *, tls: ssl.SSLContext | None = None,
                 connect_timeout: float = 5.0, client: str = CLIENT_NAME) -> None:
        self.address = address
        host, port = split_address(address)
        try:
            sock = socket.create_connection((host, port), timeout=connect_timeout)
        except OSError as exc:
            raise Unavailable(f"cannot connect to {address}: {exc}") from None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._decoder = protocol.FrameDecoder()
        self._send_lock = threading.Lock()
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._waiting: dict[int, Future[Any]] = {}
        self._closed: DmqError | None = None
        try:
            if tls is not None:
                sock = tls.wrap_socket(sock, server_hostname=host)
            self._sock = sock
            sock.sendall(protocol.encode(protocol.hello(token, client)))
            self.welcome = _check_welcome(self._read_one(), address)
        except OSError as exc:
            sock.close()
            raise _handshake_failed(address, exc) from None
        except BaseException:
            sock.close()
            raise
        self.max_frame_bytes = int(self.welcome.get("max_frame_bytes", protocol.DEFAULT_MAX_FRAME_BYTES))
        self._decoder.max_frame_bytes = max(self.max_frame_bytes, protocol.DEFAULT_MAX_FRAME_BYTES)
        sock.settimeout(None)
        self._reader = threading.Thread(target=self._read_loop, name=f"dmq-conn-{address}", daemon=True)
        self._reader.start()

    def _read_one(self) -> dict[str, Any]:
        while True:
            try:
                data = self._sock.recv(1 << 16)
            except OSError as exc:
                raise Unavailable(f"connection to {self.address} failed: {exc}") from None
            if not data:
                raise Unavailable(f"{self.address} closed the connection")
            messages = self._decoder.feed(data)
            if messages:
                return messages[0]

    def _read_loop(self) -> None:
        failure: DmqError = Unavailable(f"connection to {self.address} closed")
        try:
            while True:
                data = self._sock.recv(1 << 18)
                if not data:
                    break
                for message in self._decoder.feed(data):
                    request_id = message.get("id")
                    with self._lock:
                        future = self._waiting.pop(request_id, None) if isinstance(request_id, int) else None
                    if future is None:
                        if "error" in message:  # a session-level error: the server closes next
                            failure = error_from(message["error"])
                        continue
                    if not future.done():
                        future.set_result(message)
        except protocol.ProtocolError as exc:
            failure = ProtocolViolation(exc.message)
        except OSError as exc:
            failure = Unavailable(f"connection to {self.address} failed: {exc}")
        self._fail_all(failure)

    def _fail_all(self, failure: DmqError) -> None:
        with self._lock:
            self._closed = self._closed or failure
            waiting, self._waiting = self._waiting, {}
        for future in waiting.values():
            if not future.done():
                future.set_exception(failure)

    @property
    def closed(self) -> bool:
        return self._closed is not None

    def submit(self, op: str, args: dict[str, Any]) -> Future[Any]:
        """Send a request; the future gets the answer message."""
        future: Future[Any] = Future()
        with self._lock:
            if self._closed is not None:
                raise self._closed
            request_id = next(self._ids)
            self._waiting[request_id] = future
        frame = protocol.encode(protocol.request(request_id, op, args), self.max_frame_bytes)
        try:
            with self._send_lock:
                self._sock.sendall(frame)
        except OSError as exc:
            self._fail_all(Unavailable(f"connection to {self.address} failed: {exc}"))
            raise Unavailable(f"connection to {self.address} failed: {exc}") from None
        return future

    def call(self, op: str, args: dict[str, Any] | None = None, timeout: float = DEFAULT_TIMEOUT) -> Any:
        future = self.submit(op, args or {})
        try:
            return _checked(future.result(timeout)).get("result")
        except TimeoutError:
            raise Timeout(f"{op} got no answer from {self.address} within {timeout} s; the outcome is unknown") \
                from None

    def close(self) -> None:
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()
        self._fail_all(Unavailable(f"connection to {self.address} closed"))
        if self._reader is not threading.current_thread():
            self._reader.join(5.0)

    def __enter__(self) -> "Connection":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class AsyncConnection:
    """An asyncio session; open it with `await AsyncConnection.open(...)`."""

    def __init__(self, address: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 welcome: dict[str, Any]) -> None:
        self.address = address
        self.welcome = welcome
        self.max_frame_bytes = int(welcome.get("max_frame_bytes", protocol.DEFAULT_MAX_FRAME_BYTES))
        self._reader = reader
        self._writer = writer
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._closed: DmqError | None = None
        decoder = protocol.FrameDecoder(max(self.max_frame_bytes, protocol.DEFAULT_MAX_FRAME_BYTES))
        self._task = asyncio.get_running_loop().create_task(self._read_loop(decoder))

    @classmethod
    async def open(cls, address: str, token: str | None = None, *, tls: ssl.SSLContext | None = None,
                   connect_timeout: float = 5.0, client: str = CLIENT_NAME) -> "AsyncConnection":
        host, port = split_address(address)
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(host, port, ssl=tls, server_hostname=host if tls else None),
                connect_timeout)
        except (OSError, asyncio.TimeoutError) as exc:
            raise Unavailable(f"cannot connect to {address}: {exc or 'timed out'}") from None
        try:
            sock = writer.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            writer.write(protocol.encode(protocol.hello(token, client)))
            decoder = protocol.FrameDecoder()
            welcome = None
            while welcome is None:
                data = await asyncio.wait_for(reader.read(1 << 16), connect_timeout)
                if not data:
                    raise Unavailable(f"{address} closed the connection during the handshake")
                messages = decoder.feed(data)
                welcome = messages[0] if messages else None
            _check_welcome(welcome, address)
        except BaseException as exc:
            writer.close()
            if isinstance(exc, asyncio.TimeoutError):
                raise Unavailable(f"{address} did not complete the handshake in time") from None
            if isinstance(exc, OSError):
                raise _handshake_failed(address, exc) from None
            raise
        return cls(address, reader, writer, welcome)

    async def _read_loop(self, decoder: protocol.FrameDecoder) -> None:
        failure: DmqError = Unavailable(f"connection to {self.address} closed")
        try:
            while True:
                data = await self._reader.read(1 << 18)
                if not data:
                    break
                for message in decoder.feed(data):
                    future = self._waiting.pop(message.get("id"), None) if isinstance(message.get("id"), int) \
                        else None
                    if future is None:
                        if "error" in message:
                            failure = error_from(message["error"])
                    elif not future.done():
                        future.set_result(message)
        except protocol.ProtocolError as exc:
            failure = ProtocolViolation(exc.message)
        except (OSError, asyncio.IncompleteReadError) as exc:
            failure = Unavailable(f"connection to {self.address} failed: {exc}")
        finally:
            self._fail_all(failure)

    def _fail_all(self, failure: DmqError) -> None:
        self._closed = self._closed or failure
        waiting, self._waiting = self._waiting, {}
        for future in waiting.values():
            if not future.done():
                future.set_exception(failure)
        self._writer.close()

    @property
    def closed(self) -> bool:
        return self._closed is not None

    async def call(self, op: str, args: dict[str, Any] | None = None, timeout: float = DEFAULT_TIMEOUT,
                   **envelope: Any) -> Any:
        """One request's result; `envelope` adds top-level fields (node-to-node forwarding uses them)."""
        return (await self.answer(op, args, timeout, **envelope)).get("result")

    async def answer(self, op: str, args: dict[str, Any] | None = None, timeout: float = DEFAULT_TIMEOUT,
                     **envelope: Any) -> dict[str, Any]:
        """One request's whole answer: its result, and hints such as "leaders" (docs/PROTOCOL.md)."""
        if self._closed is not None:
            raise self._closed
        request_id = next(self._ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[request_id] = future
        message = protocol.request(request_id, op, args or {})
        message.update(envelope)
        try:
            self._writer.write(protocol.encode(message, self.max_frame_bytes))
        except BaseException:
            self._waiting.pop(request_id, None)
            raise
        try:
            return _checked(await asyncio.wait_for(future, timeout))
        except asyncio.TimeoutError:
            raise Timeout(f"{op} got no answer from {self.address} within {timeout} s; the outcome is unknown") \
                from None
        finally:
            self._waiting.pop(request_id, None)  # answered, timed out or cancelled: a late answer is dropped

    async def close(self) -> None:
        self._task.cancel()
        self._fail_all(Unavailable(f"connection to {self.address} closed"))
        try:
            await self._task
        except (asyncio.CancelledError, Exception):
            pass
