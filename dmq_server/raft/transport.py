"""Authenticated, multiplexed node-to-node transport for pysyncobj Raft groups.

pysyncobj's own ``TCPTransport`` gives every SyncObj its own listening port, its own connections and its own
thread, and it unpickles whatever anyone who reaches the port sends (remote code execution without ``password``).
This module replaces it for dmq: all Raft groups of one node share ONE listening port and ONE TCP connection per
pair of nodes, owned by a :class:`dmq_server.raft.host.RaftHost`. This module holds the wire protocol (handshake,
framing, MACs, bounded buffers: :class:`Connection`) and the per-group pysyncobj ``Transport``
(:class:`GroupTransport`); the event loop, the listening socket and the tick scheduling live in ``host.py``.

Node identity is the node's Raft address ``"host:port"`` (the address its host listens on). A group's SyncObj
sees its peers as pysyncobj ``TCPNode`` objects with those addresses, so pysyncobj's own code runs unchanged.

Wire protocol (version 1). Integers are big-endian.

Handshake, nothing is unpickled before it succeeds. Both sides send a HELLO as soon as the TCP connection is up::

    b"DMQR" | version u8 | role u8 (0 dialer, 1 acceptor) | nonce 32 B (os.urandom) | id_len u16 | id (utf-8)

After receiving the peer's HELLO each side sends a 32-byte PROOF::

    HMAC-SHA256(secret, b"dmq-raft-auth-v1" | own role u8 | hello_dialer | hello_acceptor)

and checks the peer's PROOF (the same with the peer's role) with ``hmac.compare_digest``. Both nonces are in the
transcript, so a proof is bound to this connection (no replay), and the role byte stops a proof from being reflected
back. The dialer also checks that the acceptor's id is the address it dialed. Any failure, a malformed or oversize
HELLO, or a handshake that takes longer than ``handshake_timeout``, drops the connection and is logged.

Session keys (one per direction, never the secret itself)::

    k   = HMAC-SHA256(secret, b"dmq-raft-key-v1" | hello_dialer | hello_acceptor)
    k_d = HMAC-SHA256(k, b"dialer->acceptor"),   k_a = HMAC-SHA256(k, b"acceptor->dialer")

Frames after the handshake::

    length u32 (bytes after this field, MAC included) | kind u8 | flags u8 | gid_len u16 | gid | payload | mac 16 B
    mac = HMAC-SHA256(k_direction, seq u64 | length .. payload)[:16]

``seq`` counts the frames of one direction of one connection from 0; it is not sent, so a replayed, reordered,
dropped or injected frame fails the MAC. The length is checked against ``max_frame_bytes`` before the body is
buffered; the MAC is checked before the payload is decompressed (bounded) or unpickled. Frame kinds: 1 a pysyncobj
message of group ``gid`` (pickled, protocol 4; ``flags & 1``: zlib-compressed), 2 a keep-alive (empty). Payloads
are unpickled with an unpickler that refuses every global (pysyncobj messages hold only builtin types), as
defence in depth behind the MAC. There is no encryption: frames are authenticated, not confidential.

Bounds: frame size (``max_frame_bytes``), per-connection unsent bytes (``max_send_buffer``: :meth:`Connection.send`
returns False and drops the message when it would be exceeded; Raft re-sends), decompressed size, HELLO size,
handshake time, and (in the host) the number of connections still in their handshake.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import logging
import os
import pickle
import socket
import struct
import threading
import zlib

from pysyncobj.monotonic import monotonic as _now  # pysyncobj's clock (CLOCK_MONOTONIC_RAW), not time.monotonic
from pysyncobj.node import Node, TCPNode
from pysyncobj.transport import Transport

logger = logging.getLogger(__name__)

__all__ = ["Connection", "GroupTransport", "ProtocolError", "AuthError", "make_hello", "parse_hello", "proof",
           "session_keys", "encode_frame", "PROTOCOL_VERSION", "PICKLE_PROTOCOL", "ROLE_DIALER", "ROLE_ACCEPTOR",
           "KIND_GROUP", "KIND_PING", "MAC_LEN", "MAX_ID_BYTES", "MAX_GID_BYTES", "loads_payload"]

PROTOCOL_VERSION = 1
PICKLE_PROTOCOL = 4
MAGIC = b"DMQR"
ROLE_DIALER = 0
ROLE_ACCEPTOR = 1
NONCE_LEN = 32
PROOF_LEN = 32
MAC_LEN = 16
MAX_ID_BYTES = 255
MAX_GID_BYTES = 1024
KIND_GROUP = 1
KIND_PING = 2
FLAG_ZLIB = 1

_AUTH_LABEL = b"dmq-raft-auth-v1"
_KEY_LABEL = b"dmq-raft-key-v1"
_HELLO_HEAD = struct.Struct(">4sBB32sH")  # magic, version, role, nonce, id_len
_LEN = struct.Struct(">I")
_FRAME_HEAD = struct.Struct(">IBBH")  # length, kind, flags, gid_len
_SEQ = struct.Struct(">Q")
_MIN_FRAME = _FRAME_HEAD.size - _LEN.size + MAC_LEN  # smallest legal value of the length field

RECV_CHUNK = 256 * 1024
MAX_READ_PER_EVENT = 4 * 1024 * 1024
_MAX_HANDSHAKE_BUFFER = 4096  # fairness: bytes read from one connection per readiness event


class ProtocolError(Exception):
    """The peer broke the wire protocol (bad HELLO, oversize frame, bad MAC...). The connection must be dropped."""


class AuthError(ProtocolError):
    """The peer failed authentication."""


# ------------------------------------------------------------------------------------------------ pure protocol

def make_hello(role: int, node_id: str, nonce: bytes | None = None) -> bytes:
    ident = node_id.encode("utf-8")
    if len(ident) > MAX_ID_BYTES:
        raise ValueError("node id too long")
    nonce = os.urandom(NONCE_LEN) if nonce is None else nonce
    if len(nonce) != NONCE_LEN:
        raise ValueError("bad nonce length")
    return _HELLO_HEAD.pack(MAGIC, PROTOCOL_VERSION, role, nonce, len(ident)) + ident


def parse_hello(buf) -> tuple[int, str, int] | None:
    """Parse a HELLO at the start of ``buf``: ``(role, node_id, length)``, or None if incomplete."""
    if len(buf) < _HELLO_HEAD.size:
        if len(buf) >= 4 and bytes(buf[:4]) != MAGIC:
            raise ProtocolError("not a dmq raft peer (bad magic)")
        return None
    magic, version, role, _nonce, id_len = _HELLO_HEAD.unpack_from(buf, 0)
    if magic != MAGIC:
        raise ProtocolError("not a dmq raft peer (bad magic)")
    if version != PROTOCOL_VERSION:
        raise ProtocolError("unsupported protocol version %d" % version)
    if role not in (ROLE_DIALER, ROLE_ACCEPTOR):
        raise ProtocolError("bad role")
    if id_len == 0 or id_len > MAX_ID_BYTES:
        raise ProtocolError("bad node id length")
    end = _HELLO_HEAD.size + id_len
    if len(buf) < end:
        return None
    try:
        node_id = bytes(buf[_HELLO_HEAD.size:end]).decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError("node id is not utf-8") from None
    return role, node_id, end


def proof(secret: bytes, role: int, hello_dialer: bytes, hello_acceptor: bytes) -> bytes:
    return hmac.digest(secret, _AUTH_LABEL + bytes((role,)) + hello_dialer + hello_acceptor, "sha256")


def session_keys(secret: bytes, hello_dialer: bytes, hello_acceptor: bytes) -> tuple[bytes, bytes]:
    """``(key for dialer->acceptor frames, key for acceptor->dialer frames)``."""
    k = hmac.digest(secret, _KEY_LABEL + hello_dialer + hello_acceptor, "sha256")
    return hmac.digest(k, b"dialer->acceptor", "sha256"), hmac.digest(k, b"acceptor->dialer", "sha256")


def encode_frame(key: bytes, seq: int, kind: int, gid: bytes, payload: bytes, flags: int = 0) -> bytes:
    length = _FRAME_HEAD.size - _LEN.size + len(gid) + len(payload) + MAC_LEN
    body = _FRAME_HEAD.pack(length, kind, flags, len(gid)) + gid + payload
    return body + hmac.digest(key, _SEQ.pack(seq) + body, "sha256")[:MAC_LEN]


class _NoGlobalsUnpickler(pickle.Unpickler):
    """pysyncobj messages are dicts/lists/tuples of str, bytes, ints, bools and None: no global is ever needed."""

    _ALLOWED = {("builtins", "bytearray"), ("builtins", "set"), ("builtins", "frozenset")}

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError("global %s.%s refused" % (module, name))


def loads_payload(data) -> object:
    """Unpickle an authenticated payload (no globals allowed). Tests patch this to prove what gets unpickled."""
    return _NoGlobalsUnpickler(io.BytesIO(data)).load()


# ------------------------------------------------------------------------------------------------ connection

class _RateLimitedLog:
    def __init__(self, per_minute=20):
        self._per_minute = per_minute
        self._window = 0.0
        self._count = 0
        self._suppressed = 0
        self._lock = threading.Lock()

    def warning(self, msg, *args):
        now = _now()
        with self._lock:
            if now - self._window > 60.0:
                if self._suppressed:
                    logger.warning("(%d similar messages suppressed)", self._suppressed)
                self._window, self._count, self._suppressed = now, 0, 0
            self._count += 1
            if self._count > self._per_minute:
                self._suppressed += 1
                return
        logger.warning(msg, *args)


security_log = _RateLimitedLog()

_HANDSHAKE, _OPEN, _CLOSED = "handshake", "open", "closed"


class Connection:
    """One TCP connection to a peer node: handshake, framing, MACs, bounded buffers. Not thread-safe: only the
    host's loop thread touches it. The socket is non-blocking; the host calls :meth:`on_readable` /
    :meth:`flush` when the selector says so and closes it on :class:`ProtocolError` / ``OSError``."""

    def __init__(self, sock: socket.socket, role: int, self_id: str, secret: bytes, *, expected_peer: str | None,
                 max_frame_bytes: int, max_send_buffer: int, compress_min_bytes: int | None,
                 handshake_timeout: float):
        self.sock = sock
        self.role = role
        self.self_id = self_id
        self.expected_peer = expected_peer
        self.peer_id: str | None = None
        try:
            peer = sock.getpeername()
            self.remote = "%s:%s" % peer[:2] if isinstance(peer, tuple) else (str(peer) or "local")
        except OSError:
            self.remote = "?"
        self._secret = secret
        self.max_frame_bytes = max_frame_bytes
        self.max_send_buffer = max_send_buffer
        self.compress_min_bytes = compress_min_bytes
        self.state = _HANDSHAKE
        now = _now()
        self.handshake_deadline = now + handshake_timeout
        self.last_recv = now
        self.last_send = now
        self.silent = False  # nothing received for the host's liveness timeout (the host keeps it)
        self.rbuf = bytearray()
        self.wbuf = bytearray()
        self._hello_self = make_hello(role, self_id)
        self._hello_peer: bytes | None = None
        self._proof_sent = False
        self._send_key = self._recv_key = b""
        self._send_seq = 0
        self._recv_seq = 0
        self.wbuf += self._hello_self
        # metrics
        self.frames_in = self.frames_out = 0
        self.bytes_in = self.bytes_out = 0
        self.dropped_full = 0

    @property
    def is_open(self) -> bool:
        return self.state == _OPEN

    @property
    def closed(self) -> bool:
        return self.state == _CLOSED

    def fileno(self) -> int:
        return self.sock.fileno()

    # -- sending ----------------------------------------------------------------------------------------------

    def send_message(self, gid: bytes, message) -> bool:
        """Queue a pysyncobj message for group ``gid``. False (message dropped) when not open or the send buffer
        is full: Raft treats it as a lost message and re-sends."""
        if self.state != _OPEN:
            return False
        payload = pickle.dumps(message, PICKLE_PROTOCOL)
        flags = 0
        if self.compress_min_bytes is not None and len(payload) >= self.compress_min_bytes:
            payload = zlib.compress(payload, 1)
            flags = FLAG_ZLIB
        return self._queue_frame(KIND_GROUP, gid, payload, flags)

    def send_ping(self) -> bool:
        if self.state != _OPEN:
            return False
        return self._queue_frame(KIND_PING, b"", b"", 0)

    def _queue_frame(self, kind, gid, payload, flags) -> bool:
        size = _FRAME_HEAD.size + len(gid) + len(payload) + MAC_LEN
        if size - _LEN.size > self.max_frame_bytes:
            logger.error("dropping an outgoing frame of %d bytes to %s: over max_frame_bytes=%d", size,
                         self.peer_id, self.max_frame_bytes)
            self.dropped_full += 1
            return False
        if len(self.wbuf) + size > self.max_send_buffer:
            self.dropped_full += 1
            return False
        self.wbuf += encode_frame(self._send_key, self._send_seq, kind, gid, payload, flags)
        self._send_seq += 1
        self.frames_out += 1
        return True

    @property
    def wants_write(self) -> bool:
        return bool(self.wbuf)

    def flush(self) -> bool:
        """Write as much as the socket takes. True when the buffer is empty. Raises OSError on a dead socket."""
        wbuf = self.wbuf
        while wbuf:
            try:
                n = self.sock.send(wbuf)
            except (BlockingIOError, InterruptedError):
                return False
            if n <= 0:
                return False
            del wbuf[:n]  # bytearray: deleting from the front is amortised O(1) in CPython
            self.bytes_out += n
            self.last_send = _now()
        return True

    # -- receiving --------------------------------------------------------------------------------------------

    def on_readable(self, deliver, on_open=None) -> None:
        """Read what is available and handle it. ``on_open(conn)`` is called once, when the handshake succeeds
        (before any frame of this connection is delivered); ``deliver(gid: bytes, message)`` for every
        authenticated group message. Raises ProtocolError / AuthError (drop the connection, it may be an
        attacker) or ConnectionError / OSError (peer gone)."""
        got = 0
        while got < MAX_READ_PER_EVENT and self.state != _CLOSED:
            try:
                data = self.sock.recv(RECV_CHUNK)
            except (BlockingIOError, InterruptedError):
                break
            if data:
                got += len(data)
                self.rbuf += data
                self.bytes_in += len(data)
                self.last_recv = _now()
            if self.state == _HANDSHAKE:
                if self._on_handshake_data():
                    if on_open is not None:
                        on_open(self)
                elif len(self.rbuf) > _MAX_HANDSHAKE_BUFFER:
                    raise ProtocolError("too much data during the handshake")
            if self.state == _OPEN:
                self._on_frames(deliver)
            if not data:
                raise ConnectionError("peer closed the connection")
            if len(data) < RECV_CHUNK:
                break

    def _on_handshake_data(self) -> bool:
        buf = self.rbuf
        if self._hello_peer is None:
            parsed = parse_hello(buf)
            if parsed is None:
                return False
            role, peer_id, end = parsed
            if role == self.role:
                raise AuthError("peer claims the same role")
            if peer_id == self.self_id:
                raise AuthError("peer claims our own node id")
            if self.expected_peer is not None and peer_id != self.expected_peer:
                raise AuthError("dialed %s but the peer says it is %s" % (self.expected_peer, peer_id))
            self._hello_peer = bytes(buf[:end])
            self.peer_id = peer_id
            del buf[:end]
            self.wbuf += proof(self._secret, self.role, *self._transcript())
            self._proof_sent = True
        if len(buf) < PROOF_LEN:
            return False
        got = bytes(buf[:PROOF_LEN])
        del buf[:PROOF_LEN]
        peer_role = ROLE_ACCEPTOR if self.role == ROLE_DIALER else ROLE_DIALER
        want = proof(self._secret, peer_role, *self._transcript())
        if not hmac.compare_digest(got, want):
            raise AuthError("bad authentication proof (wrong cluster secret?)")
        k_d, k_a = session_keys(self._secret, *self._transcript())
        self._send_key, self._recv_key = (k_d, k_a) if self.role == ROLE_DIALER else (k_a, k_d)
        self.state = _OPEN
        self.handshake_deadline = None
        return True

    def _transcript(self) -> tuple[bytes, bytes]:
        if self.role == ROLE_DIALER:
            return self._hello_self, self._hello_peer
        return self._hello_peer, self._hello_self

    def _on_frames(self, deliver) -> None:
        buf = self.rbuf
        off = 0
        n = len(buf)
        key = self._recv_key
        max_frame = self.max_frame_bytes
        out = []
        with memoryview(buf) as mv:
            while n - off >= _LEN.size:
                length = _LEN.unpack_from(buf, off)[0]
                if length < _MIN_FRAME or length > max_frame:
                    raise ProtocolError("frame length %d out of bounds (max %d)" % (length, max_frame))
                end = off + _LEN.size + length
                if end > n:
                    break
                body_end = end - MAC_LEN
                mac = hmac.digest(key, _SEQ.pack(self._recv_seq) + mv[off:body_end], "sha256")[:MAC_LEN]
                if not hmac.compare_digest(mac, mv[body_end:end]):
                    raise AuthError("bad frame MAC")
                self._recv_seq += 1
                self.frames_in += 1
                _, kind, flags, gid_len = _FRAME_HEAD.unpack_from(buf, off)
                p0 = off + _FRAME_HEAD.size + gid_len
                if p0 > body_end:
                    raise ProtocolError("bad group id length")
                if kind == KIND_GROUP:
                    out.append((bytes(mv[off + _FRAME_HEAD.size:p0]), flags, bytes(mv[p0:body_end])))
                elif kind != KIND_PING:
                    raise ProtocolError("unknown frame kind %d" % kind)
                off = end
        if off:
            del buf[:off]
        for gid, flags, payload in out:
            if flags & FLAG_ZLIB:
                d = zlib.decompressobj()
                raw = d.decompress(payload, self.max_frame_bytes)
                if d.unconsumed_tail or not d.eof:
                    raise ProtocolError("compressed payload too big or truncated")
                payload = raw
            try:
                message = loads_payload(payload)
            except Exception as e:  # noqa: BLE001  an authenticated peer sent something we cannot decode
                security_log.warning("undecodable message from authenticated peer %s (group %r): %r",
                                     self.peer_id, gid, e)
                continue
            deliver(gid, message)

    def close(self) -> None:
        if self.state == _CLOSED:
            return
        self.state = _CLOSED
        try:
            self.sock.close()
        except OSError:
            pass
        self.rbuf = bytearray()
        self.wbuf = bytearray()


# ------------------------------------------------------------------------------------------------ group side

class GroupTransport(Transport):
    """The pysyncobj ``Transport`` of one Raft group hosted by a :class:`~dmq_server.raft.host.RaftHost`.

    Get one with ``host.transport_for(group_id)``, pass it as ``SyncObj(..., transport=t)`` with
    ``autoTick=False``, then ``host.add(group)``. Every callback runs on the host's loop thread.
    """

    def __init__(self, host, group_id):
        super().__init__(None, None, ())
        self._host = host
        self.group_id = group_id
        self.gid = str(group_id).encode("utf-8")
        if not self.gid or len(self.gid) > MAX_GID_BYTES:
            raise ValueError("group id must be 1..%d utf-8 bytes" % MAX_GID_BYTES)
        self._nodes: dict[str, Node] = {}  # peer address -> the group's Node object
        self._connected: set[str] = set()
        self._attached = False
        self._destroyed = False
        self.sent = 0
        self.send_failed = 0

    # pysyncobj Transport API ------------------------------------------------------------------------------------

    @property
    def ready(self):
        return True

    def tryGetReady(self):
        pass

    def waitReady(self):
        pass

    def addNode(self, node):
        if not isinstance(node, TCPNode):
            raise TypeError("RaftHost groups need TCPNode peers (address host:port), got %r" % (node,))
        self._nodes[node.id] = node
        if self._attached:
            self._host._on_group_node_added(self, node)

    def dropNode(self, node):
        if self._nodes.pop(node.id, None) is not None and self._attached:
            self._connected.discard(node.id)
            self._host._on_group_node_dropped(self, node)

    def send(self, node, message):
        if self._destroyed:
            return False
        ok = self._host._send(self, node.id, message)
        if ok:
            self.sent += 1
        else:
            self.send_failed += 1
        return ok

    def destroy(self):
        self._destroyed = True

    # host side ---------------------------------------------------------------------------------------------------

    def _peer_connected(self, address: str) -> None:
        node = self._nodes.get(address)
        if node is not None and address not in self._connected:
            self._connected.add(address)
            self._onNodeConnected(node)

    def _peer_disconnected(self, address: str) -> None:
        node = self._nodes.get(address)
        if node is not None and address in self._connected:
            self._connected.discard(address)
            self._onNodeDisconnected(node)

    def peer_alive(self, node) -> bool:
        """pysyncobj_fixes quiescence: is the node of this group's peer `node` alive (see RaftHost.peer_alive)?"""
        return node.id in self._nodes and self._host.peer_alive(node.id)

    def peer_last_heard(self, node) -> float | None:
        """pysyncobj_fixes quiescence: when the node of this group's peer `node` was last heard from, if connected."""
        return self._host.peer_last_heard(node.id) if node.id in self._nodes else None

    def _deliver(self, address: str, message) -> bool:
        node = self._nodes.get(address)
        if node is None:
            return False  # not a member of this group (pysyncobj would KeyError on it)
        self._onMessageReceived(node, message)
        return True


def _hash_secret(secret) -> bytes:
    if isinstance(secret, str):
        secret = secret.encode("utf-8")
    if not isinstance(secret, (bytes, bytearray)) or len(secret) < 16:
        raise ValueError("the cluster secret must be at least 16 bytes")
    return hashlib.sha256(b"dmq-raft-secret-v1" + bytes(secret)).digest()
