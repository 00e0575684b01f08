"""The chaos Network against plain TCP backends that record and echo what they get (no dmq node needed)."""

from __future__ import annotations

import socket
import socketserver
import struct
import threading
import time
from collections.abc import Iterator

import msgpack
import pytest

from dmq_client.testing import free_ports
from dmq_server.chaos.proxy import CLIENT, Network, ProxiedNode
from dmq_server.raft.transport import ROLE_DIALER, make_hello

WAIT = 3.0


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        server: Backend = self.server  # type: ignore[assignment]
        sock = self.request
        sock.settimeout(10)
        for _ in range(10_000):
            try:
                data = sock.recv(65536)
            except OSError:
                return
            if not data:
                return
            with server.lock:
                server.received += data
            sock.sendall(data)


class Backend(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: str) -> None:
        host, port = address.rsplit(":", 1)
        super().__init__((host, int(port)), _Echo)
        self.lock = threading.Lock()
        self.received = b""
        self.thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
        self.thread.join(5)


@pytest.fixture
def net() -> Iterator[tuple[Network, list[ProxiedNode], list[Backend]]]:
    ports = free_ports(12)
    nodes = [ProxiedNode(f"node{i + 1}", f"127.0.0.1:{ports[4 * i]}", f"127.0.0.1:{ports[4 * i + 1]}",
                         f"127.0.0.1:{ports[4 * i + 2]}", f"127.0.0.1:{ports[4 * i + 3]}") for i in range(3)]
    backends = [Backend(address) for n in nodes for address in (n.raft_bind, n.client_bind)]
    network = Network(nodes).start()
    try:
        yield network, nodes, backends
    finally:
        network.stop()
        for backend in backends:
            backend.stop()


def _dial(address: str) -> socket.socket:
    host, port = address.rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=WAIT)
    sock.settimeout(0.3)
    return sock


def _raft_dial(src: ProxiedNode, dst: ProxiedNode) -> tuple[socket.socket, bytes]:
    """Connect as node `src` would to `dst`'s Raft port: its HELLO first (echoed back by the backend)."""
    sock = _dial(dst.raft)
    hello = make_hello(ROLE_DIALER, src.raft)
    sock.sendall(hello)
    return sock, hello


def _recv_exactly(sock: socket.socket, n: int, timeout: float = WAIT) -> bytes:
    deadline = time.monotonic() + timeout
    got = b""
    while len(got) < n and time.monotonic() < deadline:
        try:
            chunk = sock.recv(n - len(got))
        except socket.timeout:
            continue
        if not chunk:
            break
        got += chunk
    return got


def _nothing_arrives(sock: socket.socket, seconds: float = 0.5) -> bool:
    sock.settimeout(seconds)
    try:
        sock.recv(1)  # data or EOF: something arrived
        return False
    except socket.timeout:
        return True
    finally:
        sock.settimeout(0.3)


def _closed_by_peer(sock: socket.socket, timeout: float = WAIT) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if sock.recv(65536) == b"":
                return True
        except socket.timeout:
            continue
        except ConnectionResetError:
            return True
    return False


def test_bytes_flow_both_ways_and_the_link_is_identified(net) -> None:
    network, nodes, backends = net
    sock, hello = _raft_dial(nodes[2], nodes[0])
    with sock:
        assert _recv_exactly(sock, len(hello)) == hello
        sock.sendall(b"x" * 200_000)
        assert _recv_exactly(sock, 200_000) == b"x" * 200_000
    stats = network.stats()
    assert stats[(2, 0)].bytes == len(hello) + 200_000 and stats[(0, 2)].bytes == len(hello) + 200_000
    assert stats[(1, 0)].bytes == 0 and stats[(CLIENT, 0)].bytes == 0


def test_a_cut_link_holds_bytes_and_the_heal_delivers_them(net) -> None:
    network, nodes, backends = net
    sock, hello = _raft_dial(nodes[1], nodes[0])
    with sock:
        assert _recv_exactly(sock, len(hello)) == hello
        network.isolate(0)
        sock.sendall(b"during")
        assert _nothing_arrives(sock)
        assert b"during" not in backends[0].received  # held in front of the node, not lost
        network.heal()
        assert _recv_exactly(sock, 6) == b"during"


