"""Wire protocol of the shared Raft transport: authentication, MACs, bounds, and that nothing unauthenticated is
ever unpickled (checked with a payload whose unpickling would create a file)."""

import os
import pickle
import socket
import struct
import time

import pytest

from dmq_server.raft import transport as tr
from dmq_server.raft.host import RaftHost
from dmq_server.raft.transport import (KIND_GROUP, ROLE_ACCEPTOR, ROLE_DIALER, Connection, _hash_secret,
                                       encode_frame, make_hello, parse_hello, proof, session_keys)

from .cluster import free_ports
from .hostutil import SECRET, InProcessCluster, closed_by_peer, raw_connect


class _Evil:
    """Unpickling this creates a file: the visible effect of an unpickled attacker payload."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


class _Spy:
    """Records every payload the transport unpickles (the cluster's own traffic included)."""

    def __init__(self):
        self.calls = []

    def __call__(self, data):
        self.calls.append(bytes(data))
        return _real_loads(data)

    def saw(self, marker: bytes) -> int:
        return sum(1 for c in self.calls if marker in c)


_real_loads = tr.loads_payload
MARK = b"pwned-marker"


@pytest.fixture
def loads_spy(monkeypatch):
    spy = _Spy()
    monkeypatch.setattr(tr, "loads_payload", spy)
    return spy


@pytest.fixture
def cluster():
    with InProcessCluster(3, groups=2, host_kwargs=dict(max_frame_bytes=1 << 20, handshake_timeout=2.0)) as cl:
        cl.wait_leaders()
        yield cl


def _still_serving(cl, tag):
    for gid in cl.groups:
        cl.leader(gid).apply(("after", tag), sync=True, timeout=10)
    assert all(cl.wait_applied(gid, 1) for gid in cl.groups)


def _handshake(sock, secret, my_id="127.0.0.1:1"):
    """Client side of the handshake as a dialer. Returns (send_key, recv_key) derived with ``secret``."""
    hello = make_hello(ROLE_DIALER, my_id)
    sock.sendall(hello)
    buf = b""
    while True:
        parsed = parse_hello(buf)
        if parsed is not None:
            break
        chunk = sock.recv(4096)
        assert chunk, "server closed during HELLO"
        buf += chunk
    role, peer_id, end = parsed
    assert role == ROLE_ACCEPTOR
    peer_hello = buf[:end]
    s = _hash_secret(secret)
    sock.sendall(proof(s, ROLE_DIALER, hello, peer_hello))
    k_d, k_a = session_keys(s, hello, peer_hello)
    return k_d, k_a, buf[end:]


def test_no_handshake_raw_pickle_is_dropped_and_not_unpickled(cluster, loads_spy, tmp_path):
    target = tmp_path / MARK.decode()
    s = raw_connect(cluster.addrs[0])
    blob = pickle.dumps(_Evil(str(target)), 4)
    s.sendall(struct.pack("i", len(blob)) + blob)  # what pysyncobj's TCPTransport would accept
    assert closed_by_peer(s)
    s.close()
    assert not target.exists() and loads_spy.saw(MARK) == 0
    assert cluster.hosts[0].stats()["protocol_errors"] >= 1
    _still_serving(cluster, "raw")


def test_wrong_secret_is_refused_and_nothing_it_sends_is_unpickled(cluster, loads_spy, tmp_path):
    target = tmp_path / MARK.decode()
    s = raw_connect(cluster.addrs[1])
    k_d, _k_a, _rest = _handshake(s, b"wrong-secret-wrong-secret-wrong!!")
    payload = pickle.dumps(_Evil(str(target)), 4)
    # frames MAC'd with the key an attacker could derive from the wrong secret
    s.sendall(b"".join(encode_frame(k_d, i, KIND_GROUP, b"g0", payload) for i in range(3)))
    assert closed_by_peer(s)
    s.close()
    time.sleep(0.2)
    assert not target.exists() and loads_spy.saw(MARK) == 0
    assert cluster.hosts[1].stats()["auth_failures"] >= 1
    _still_serving(cluster, "wrong-secret")


def test_host_with_wrong_secret_never_connects(cluster):
    # A full RaftHost with another secret, in a group "r0" with the cluster's hosts: whichever side dials (the
    # larger address), authentication fails both ways and no connection is ever established.
    from .hostutil import Group
    addr = "127.0.0.1:%d" % free_ports(1)[0]
    rogue = RaftHost(addr, b"another-secret-another-secret-!!", handshake_timeout=2.0).start()
    try:
        everyone = cluster.addrs + [addr]
        g = Group(addr, everyone, rogue.transport_for("r0"))
        rogue.add(g)
        for h in cluster.hosts:
            h.add(Group(h.address, everyone, h.transport_for("r0")))
        time.sleep(2.0)
        assert rogue.stats()["connections"] == 0
        fails = rogue.stats()["auth_failures"] + sum(h.stats()["auth_failures"] for h in cluster.hosts)
        assert fails >= 3  # one refused attempt per cluster host at least
        assert all(addr not in h.stats()["peers_connected"] for h in cluster.hosts)
        assert rogue.call(g._getLeader) is None
    finally:
        rogue.stop(destroy_groups=True)
    _still_serving(cluster, "rogue")


def test_bad_mac_with_right_secret_is_dropped_before_unpickling(cluster, loads_spy, tmp_path):
    target = tmp_path / MARK.decode()
    s = raw_connect(cluster.addrs[0])
    k_d, _k_a, _ = _handshake(s, SECRET)
    frame = bytearray(encode_frame(k_d, 0, KIND_GROUP, b"g0", pickle.dumps(_Evil(str(target)), 4)))
    frame[-1] ^= 1
    s.sendall(bytes(frame))
    assert closed_by_peer(s)
    s.close()
    assert not target.exists() and loads_spy.saw(MARK) == 0
    # a replayed frame (wrong sequence number) is a bad MAC too
    s = raw_connect(cluster.addrs[0])
    k_d, _k_a, _ = _handshake(s, SECRET)
    ok = encode_frame(k_d, 0, KIND_GROUP, b"nosuchgroup", pickle.dumps({"type": "x", "m": MARK}, 4))
    s.sendall(ok)
    time.sleep(0.3)
    s.sendall(ok)
    assert closed_by_peer(s)
    s.close()
    assert loads_spy.saw(MARK) == 1  # the first (valid) frame only
    _still_serving(cluster, "bad-mac")


def test_authenticated_payload_with_globals_is_refused(cluster, loads_spy, tmp_path):
    # defence in depth: even an authenticated peer cannot make the node import/call anything
    target = tmp_path / MARK.decode()
    s = raw_connect(cluster.addrs[0])
    k_d, _k_a, _ = _handshake(s, SECRET)
    s.sendall(encode_frame(k_d, 0, KIND_GROUP, b"g0", pickle.dumps(_Evil(str(target)), 4)))
    time.sleep(0.5)
    assert not target.exists() and loads_spy.saw(MARK) == 1
    s.close()
    _still_serving(cluster, "globals")


def test_oversize_frame_and_garbage_are_dropped_host_keeps_serving(cluster, loads_spy):
    s = raw_connect(cluster.addrs[2])
    k_d, _k_a, _ = _handshake(s, SECRET)
    s.sendall(struct.pack(">I", (1 << 20) + 1))  # just over max_frame_bytes: rejected on the header alone
    assert closed_by_peer(s)
    s.close()
    for junk in (os.urandom(5000), b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"DMQR" + os.urandom(300)):
        s = raw_connect(cluster.addrs[2])
        s.sendall(junk)
        assert closed_by_peer(s)
        s.close()
    # silent client: dropped after handshake_timeout
    s = raw_connect(cluster.addrs[2])
    assert closed_by_peer(s, timeout=6)
    s.close()
    st = cluster.hosts[2].stats()
    assert st["protocol_errors"] + st["auth_failures"] >= 5 and st["connections"] == 2
    _still_serving(cluster, "junk")


# ------------------------------------------------------------------------------------------ Connection unit tests

def _open_pair(max_send_buffer=1 << 20, max_frame_bytes=1 << 20, compress=None):
    a, b = socket.socketpair()
    secret = _hash_secret(SECRET)
    kw = dict(max_frame_bytes=max_frame_bytes, max_send_buffer=max_send_buffer, compress_min_bytes=compress,
              handshake_timeout=5)
    ca = Connection(a, ROLE_DIALER, "127.0.0.1:2", secret, expected_peer="127.0.0.1:1", **kw)
    cb = Connection(b, ROLE_ACCEPTOR, "127.0.0.1:1", secret, expected_peer=None, **kw)
    for s in (a, b):
        s.setblocking(False)
    got = {ca: [], cb: []}
    for _ in range(10):
        for c in (ca, cb):
            c.flush()
        for c in (ca, cb):
            try:
                c.on_readable(lambda gid, m, c=c: got[c].append((gid, m)))
            except BlockingIOError:
                pass
        if ca.is_open and cb.is_open:
            break
    assert ca.is_open and cb.is_open and cb.peer_id == "127.0.0.1:2" and ca.peer_id == "127.0.0.1:1"
    return ca, cb, got


def _pump(src, dst, got, rounds=1000):
    for _ in range(rounds):
        src.flush()
        dst.on_readable(lambda gid, m: got.append((gid, m)))
        if not src.wbuf:
            dst.on_readable(lambda gid, m: got.append((gid, m)))
            return


def test_send_buffer_is_bounded_and_drops_instead_of_growing():
    ca, cb, _ = _open_pair(max_send_buffer=64 * 1024)
    msg = {"type": "append_entries", "entries": [(b"x" * 1000, 1, 1)]}
    sent = 0
    while ca.send_message(b"g", msg):
        sent += 1
        assert sent < 1000
    assert len(ca.wbuf) <= 64 * 1024 and ca.dropped_full == 1
    got = []
    _pump(ca, cb, got)
    assert len(got) == sent and all(m == msg for _, m in got)
    assert ca.send_message(b"g", msg)  # room again once the peer read
    ca.close()
    cb.close()


def test_frames_split_at_every_byte_boundary_and_compression():
    ca, cb, _ = _open_pair(compress=100)
    msgs = [{"type": "t", "i": i, "data": b"ab" * (i * 50), "tup": (1, (2, 3)), "none": None} for i in range(20)]
    for m in msgs:
        assert ca.send_message(b"grp-%d" % (m["i"] % 3), m)
    data = bytes(ca.wbuf)
    ca.wbuf.clear()
    got = []
    for i in range(len(data)):  # one byte at a time
        ca.sock.send(data[i:i + 1])
        cb.on_readable(lambda gid, m: got.append((gid, m)))
    assert [m for _, m in got] == msgs
    assert [g for g, _ in got] == [b"grp-%d" % (i % 3) for i in range(20)]
    ca.close()
    cb.close()


def test_zip_bomb_is_refused():
    ca, cb, _ = _open_pair(max_frame_bytes=64 * 1024, compress=1)
    import zlib
    bomb = zlib.compress(b"\0" * (10 << 20), 9)
    assert len(bomb) < 64 * 1024
    ca.wbuf += encode_frame(ca._send_key, ca._send_seq, KIND_GROUP, b"g", bomb, flags=tr.FLAG_ZLIB)
    ca.flush()
    with pytest.raises(tr.ProtocolError):
        cb.on_readable(lambda gid, m: None)
    ca.close()
    cb.close()
