"""A node that dies during the handshake gives a retryable Unavailable, never a bare socket error.

A node killed while a client connects has its connection accepted by the kernel and then reset: the SDK's retry
loop only retries dmq errors, so a raw ConnectionResetError there reached the caller of a send.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
from collections.abc import Iterator

import pytest

from dmq_client.connection import AsyncConnection, Connection
from dmq_client.errors import Unavailable

ACCEPT_TIMEOUT = 10.0


def _reset(conn: socket.socket) -> None:
    """Close with an RST, as the kernel does for the sockets of a killed process with unread data."""
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()


@pytest.fixture(params=["before_the_hello", "after_the_hello"])
def resetting_node(request: pytest.FixtureRequest) -> Iterator[str]:
    """An address whose listener resets each connection, before or after reading the client's hello."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.1)  # how soon the server sees `stop`
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                if request.param == "after_the_hello":
                    conn.settimeout(ACCEPT_TIMEOUT)
                    conn.recv(1 << 16)
                _reset(conn)

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    try:
        yield "127.0.0.1:%d" % listener.getsockname()[1]
    finally:
        stop.set()
        server.join(ACCEPT_TIMEOUT)
        listener.close()


def test_a_blocking_handshake_reset_is_unavailable(resetting_node: str) -> None:
    for _ in range(20):  # the reset races the hello: each side of the race ends the same way
        with pytest.raises(Unavailable):
            Connection(resetting_node, connect_timeout=ACCEPT_TIMEOUT)


def test_an_async_handshake_reset_is_unavailable(resetting_node: str) -> None:
    async def attempts() -> None:
        for _ in range(20):
            with pytest.raises(Unavailable):
                await AsyncConnection.open(resetting_node, connect_timeout=ACCEPT_TIMEOUT)

    asyncio.run(attempts())
