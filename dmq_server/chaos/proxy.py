"""A fault-injecting network of TCP proxies in front of every dmq node: partitions, one-way cuts, latency.

Why proxies in front of nodes, not one per directed link: a node's Raft identity IS its Raft address. The dialer
checks that the acceptor's HELLO names the address it dialed (dmq_server/raft/transport.py, ``expected_peer``),
and groups look their peers up by the id in the HELLO (``GroupTransport._nodes`` keyed by address, ``RaftHost
._deliver`` passes ``conn.peer_id``). So every node must know every other node under one address, and a per-link
proxy port (node i listing node j as "the port of proxy i->j") fails the handshake. Instead each node gets:

* a Raft proxy listening on the node's advertised Raft address (the one every config lists) and forwarding to
  the node's private bind address (``dmq_server.chaos.node --raft-bind``). Only one TCP connection exists per
  node pair (the greater address dials), and it arrives at the acceptor's proxy; the dialer's HELLO is plain text
  (magic, version, role, nonce, id), so the proxy reads the id to learn which node is on the other end.
* a client proxy on the advertised client address, forwarding to the private client bind. Nodes forward requests
  to leaders over client ports; their handshake frame says ``"client": "dmq-node/<id>"`` (frontend/peers.py),
  which tells node-to-node traffic from external clients (the workload, tests), which count as ``CLIENT``.

Every byte is forwarded unchanged (frames carry MACs; the proxy could not alter them anyway). A directed link
(src, dst) is the bytes src sends to dst, whichever side dialed, over Raft and client connections alike, so
``block(i, j)`` is a one-way cut and a partition blocks both directions.

A blocked link holds bytes, it does not destroy them: the proxy stops writing them (reading stays bounded by a
small per-direction queue, then TCP backpressure), like packets dropped while TCP retransmits. A connection
whose link is blocked when it arrives is accepted but not connected onward (a lost SYN) until the link heals.
When a partition heals, held bytes flow in order, stale messages included, unless the nodes gave up on the
connection meanwhile (RaftHost drops a connection after 3 s of silence, a handshake after 5 s). ``reject=True``
models the other kind of failure: connections on the cut links are reset at once and new ones closed on arrival.

Usage::

    net = Network(nodes).start()          # nodes: ProxiedNode(id, raft, raft_bind, client, client_bind) each
    net.partition([[0], [1, 2]]); net.heal(); net.isolate(2); net.block(0, 1); net.delay(0, 1, 0.05)
    net.stop()                            # closes every socket; the advertised ports are free again

The proxies run on one asyncio loop in a daemon thread; the control methods are called from any thread and
return once the change is in force.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import socket
import struct
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, TypeVar

import msgpack

from dmq_server.raft.transport import ProtocolError, parse_hello

log = logging.getLogger(__name__)

__all__ = ["CLIENT", "ProxiedNode", "Network", "LinkStats"]

CLIENT = -1  # the source/destination index of external clients
CHUNK = 64 * 1024
QUEUE_CHUNKS = 16  # per direction of one connection: at most 1 MiB read ahead of a held or delayed link
IDENTIFY_SECONDS = 10.0  # a dmq client must send its handshake within 10 s anyway
IDENTIFY_MAX_BYTES = 64 * 1024  # a client handshake frame is tiny; a longer one is not from a node
CONNECT_SECONDS = 5.0
MAX_CONNECTIONS = 512  # per Network; past it new connections are closed on arrival
CONTROL_SECONDS = 10.0
_LEN = struct.Struct(">I")
_RAFT_ID_MAX = 40 + 255  # HELLO head + the longest id (transport.MAX_ID_BYTES)
T = TypeVar("T")


@dataclasses.dataclass(frozen=True, slots=True)
class ProxiedNode:
    node_id: str
    raft: str  # advertised "host:port": in every config; the proxy listens here
    raft_bind: str  # where the node's Raft host really listens
    client: str
    client_bind: str


@dataclasses.dataclass
class LinkStats:
    bytes: int = 0
    connections: int = 0  # connections that carried this link (either direction)
    refused: int = 0  # closed on arrival or reset because the link was cut with reject=True


class _Link:
    def __init__(self) -> None:
        self.open = asyncio.Event()
        self.open.set()
        self.delay = 0.0
        self.reject = False
        self.stats = LinkStats()


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


class _Conn:
    """One accepted connection and its onward one; closing either closes both."""

    def __init__(self, network: "Network", down: asyncio.StreamWriter) -> None:
        self.network = network
        self.down = down
        self.up: asyncio.StreamWriter | None = None
        self.links: tuple[tuple[int, int], ...] = ()
        self.tasks: list[asyncio.Task[Any]] = []
        self.closed = False

    def close(self, reset: bool = False) -> None:
        if self.closed:
            return
        self.closed = True
        for writer in (self.down, self.up):
            if writer is None:
                continue
            if reset:  # RST instead of FIN: the peer sees "connection reset", as from a failing middlebox
                sock = writer.get_extra_info("socket")
                if sock is not None:
                    try:
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    except OSError:
                        pass
            writer.close()
        for task in self.tasks:
            if task is not asyncio.current_task():
                task.cancel()
        self.network._conns.discard(self)


class Network:
    """Proxies in front of every node, and the switches that cut, delay and heal the links between them."""

    def __init__(self, nodes: Sequence[ProxiedNode]) -> None:
        self.nodes = list(nodes)
        self._by_raft = {n.raft: i for i, n in enumerate(self.nodes)}
        self._by_id = {n.node_id: i for i, n in enumerate(self.nodes)}
        ends = [*range(len(self.nodes)), CLIENT]
        self._links_spec = [(a, b) for a in ends for b in ends if a != b]
        self._links: dict[tuple[int, int], _Link] = {}
        self._conns: set[_Conn] = set()
        self._servers: list[asyncio.AbstractServer] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> "Network":
        if self._thread is not None:
            raise RuntimeError("already started")
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self._open())
            except BaseException as exc:  # noqa: BLE001  reported to start()'s caller
                failure.append(exc)
                ready.set()
                loop.run_until_complete(self._close())
                loop.close()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._close())
            loop.close()

        self._thread = threading.Thread(target=run, name="dmq-chaos-network", daemon=True)
        self._thread.start()
        if not ready.wait(CONTROL_SECONDS):
            raise RuntimeError("the proxies did not start")
        if failure:
            self._thread.join(CONTROL_SECONDS)
            self._thread = None
            raise failure[0]
        return self

    def stop(self, timeout: float = CONTROL_SECONDS) -> None:
        """Close every listener and connection and stop the loop thread (joined)."""
        if self._thread is None or self._loop is None:
            return
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise RuntimeError(f"the proxy thread did not stop within {timeout} s")
        self._thread = None

    def __enter__(self) -> "Network":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def _open(self) -> None:
        self._links = {key: _Link() for key in self._links_spec}
        for i, node in enumerate(self.nodes):
            for front, back, identify in ((node.raft, node.raft_bind, self._identify_raft),
                                          (node.client, node.client_bind, self._identify_client)):
                host, port = _split(front)
                server = await asyncio.start_server(
                    lambda r, w, i=i, back=back, identify=identify: self._serve(r, w, i, back, identify),
                    host, port, reuse_address=True)
                self._servers.append(server)

    async def _close(self) -> None:
        for server in self._servers:
            server.close()
        for conn in list(self._conns):
            conn.close()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for server in self._servers:
            await server.wait_closed()
        self._servers.clear()

    # ------------------------------------------------------------------ control (any thread)

    def _call(self, fn: Callable[[], T]) -> T:
        if self._loop is None or self._thread is None:
            raise RuntimeError("the network is not running")

        async def run() -> T:
            return fn()
        future = asyncio.run_coroutine_threadsafe(run(), self._loop)
        return future.result(CONTROL_SECONDS)

    def _set(self, pairs: Iterable[tuple[int, int]], *, blocked: bool, reject: bool = False) -> None:
        pairs = list(pairs)
        for a, b in pairs:
            if (a, b) not in self._links_spec:
                raise ValueError(f"no link {a}->{b}: indexes are 0..{len(self.nodes) - 1} or CLIENT")

        def apply() -> None:
            for key in pairs:
                link = self._links[key]
                if blocked:
                    link.open.clear()
                    link.reject = reject
                else:
                    link.open.set()
                    link.reject = False
            if blocked and reject:
                for conn in list(self._conns):
                    if any(key in pairs for key in conn.links):
                        for key in conn.links:
                            self._links[key].stats.refused += key in pairs
                        conn.close(reset=True)
        self._call(apply)

    def block(self, src: int, dst: int, *, reject: bool = False) -> None:
        """Cut the one-way link src -> dst (node indexes, or CLIENT)."""
        self._set([(src, dst)], blocked=True, reject=reject)

    def unblock(self, src: int, dst: int) -> None:
        self._set([(src, dst)], blocked=False)

    def partition(self, components: Sequence[Sequence[int]], *, reject: bool = False) -> None:
        """Split the nodes into components that cannot reach each other (both directions, Raft and forwarding).
        Every node must be in exactly one component. External clients still reach every node; links inside a
        component are healed."""
        seen = [i for component in components for i in component]
        if sorted(seen) != list(range(len(self.nodes))):
            raise ValueError(f"components {components} must hold every node index 0..{len(self.nodes) - 1} once")
        side = {i: c for c, component in enumerate(components) for i in component}
        cut = [(a, b) for a in side for b in side if a != b and side[a] != side[b]]
        keep = [(a, b) for a in side for b in side if a != b and side[a] == side[b]]
        self._set(keep, blocked=False)
        self._set(cut, blocked=True, reject=reject)

    def isolate(self, node: int, *, reject: bool = False) -> None:
        """Cut `node` off from every other node (clients still reach it)."""
        others = [i for i in range(len(self.nodes)) if i != node]
        self.partition([[node], others], reject=reject)

    def isolate_from_clients(self, node: int, *, reject: bool = False) -> None:
        self._set([(CLIENT, node), (node, CLIENT)], blocked=True, reject=reject)

    def delay(self, src: int, dst: int, seconds: float) -> None:
        """Add one-way latency to src -> dst (0 removes it)."""
        if not 0 <= seconds <= 60:
            raise ValueError("delay must be 0..60 s")

        def apply() -> None:
            self._links[(src, dst)].delay = seconds
        self._call(apply)

    def heal(self) -> None:
        """Every link open, no latency."""
        self._set(self._links_spec, blocked=False)

        def clear_delays() -> None:
            for link in self._links.values():
                link.delay = 0.0
        self._call(clear_delays)

    def stats(self) -> dict[tuple[int, int], LinkStats]:
        return self._call(lambda: {key: dataclasses.replace(link.stats) for key, link in self._links.items()})

    def blocked(self) -> set[tuple[int, int]]:
        return self._call(lambda: {key for key, link in self._links.items() if not link.open.is_set()})

    def connections(self) -> int:
        return self._call(lambda: len(self._conns))

    # ------------------------------------------------------------------ connections (loop thread)

    async def _identify_raft(self, reader: asyncio.StreamReader) -> tuple[int | None, bytes]:
        """The dialer's HELLO (transport.make_hello) names it: its advertised Raft address."""
        buf = b""
        while len(buf) <= _RAFT_ID_MAX:
            chunk = await reader.read(_RAFT_ID_MAX + 1 - len(buf))
            if not chunk:
                return None, buf
            buf += chunk
            try:
                parsed = parse_hello(buf)
            except ProtocolError:
                return None, buf  # not a dmq node: forwarded anyway, the node rejects it
            if parsed is not None:
                return self._by_raft.get(parsed[1]), buf
        return None, buf

    async def _identify_client(self, reader: asyncio.StreamReader) -> tuple[int | None, bytes]:
        """The first client frame is the handshake; nodes name themselves "dmq-node/<id>" in it."""
        head = await reader.readexactly(_LEN.size)
        (length,) = _LEN.unpack(head)
        if length > IDENTIFY_MAX_BYTES:
            return CLIENT, head
        body = await reader.readexactly(length)
        try:
            hello = msgpack.unpackb(body, raw=False)
        except Exception:  # noqa: BLE001  not msgpack: the node answers ProtocolError
            return CLIENT, head + body
        name = hello.get("client") if isinstance(hello, dict) else None
        if isinstance(name, str) and name.startswith("dmq-node/"):
            return self._by_id.get(name[len("dmq-node/"):], CLIENT), head + body
        return CLIENT, head + body

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, dst: int, backend: str,
                     identify: Callable[[asyncio.StreamReader], Awaitable[tuple[int | None, bytes]]]) -> None:
        conn = _Conn(self, writer)
        if len(self._conns) >= MAX_CONNECTIONS:
            conn.close()
            return
        self._conns.add(conn)
        conn.tasks.append(asyncio.current_task())  # type: ignore[arg-type]
        try:
            try:
                src, first = await asyncio.wait_for(identify(reader), IDENTIFY_SECONDS)
            except (asyncio.TimeoutError, asyncio.IncompleteReadError, OSError):
                return
            if src is None or src == dst:
                src = CLIENT  # not a node we know: treated as an outside client
            conn.links = ((src, dst), (dst, src))  # type: ignore[assignment]
            there, back = self._links[(src, dst)], self._links[(dst, src)]  # type: ignore[index]
            there.stats.connections += 1
            back.stats.connections += 1
            if not there.open.is_set() and there.reject:
                there.stats.refused += 1
                conn.close(reset=True)
                return
            ahead: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(QUEUE_CHUNKS)
            await ahead.put((time.monotonic() + there.delay, first))
            reading = asyncio.ensure_future(self._read(reader, ahead, there))
            conn.tasks.append(reading)
            await there.open.wait()  # a SYN into a cut link waits for the heal
            host, port = _split(backend)
            try:
                up_reader, up_writer = await asyncio.wait_for(asyncio.open_connection(host, port), CONNECT_SECONDS)
            except (OSError, asyncio.TimeoutError):
                return  # the node is down: the dialer sees the connection close, as with a refused connect
            conn.up = up_writer
            behind: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(QUEUE_CHUNKS)
            pumps = [asyncio.ensure_future(self._write(ahead, up_writer, there)),
                     asyncio.ensure_future(self._read(up_reader, behind, back)),
                     asyncio.ensure_future(self._write(behind, writer, back))]
            conn.tasks += pumps
            # Ends when either side's EOF has been delivered in order, or a write fails (reset by the peer).
            await asyncio.wait([pumps[0], pumps[2]], return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            pass
        finally:
            conn.close()

    @staticmethod
    async def _read(reader: asyncio.StreamReader, queue: asyncio.Queue[tuple[float, bytes]], link: _Link) -> None:
        while True:
            try:
                data = await reader.read(CHUNK)
            except OSError:
                data = b""
            await queue.put((time.monotonic() + link.delay, data))
            if not data:  # EOF travels in order, after the bytes before it
                return

    @staticmethod
    async def _write(queue: asyncio.Queue[tuple[float, bytes]], writer: asyncio.StreamWriter, link: _Link) -> None:
        while True:
            due, data = await queue.get()
            while True:  # hold while the link is cut; deliver no earlier than its latency allows
                await link.open.wait()
                wait = due - time.monotonic()
                if wait <= 0:
                    break
                await asyncio.sleep(min(wait, 0.05))
            if not data:
                return
            writer.write(data)
            await writer.drain()
            link.stats.bytes += len(data)
