"""Connections from this node to the client ports of the other nodes, for forwarding requests to leaders."""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

from dmq_client.connection import AsyncConnection
from dmq_client.errors import DmqError

from .requests import RequestError
from dmq_client.protocol import ErrorCode

FORWARD_TIMEOUT = 25.0  # above the longest long poll (20 s)


class PeerClients:
    """One pipelined connection per peer node, opened on first use and re-opened after a failure."""

    def __init__(self, token: str | None, tls: ssl.SSLContext | None, node_name: str) -> None:
        self._token = token
        self._tls = tls
        self._client_name = f"dmq-node/{node_name}"
        self._connections: dict[str, AsyncConnection] = {}
        self._opening: dict[str, asyncio.Future[AsyncConnection]] = {}

    async def _connection(self, address: str) -> AsyncConnection:
        connection = self._connections.get(address)
        if connection is not None and not connection.closed:
            return connection
        opening = self._opening.get(address)
        if opening is None:
            opening = asyncio.ensure_future(AsyncConnection.open(address, self._token, tls=self._tls,
                                                                 client=self._client_name))
            self._opening[address] = opening
            opening.add_done_callback(lambda _: self._opening.pop(address, None))
        connection = await asyncio.shield(opening)
        self._connections[address] = connection
        return connection

    async def call(self, address: str, op: str, args: dict[str, Any], *, on_behalf: str,
                   timeout: float = FORWARD_TIMEOUT) -> Any:
        """Run `op` on the node at `address`, for `on_behalf`; its errors come back as RequestError."""
        try:
            connection = await self._connection(address)
            return await connection.call(op, args, timeout, fwd=on_behalf)
        except DmqError as exc:
            raise RequestError(exc.code, exc.message, exc.leader) from None
        except (OSError, asyncio.TimeoutError) as exc:
            raise RequestError(ErrorCode.UNAVAILABLE, f"node {address} is unreachable: {exc}") from None

    async def close(self) -> None:
        for connection in list(self._connections.values()):
            await connection.close()
        self._connections.clear()
