"""The client port: asyncio sessions speaking dmq_client.protocol, each request run by the broker.

A session is: handshake (version and token) within HANDSHAKE_SECONDS, then pipelined requests, at most
`max_in_flight` at once (more get TooManyRequests). A malformed frame gets a ProtocolError answer and the
connection is closed; nothing a client sends can stop the node. Reading pauses while the client does not read
its answers (the transport's write buffer is over its high-water mark).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from typing import Any

from dmq_client import protocol
from dmq_client.protocol import ErrorCode

from .auth import Authenticator, Identity
from .broker import Broker
from .requests import RequestError

log = logging.getLogger(__name__)
HANDSHAKE_SECONDS = 10.0
WRITE_HIGH_WATER = 8 << 20


class Session(asyncio.Protocol):
    def __init__(self, server: "FrontendServer") -> None:
        self._server = server
        self._decoder = protocol.FrameDecoder(server.max_frame_bytes)
        self._transport: asyncio.Transport | None = None
        self._identity: Identity | None = None
        self._in_flight = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._handshake_timer: asyncio.TimerHandle | None = None
        self.peer = "?"

    # ------------------------------------------------------------------ asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self.peer = str(transport.get_extra_info("peername"))
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)
        if len(self._server.sessions) >= self._server.max_connections:
            self._close_with(None, ErrorCode.UNAVAILABLE, "this node is at its connection limit; try another node")
            return
        self._server.sessions.add(self)
        self._handshake_timer = asyncio.get_running_loop().call_later(HANDSHAKE_SECONDS, self._handshake_expired)

    def connection_lost(self, exc: Exception | None) -> None:
        self._server.sessions.discard(self)
        if self._handshake_timer is not None:
            self._handshake_timer.cancel()
        for task in list(self._tasks):
            task.cancel()
        self._transport = None

    def pause_writing(self) -> None:
        if self._transport is not None:
            self._transport.pause_reading()

    def resume_writing(self) -> None:
        if self._transport is not None:
            self._transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        try:
            messages = self._decoder.feed(data)
        except protocol.ProtocolError as exc:
            self._close_with(None, exc.code, exc.message)
            return
        for message in messages:
            if self._transport is None:
                return
            if self._identity is None:
                self._handshake(message)
            else:
                self._request(message)

    # ------------------------------------------------------------------ session

    def _handshake_expired(self) -> None:
        if self._identity is None:
            self._close_with(None, ErrorCode.PROTOCOL_ERROR, f"no handshake within {HANDSHAKE_SECONDS:.0f} s")

    def _handshake(self, message: dict[str, Any]) -> None:
        if "dmq" not in message:
            self._close_with(None, ErrorCode.PROTOCOL_ERROR, "the first frame must be the handshake "
                                                             "{'dmq': version, 'token': ..., 'client': ...}")
            return
        version = message.get("dmq")
        if type(version) is not int or version != protocol.VERSION:
            self._close_with(None, ErrorCode.UNSUPPORTED_VERSION,
                             f"this node speaks protocol version {protocol.VERSION}; upgrade the client")
            return
        try:
            self._identity = self._server.authenticator.identify(message.get("token"))
        except RequestError as exc:
            self._server.metrics.error(exc.code.value)
            log.warning("refused a session from %s: %s", self.peer, exc.message)
            self._close_with(None, exc.code, exc.message)
            return
        if self._handshake_timer is not None:
            self._handshake_timer.cancel()
        self._write({"dmq": protocol.VERSION, "node": self._server.node_id,
                     "max_frame_bytes": self._server.max_frame_bytes, "max_in_flight": self._server.max_in_flight})

    def _request(self, message: dict[str, Any]) -> None:
        request_id = message.get("id")
        op = message.get("op")
        if type(request_id) is not int or not 0 <= request_id <= protocol.MAX_REQUEST_ID or not isinstance(op, str):
            self._close_with(None, ErrorCode.PROTOCOL_ERROR, "a request is {'id': integer, 'op': text, 'args': map}")
            return
        if self._in_flight >= self._server.max_in_flight:
            self._write(protocol.error(request_id, ErrorCode.TOO_MANY_REQUESTS,
                                       f"more than {self._server.max_in_flight} requests in flight on this "
                                       "connection; wait for answers or open another connection"))
            return
        self._in_flight += 1
        task = asyncio.ensure_future(self._run(request_id, op, message.get("args"), message.get("fwd")))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, request_id: int, op: str, args: Any, on_behalf: Any) -> None:
        started = time.perf_counter()
        code = None
        assert self._identity is not None
        forwarded_to: dict[int, str] = {}
        try:
            answer = protocol.result(request_id, await self._server.broker.handle(self._identity, op, args,
                                                                                  on_behalf, forwarded_to),
                                     leaders=forwarded_to)
        except RequestError as exc:
            code = exc.code.value
            answer = protocol.error(request_id, exc.code, exc.message, exc.leader)
        except asyncio.CancelledError:
            raise
        except Exception:
            code = ErrorCode.INTERNAL.value
            log.exception("request %s from %s failed", op, self.peer)
            answer = protocol.error(request_id, ErrorCode.INTERNAL, "internal error; the node logged it")
        finally:
            self._in_flight -= 1
        self._server.metrics.request(op, time.perf_counter() - started, code)
        self._write(answer)

    def _write(self, message: dict[str, Any]) -> None:
        if self._transport is None or self._transport.is_closing():
            return
        try:
            frame = protocol.encode(message, self._server.max_frame_bytes)
        except protocol.ProtocolError as exc:  # an answer over the frame limit: tell the client what to change
            frame = protocol.encode(protocol.error(message.get("id"), exc.code,
                                                   f"the answer is too large ({exc.message}); ask for fewer messages"))
        self._transport.write(frame)

    def _close_with(self, request_id: int | None, code: ErrorCode, message: str) -> None:
        self._write(protocol.error(request_id, code, message))
        if self._transport is not None:
            self._transport.close()
            self._transport = None


class FrontendServer:
    def __init__(self, broker: Broker, authenticator: Authenticator, metrics: Any, *, node_id: str,
                 max_connections: int, max_in_flight: int, max_frame_bytes: int) -> None:
        self.broker = broker
        self.authenticator = authenticator
        self.metrics = metrics
        self.node_id = node_id
        self.max_connections = max_connections
        self.max_in_flight = max_in_flight
        self.max_frame_bytes = max_frame_bytes
        self.sessions: set[Session] = set()
        self._server: asyncio.AbstractServer | None = None

    async def start(self, host: str, port: int, tls: ssl.SSLContext | None) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: Session(self), host, port, ssl=tls, reuse_address=True,
                                                backlog=512)

    def stop_accepting(self) -> None:
        if self._server is not None:
            self._server.close()

    async def close(self) -> None:
        self.stop_accepting()
        for session in list(self.sessions):
            if session._transport is not None:
                session._transport.close()
        if self._server is not None:
            await self._server.wait_closed()