def test_one_way_cuts(net) -> None:
    network, nodes, backends = net
    sock, hello = _raft_dial(nodes[1], nodes[0])
    with sock:
        assert _recv_exactly(sock, len(hello)) == hello
        network.block(0, 1)  # node 0 -> node 1 only: requests arrive, answers are held
        sock.sendall(b"ping")
        deadline = time.monotonic() + WAIT
        while b"ping" not in backends[0].received and time.monotonic() < deadline:
            time.sleep(0.01)
        assert b"ping" in backends[0].received
        assert _nothing_arrives(sock)
        assert network.blocked() == {(0, 1)}
        network.unblock(0, 1)
        assert _recv_exactly(sock, 4) == b"ping"


def test_a_connection_into_a_cut_link_waits_for_the_heal(net) -> None:
    network, nodes, backends = net
    network.partition([[0, 1], [2]])
    sock, hello = _raft_dial(nodes[2], nodes[0])  # accepted, but not connected onward: a lost SYN
    with sock:
        assert _nothing_arrives(sock)
        assert hello not in backends[0].received
        network.heal()
        assert _recv_exactly(sock, len(hello)) == hello


def test_reject_resets_open_connections_and_refuses_new_ones(net) -> None:
    network, nodes, backends = net
    sock, hello = _raft_dial(nodes[1], nodes[0])
    with sock:
        assert _recv_exactly(sock, len(hello)) == hello
        network.isolate(1, reject=True)
        assert _closed_by_peer(sock)
    again, _ = _raft_dial(nodes[1], nodes[0])
    with again:
        assert _closed_by_peer(again)
    assert network.stats()[(1, 0)].refused >= 2
    network.heal()
    third, hello = _raft_dial(nodes[1], nodes[0])
    with third:
        assert _recv_exactly(third, len(hello)) == hello


def _client_hello(name: str) -> bytes:
    body = msgpack.packb({"dmq": 1, "token": None, "client": name})
    return struct.pack(">I", len(body)) + body


def test_client_ports_tell_nodes_from_outside_clients(net) -> None:
    network, nodes, backends = net
    network.isolate(0)
    forwarded = _dial(nodes[0].client)
    outside = _dial(nodes[0].client)
    with forwarded, outside:
        forwarded.sendall(_client_hello("dmq-node/node2"))  # node2 forwarding to node1: cut
        outside.sendall(_client_hello("dmq-py/0.1"))  # a workload client: not affected by the partition
        frame = _client_hello("dmq-py/0.1")
        assert _recv_exactly(outside, len(frame)) == frame
        assert _nothing_arrives(forwarded)
        network.isolate_from_clients(0)
        outside.sendall(b"more")
        assert _nothing_arrives(outside)
        network.heal()
        frame = _client_hello("dmq-node/node2")
        assert _recv_exactly(forwarded, len(frame)) == frame
        assert _recv_exactly(outside, 4) == b"more"
    assert network.stats()[(1, 0)].connections == 1 and network.stats()[(CLIENT, 0)].connections == 1


def test_delay_adds_one_way_latency(net) -> None:
    network, nodes, backends = net
    sock, hello = _raft_dial(nodes[1], nodes[0])
    with sock:
        assert _recv_exactly(sock, len(hello)) == hello
        network.delay(1, 0, 0.3)
        started = time.monotonic()
        sock.sendall(b"slow")
        assert _recv_exactly(sock, 4) == b"slow"
        assert time.monotonic() - started >= 0.29
        network.heal()
        started = time.monotonic()
        sock.sendall(b"fast")
        assert _recv_exactly(sock, 4) == b"fast"
        assert time.monotonic() - started < 0.2


def test_bad_arguments_are_refused(net) -> None:
    network, nodes, backends = net
    with pytest.raises(ValueError):
        network.partition([[0], [1]])  # node 2 missing
    with pytest.raises(ValueError):
        network.block(0, 7)
    with pytest.raises(ValueError):
        network.delay(0, 1, -1)


def test_stop_closes_connections_and_frees_the_ports() -> None:
    ports = free_ports(4)
    node = ProxiedNode("node1", f"127.0.0.1:{ports[0]}", f"127.0.0.1:{ports[1]}", f"127.0.0.1:{ports[2]}",
                       f"127.0.0.1:{ports[3]}")
    backend = Backend(node.raft_bind)
    network = Network([node]).start()
    try:
        sock = _dial(node.raft)
        sock.sendall(make_hello(ROLE_DIALER, "127.0.0.1:1"))  # an unknown node counts as an outside client
        assert _recv_exactly(sock, 10)
        assert network.connections() == 1
    finally:
        network.stop()
        backend.stop()
    with sock:
        assert _closed_by_peer(sock)
    for port in (ports[0], ports[2]):
        probe = socket.socket()
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(("127.0.0.1", port))  # the proxy's listening ports are free again
        probe.close()
    with pytest.raises(RuntimeError):
        network.heal()
