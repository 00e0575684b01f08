"""One event loop, one listening port and one connection per peer for all the Raft groups of a node.

Without it every pysyncobj SyncObj owns a tick thread, a poller, a listening port and a connection per peer, so a
node with 1,000 partitions has 1,000 threads and 1,000 ports. A :class:`RaftHost` owns instead:

* ONE listening TCP socket (the node's Raft address ``host:port``) and ONE authenticated TCP connection per peer
  node, shared by every group (wire protocol, authentication and framing: :mod:`dmq_server.raft.transport`);
* ONE selector (epoll) and ONE thread, which drives every registered group with ``autoTick=False``.

Usage::

    host = RaftHost("10.0.0.1:7000", secret=cluster_secret); host.start()
    t = host.transport_for("orders/3")
    g = MyGroup(host.address, peers, SyncObjConf(autoTick=False, ...), transport=t)  # pysyncobj_fixes.SyncObj
    host.add(g)             # from now on, only the host's thread touches g
    ...
    host.remove(g, destroy=True); host.stop()

The loop, in its thread::

    tick the groups that are due or "dirty" (got a message, a command, a connection event), via group.doTick(0),
        i.e. through pysyncobj_fixes.SyncObj._onTick: fsync the group's log, send its deferred replies, then Raft
    write the queued frames (one send() per connection per round, frames of many groups coalesced)
    wait in epoll until the earliest group timer, a socket event, or a wake-up from another thread

A group's next due time is read from pysyncobj's state after each tick: the heartbeat time when it leads, its
election deadline otherwise, its once-a-second log timer, capped at ``max_idle_tick``; so a group costs one tick per
heartbeat (leader) or per received heartbeat (follower), not one per poll period. A quiet group (an idle one whose
leader stopped heartbeating, see ``pysyncobj_fixes``) is ticked every ``max_quiet_tick`` or when something happens
to it, such as a message, a command, or a peer node that connects, disconnects or goes silent. Commands submitted
from other threads wake the loop through one shared pipe: the group's ``PipeNotifier`` (unbatched mode) is replaced
by one that writes to it, and in batched mode ``_applyCommand`` is wrapped to do the same, so a single command is
picked up within microseconds, not at the next poll timeout.

Peer liveness: a connection that has sent nothing for ``liveness_timeout / 3`` sends a keep-alive, so a peer node
from which nothing arrived for ``liveness_timeout`` is presumed gone (:meth:`RaftHost.peer_alive`); the groups it
serves are ticked when that happens. Quiet groups rely on it instead of heartbeats of their own.

Threading: every pysyncobj callback and every touch of a group's state happens on the host's thread. Other threads
only call the group's ``@replicated`` methods (thread-safe in pysyncobj: they enqueue), :meth:`RaftHost.call` to
run a function on the loop (e.g. ``getStatus()``), and add/remove/stop.

Everything is bounded: frame size, per-connection send buffer (a full buffer drops the message, Raft re-sends),
connections in handshake (``max_handshakes``), handshake time, bytes read per event.
"""

from __future__ import annotations

import errno
import functools
import heapq
import itertools
import logging
import os
import selectors
import socket
import threading
import time
from collections import deque
from concurrent.futures import Future

from pysyncobj.monotonic import monotonic as _now  # the clock pysyncobj's timers use (CLOCK_MONOTONIC_RAW)
from pysyncobj.syncobj import _RAFT_STATE

from .transport import (ROLE_ACCEPTOR, ROLE_DIALER, AuthError, Connection, GroupTransport, ProtocolError,
                        _hash_secret, security_log)

logger = logging.getLogger(__name__)

__all__ = ["RaftHost"]

_EV_R = selectors.EVENT_READ
_EV_W = selectors.EVENT_WRITE


class _Entry:
    __slots__ = ("group", "transport", "gid", "due", "removed", "notify", "ticks", "orig_apply")

    def __init__(self, group, transport):
        self.group = group
        self.transport = transport
        self.gid = transport.gid
        self.due = 0.0
        self.removed = False
        self.notify = None
        self.ticks = 0
        self.orig_apply = None


class _Peer:
    __slots__ = ("address", "refs", "transports", "conn", "dialing", "dial_deadline", "last_attempt")

    def __init__(self, address):
        self.address = address
        self.refs = 0
        self.transports: set = set()
        self.conn: Connection | None = None  # the open (authenticated) connection
        self.dialing = None  # socket being connected, or Connection in handshake that we dialed
        self.dial_deadline = 0.0
        self.last_attempt = -1e9


class _HostNotifier:
    """Stands in for a group's pysyncobj PipeNotifier: wakes the host's loop instead of the group's own poller."""

    __slots__ = ("notify",)

    def __init__(self, notify):
        self.notify = notify


class RaftHost:
    """Hosts many pysyncobj Raft groups of one node on one thread, one port and one connection per peer."""

    def __init__(self, address: str, secret, *, bind_address: str | None = None,
                 max_frame_bytes: int = 16 << 20, max_send_buffer: int = 32 << 20,
                 connection_timeout: float = 3.0, reconnect_interval: float = 0.5, handshake_timeout: float = 5.0,
                 max_handshakes: int = 64, max_idle_tick: float = 0.5, compress_min_bytes: int | None = 32 << 10,
                 max_round_seconds: float = 0.05, poll_first_after: float = 0.05, stall_warn_seconds: float = 0.25,
                 liveness_timeout: float = 0.3, max_quiet_tick: float = 2.0):
        host, port = address.rsplit(":", 1)
        self.address = address
        # bind_address: "host" (the address's port) or "host:port" (e.g. behind a proxy that owns the address)
        bind_host, _, bind_port = (bind_address or host).partition(":")
        self._bind = (bind_host, int(bind_port or port))
        self._secret = _hash_secret(secret)
        self.max_frame_bytes = int(max_frame_bytes)
        self.max_send_buffer = int(max_send_buffer)
        self.connection_timeout = float(connection_timeout)
        self.reconnect_interval = float(reconnect_interval)
        self.handshake_timeout = float(handshake_timeout)
        self.max_handshakes = int(max_handshakes)
        self.max_idle_tick = float(max_idle_tick)
        self.max_quiet_tick = float(max_quiet_tick)
        self.liveness_timeout = float(liveness_timeout)
        if not 0 < self.liveness_timeout < self.connection_timeout:
            raise ValueError("liveness_timeout must be positive and below connection_timeout")
        self.max_round_seconds = float(max_round_seconds)
        self.poll_first_after = float(poll_first_after)
        self.stall_warn_seconds = float(stall_warn_seconds)
        self.compress_min_bytes = compress_min_bytes
        self._ping_interval = self.liveness_timeout / 3.0
        self._hk_interval = min(0.25, self.liveness_timeout / 4.0)

        self._lock = threading.Lock()
        self._ops: deque = deque()
        self._notified: set = set()
        self._wake_pending = False
        self._created_gids: set = set()  # guarded by _lock: gids with a live GroupTransport

        # loop-thread state
        self._groups: dict[bytes, _Entry] = {}
        self._heap: list = []
        self._seq = itertools.count()
        self._dirty: set = set()
        self._peers: dict[str, _Peer] = {}
        self._handshaking: set = set()
        self._conns: set = set()
        self._to_flush: set = set()
        self._write_armed: set = set()
        self._sel = None
        self._listen = None
        self._wake_r = self._wake_w = None
        self._thread: threading.Thread | None = None
        self._loop_ident = None
        self._running = False
        self._stopping = False
        self._next_hk = 0.0
        self.counters = dict(ticks=0, loops=0, frames_in=0, unknown_group=0, not_member=0, auth_failures=0,
                             protocol_errors=0, dropped_send=0, accepted=0, refused_busy=0, dials=0,
                             tick_errors=0, late_polls=0, stalls=0)

    # ------------------------------------------------------------------------------------------ lifecycle

    @property
    def port(self) -> int:
        return self._listen.getsockname()[1] if self._listen is not None else self._bind[1]

    def start(self) -> "RaftHost":
        if self._thread is not None:
            raise RuntimeError("already started")
        fam = socket.AF_INET6 if ":" in self._bind[0] else socket.AF_INET
        ls = socket.socket(fam, socket.SOCK_STREAM)
        try:
            ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            ls.bind(self._bind)
            ls.listen(128)
            ls.setblocking(False)
        except OSError:
            ls.close()
            raise
        self._listen = ls
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._sel = selectors.DefaultSelector()
        self._sel.register(ls, _EV_R, "listen")
        self._sel.register(self._wake_r, _EV_R, "wake")
        self._running = True
        self._thread = threading.Thread(target=self._run, name="dmq-raft-host-%s" % self.address, daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0, destroy_groups: bool = False) -> None:
        """Stop the loop thread (joined), close every socket. Registered groups are left as they are (destroyed
        on the loop thread first with ``destroy_groups=True``); after stop no thread touches them."""
        if self._thread is None:
            return
        if destroy_groups:
            try:
                self.call(self._destroy_all, timeout=timeout)
            except Exception:  # noqa: BLE001
                logger.exception("destroying groups on stop")
        self._stopping = True
        self._wake()
        self._thread.join(timeout)
        if self._thread.is_alive():
            logger.error("raft host loop did not stop within %.1fs", timeout)
            return
        for conn in list(self._conns) + list(self._handshaking):
            conn.close()
        for peer in self._peers.values():
            if isinstance(peer.dialing, socket.socket):
                peer.dialing.close()
            peer.dialing = None
            peer.conn = None
        self._conns.clear()
        self._handshaking.clear()
        try:
            self._sel.close()
        except Exception:  # noqa: BLE001
            pass
        self._listen.close()
        os.close(self._wake_r)
        os.close(self._wake_w)
        self._running = False
        self._thread = None

    def _destroy_all(self):
        for entry in list(self._groups.values()):
            self._remove(entry.group, destroy=True)

    # ------------------------------------------------------------------------------------------ groups

    def transport_for(self, group_id) -> GroupTransport:
        """A Transport for a new group with this id, to pass as ``SyncObj(..., transport=...)``."""
        t = GroupTransport(self, group_id)
        with self._lock:
            if t.gid in self._created_gids:
                raise ValueError("group id %r is already in use on this host" % (group_id,))
            self._created_gids.add(t.gid)
        return t

    def add(self, group, timeout: float = 10.0, wait: bool = True) -> None:
        """Start driving ``group`` (autoTick=False, built with a transport from :meth:`transport_for`). With
        ``wait=False`` the registration is queued to the loop (errors are logged, not raised)."""
        if wait:
            self.call(functools.partial(self._add, group), timeout=timeout)
        else:
            self.call_soon(functools.partial(self._add, group))

    def call_soon(self, fn) -> None:
        """Run ``fn()`` on the loop thread, without waiting (errors are logged)."""
        if not self._running or threading.get_ident() == self._loop_ident:
            fn()
            return
        with self._lock:
            self._ops.append((fn, None))
        self._wake()

    def remove(self, group, destroy: bool = False, timeout: float = 10.0) -> None:
        """Stop driving ``group`` (then destroy it on the loop thread if ``destroy``)."""
        self.call(functools.partial(self._remove, group, destroy), timeout=timeout)

    def groups(self) -> list:
        return [e.group for e in list(self._groups.values())]

    def call(self, fn, timeout: float | None = 10.0):
        """Run ``fn()`` on the loop thread and return its result (directly when not running / on the loop)."""
        if not self._running or threading.get_ident() == self._loop_ident:
            return fn()
        fut = Future()
        with self._lock:
            self._ops.append((fn, fut))
        self._wake()
        return fut.result(timeout)

    def stats(self, timeout: float = 10.0) -> dict:
        def collect():
            conns = [c for c in self._conns if c.is_open]
            return dict(self.counters, groups=len(self._groups), peers=len(self._peers),
                        connections=len(conns), handshaking=len(self._handshaking),
                        peers_connected=sorted(p.address for p in self._peers.values() if p.conn is not None),
                        send_buffer_bytes=sum(len(c.wbuf) for c in conns),
                        heap=len(self._heap), port=self.port)
        return self.call(collect, timeout=timeout)

    def _add(self, group):
        transport = getattr(group, "_SyncObj__transport", None)
        if not isinstance(transport, GroupTransport) or transport._host is not self:
            raise ValueError("the group must be built with transport=host.transport_for(group_id)")
        if group.conf.autoTick:
            raise ValueError("groups on a RaftHost need SyncObjConf(autoTick=False)")
        if group.selfNode is None or group.selfNode.id != self.address:
            raise ValueError("group selfNode %r is not this host's address %r" % (group.selfNode, self.address))
        if transport.gid in self._groups:
            raise ValueError("group id %r already added" % (transport.group_id,))
        entry = _Entry(group, transport)
        entry.notify = functools.partial(self._notify_entry, entry)
        self._groups[transport.gid] = entry
        # Wake-ups on new commands go to the host's pipe instead of the group's own (never polled) poller.
        pn = group.__dict__.get("_SyncObj__pipeNotifier")
        if pn is not None and not isinstance(pn, _HostNotifier):
            r, w = getattr(pn, "_PipeNotifier__pipeR", None), getattr(pn, "_PipeNotifier__pipeW", None)
            if r is not None:
                group._poller.unsubscribe(r)
                os.close(r)
                os.close(w)
        group._SyncObj__pipeNotifier = _HostNotifier(entry.notify)
        props = group._SyncObj__properies  # attributes kept out of pysyncobj's default serializer
        props.add("_SyncObj__pipeNotifier")
        if group.conf.appendEntriesUseBatch:
            orig = group._applyCommand

            def _applyCommand(command, callback, commandType=None, _orig=orig, _notify=entry.notify):
                _orig(command, callback, commandType)
                _notify()
            entry.orig_apply = orig
            group._applyCommand = _applyCommand
            props.add("_applyCommand")
        transport._attached = True
        for node in group.otherNodes:
            transport.addNode(node)
        self._dirty.add(entry)

    def _remove(self, group, destroy=False):
        transport = getattr(group, "_SyncObj__transport", None)
        entry = self._groups.get(getattr(transport, "gid", None))
        if entry is None or entry.group is not group:
            raise ValueError("group not on this host")
        entry.removed = True
        del self._groups[entry.gid]
        self._dirty.discard(entry)
        for address in list(transport._nodes):
            peer = self._peers.get(address)
            if peer is not None:
                peer.transports.discard(transport)
                peer.refs -= 1
        transport._attached = False
        transport._connected.clear()
        if entry.orig_apply is not None:
            group.__dict__.pop("_applyCommand", None)
        with self._lock:
            self._notified.discard(entry)
            self._created_gids.discard(entry.gid)
        if destroy:
            group.destroy()

    # called by GroupTransport (loop thread)
    def _on_group_node_added(self, transport, node):
        peer = self._peers.get(node.id)
        if peer is None:
            peer = self._peers[node.id] = _Peer(node.id)
        if transport not in peer.transports:
            peer.transports.add(transport)
            peer.refs += 1
        if peer.conn is not None:
            transport._peer_connected(node.id)
        elif self._should_dial(peer) and peer.dialing is None:
            self._dial(peer, _now())

    def _on_group_node_dropped(self, transport, node):
        peer = self._peers.get(node.id)
        if peer is not None and transport in peer.transports:
            peer.transports.discard(transport)
            peer.refs -= 1

    def _send(self, transport, address, message) -> bool:
        if threading.get_ident() != self._loop_ident:
            if not self._running:
                return False
            self.call_soon(functools.partial(self._send, transport, address, message))
            return True
        peer = self._peers.get(address)
        conn = peer.conn if peer is not None else None
        if conn is None:
            return False
        if conn.send_message(transport.gid, message):
            self._to_flush.add(conn)
            return True
        self.counters["dropped_send"] += 1
        return False

    # ------------------------------------------------------------------------------------------ wake-ups

    def _wake(self, entry=None):
        """Wake the loop (at most one byte in the pipe at a time); `entry`: a group with news to tick."""
        with self._lock:
            if entry is not None:
                self._notified.add(entry)
            if self._wake_pending:
                return
            self._wake_pending = True
        try:
            os.write(self._wake_w, b"\0")
        except (BlockingIOError, OSError):
            pass

    def _notify_entry(self, entry):
        self._wake(entry)

    def _drain_wake(self):
        try:
            while os.read(self._wake_r, 4096):
                pass
        except (BlockingIOError, InterruptedError):
            pass
        with self._lock:
            self._wake_pending = False
            notified, self._notified = self._notified, set()
            ops = list(self._ops)
            self._ops.clear()
        for entry in notified:
            if not entry.removed:
                self._dirty.add(entry)
        for fn, fut in ops:
            if fut is None:
                try:
                    fn()
                except Exception:  # noqa: BLE001
                    logger.exception("raft host op failed")
                continue
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                fut.set_result(fn())
            except BaseException as e:  # noqa: BLE001
                fut.set_exception(e)

    # ------------------------------------------------------------------------------------------ loop

    def _run(self):
        self._loop_ident = threading.get_ident()
        sel = self._sel
        heap = self._heap
        last_poll = _now()
        while not self._stopping:
            try:
                self.counters["loops"] += 1
                self._drain_wake()
                now = _now()
                if now - last_poll > self.poll_first_after:
                    # The thread was held up since its last poll (handling a large batch of frames, GIL starvation,
                    # SIGSTOP): read what the peers sent meanwhile before firing timers, or a follower whose
                    # heartbeats sit unread in its socket buffer reaches its election deadline and deposes a
                    # healthy leader.
                    self.counters["late_polls"] += 1
                    for key, mask in sel.select(0):
                        self._on_event(key, mask)
                    now = _now()
                round_start = now
                ready = self._dirty
                self._dirty = set()
                while heap and heap[0][0] <= now:
                    due, _, entry = heapq.heappop(heap)
                    if entry.due == due and not entry.removed:
                        ready.add(entry)
                budget_end = _now() + self.max_round_seconds
                for entry in ready:
                    if entry.removed:
                        continue
                    if _now() > budget_end:
                        # round over budget: poll the sockets before ticking the rest (keeps heartbeat replies and
                        # handshakes flowing when many groups are busy); the rest are ticked next round
                        self._dirty.add(entry)
                        continue
                    self._tick(entry)
                self._flush_all()
                now = _now()
                if now >= self._next_hk:
                    self._housekeeping(now)
                    self._flush_all()
                    self._next_hk = now + self._hk_interval
                if self._dirty:
                    timeout = 0
                else:
                    wake_at = self._next_hk
                    if heap and heap[0][0] < wake_at:
                        wake_at = heap[0][0]
                    timeout = max(0.0, min(wake_at - _now(), self.max_idle_tick))
                polled_at = _now()
                if polled_at - round_start > self.stall_warn_seconds:
                    self.counters["stalls"] += 1
                    logger.warning("raft host round took %.0f ms (%d groups ready)",
                                   (polled_at - round_start) * 1000, len(ready))
                events = sel.select(timeout)
                last_poll = min(_now(), polled_at + timeout)  # when the kernel answered, as near as we can tell
                for key, mask in events:
                    self._on_event(key, mask)
            except Exception:  # noqa: BLE001  the loop must survive anything
                logger.exception("raft host loop error")
                time.sleep(0.01)
        self._loop_ident = None

    def _tick(self, entry):
        group = entry.group
        try:
            group.doTick(0.0)  # -> pysyncobj_fixes.SyncObj._onTick: fsync + deferred replies, then Raft
        except Exception:  # noqa: BLE001
            self.counters["tick_errors"] += 1
            logger.exception("tick of raft group %r failed", entry.transport.group_id)
        entry.ticks += 1
        self.counters["ticks"] += 1
        now = _now()
        due = self._next_due(group, now)
        entry.due = due
        heapq.heappush(self._heap, (due, next(self._seq), entry))

    def _next_due(self, g, now):
        try:
            d = g.__dict__
            quiet = g._dmq_quiet()
            if quiet:  # no heartbeats to send or to wait for; events tick it sooner
                due = now + self.max_quiet_tick
            elif d["_SyncObj__raftState"] == _RAFT_STATE.LEADER:
                due = d["_SyncObj__newAppendEntriesTime"]
            else:
                due = d["_SyncObj__raftElectionDeadline"]
                if due <= now:  # not connected to anyone: pysyncobj re-checks every tick
                    due = now + 0.05
            one_second = d["_SyncObj__startTime"] + d["_SyncObj__numOneSecondDumps"]
            if one_second < due and not quiet:
                due = one_second
            if d["_SyncObj__raftCommitIndex"] > d["_SyncObj__raftLastApplied"]:
                due = min(due, now + 0.002)
            if getattr(d["_SyncObj__raftLog"], "dirty", False):  # fsync (group commit) at once: nothing else
                due = now  # may wake a leader without followers, whose commit waits only for that fsync
            if len(d["_SyncObj__commandsQueue"]._FastQueue__queue):
                if g._dmq_handoverPaused(now):  # a leader handing over appends nothing until then
                    due = min(due, d["_dmq_handoverUntil"])
                else:
                    due = min(due, now + (0.0 if d["_SyncObj__raftLeader"] is not None else 0.05))
        except (KeyError, AttributeError):  # not the pysyncobj layout we know: tick like autoTickPeriod
            return now + 0.05
        cap = now + (self.max_quiet_tick if quiet else self.max_idle_tick)
        return due if due < cap else cap

    def _flush_all(self):
        if not self._to_flush:
            return
        pending, self._to_flush = self._to_flush, set()
        for conn in pending:
            if conn.closed:
                continue
            try:
                done = conn.flush()
            except OSError as e:
                self._close_conn(conn, "send failed: %s" % e)
                continue
            self._arm_write(conn, not done)

    def _arm_write(self, conn, want):
        armed = conn in self._write_armed
        if want == armed:
            return
        try:
            self._sel.modify(conn.sock, _EV_R | _EV_W if want else _EV_R, conn)
        except (KeyError, ValueError, OSError):
            return
        if want:
            self._write_armed.add(conn)
        else:
            self._write_armed.discard(conn)

    def _on_event(self, key, mask):
        data = key.data
        if data == "wake":
            self._drain_wake()
        elif data == "listen":
            self._accept()
        elif isinstance(data, Connection):
            conn = data
            if mask & _EV_R:
                try:
                    conn.on_readable(functools.partial(self._deliver, conn), self._on_open)
                except AuthError as e:
                    self.counters["auth_failures"] += 1
                    self._close_conn(conn, "authentication failed: %s" % e, security=True)
                    return
                except ProtocolError as e:
                    self.counters["protocol_errors"] += 1
                    self._close_conn(conn, "protocol error: %s" % e, security=True)
                    return
                except (ConnectionError, OSError) as e:
                    self._close_conn(conn, "connection lost: %s" % (e,))
                    return
                if conn.wbuf and not conn.closed:
                    self._to_flush.add(conn)
            if mask & _EV_W and not conn.closed:
                try:
                    done = conn.flush()
                except OSError as e:
                    self._close_conn(conn, "send failed: %s" % e)
                    return
                self._arm_write(conn, not done)
        elif isinstance(data, _Peer):
            self._on_connected(data, key.fileobj)

    def _deliver(self, conn, gid, message):
        self.counters["frames_in"] += 1
        entry = self._groups.get(gid)
        if entry is None:
            self.counters["unknown_group"] += 1
            return
        try:
            if entry.transport._deliver(conn.peer_id, message):
                self._dirty.add(entry)
            else:
                self.counters["not_member"] += 1
        except Exception:  # noqa: BLE001
            logger.exception("raft group %r failed to handle a message from %s", entry.transport.group_id,
                             conn.peer_id)
            self._dirty.add(entry)

    # ------------------------------------------------------------------------------------------ connections

    def _should_dial(self, peer) -> bool:
        # one connection per pair: the node with the larger address dials (as pysyncobj's TCPTransport)
        return self.address > peer.address

    def _accept(self):
        for _ in range(64):
            try:
                sock, addr = self._listen.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                logger.warning("accept failed: %s", e)
                return
            if len(self._handshaking) >= self.max_handshakes:
                self.counters["refused_busy"] += 1
                security_log.warning("refusing connection from %s: %d handshakes in progress", addr,
                                     len(self._handshaking))
                sock.close()
                continue
            self.counters["accepted"] += 1
            self._new_conn(sock, ROLE_ACCEPTOR, None)

    def _new_conn(self, sock, role, expected_peer):
        sock.setblocking(False)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        conn = Connection(sock, role, self.address, self._secret, expected_peer=expected_peer,
                          max_frame_bytes=self.max_frame_bytes, max_send_buffer=self.max_send_buffer,
                          compress_min_bytes=self.compress_min_bytes, handshake_timeout=self.handshake_timeout)
        self._handshaking.add(conn)
        try:
            self._sel.register(sock, _EV_R, conn)
        except (ValueError, OSError) as e:
            self._handshaking.discard(conn)
            conn.close()
            logger.warning("cannot register connection: %s", e)
            return None
        self._to_flush.add(conn)
        return conn

    def _dial(self, peer, now):
        peer.last_attempt = now
        self.counters["dials"] += 1
        host, port = peer.address.rsplit(":", 1)
        try:
            infos = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
            fam, stype, proto, _, sa = infos[0]
            sock = socket.socket(fam, stype, proto)
        except (OSError, ValueError) as e:
            logger.warning("cannot resolve raft peer %s: %s", peer.address, e)
            return
        sock.setblocking(False)
        err = sock.connect_ex(sa)
        if err not in (0, errno.EINPROGRESS, errno.EWOULDBLOCK, errno.EAGAIN):
            sock.close()
            return
        peer.dialing = sock
        peer.dial_deadline = now + self.handshake_timeout
        try:
            self._sel.register(sock, _EV_W, peer)
        except (ValueError, OSError):
            peer.dialing = None
            sock.close()

    def _on_connected(self, peer, sock):
        try:
            self._sel.unregister(sock)
        except (KeyError, ValueError):
            pass
        if peer.dialing is not sock:
            sock.close()
            return
        err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            peer.dialing = None
            sock.close()
            logger.debug("connect to %s failed: %s", peer.address, os.strerror(err))
            return
        conn = self._new_conn(sock, ROLE_DIALER, peer.address)
        peer.dialing = conn

    def _on_open(self, conn):
        """Handshake succeeded: the connection becomes the peer's (replacing an older one)."""
        self._handshaking.discard(conn)
        self._conns.add(conn)
        peer = self._peers.get(conn.peer_id)
        if peer is None:
            peer = self._peers[conn.peer_id] = _Peer(conn.peer_id)
        if peer.dialing is conn:
            peer.dialing = None
        old = peer.conn
        if old is not None and old is not conn:
            self._close_conn(old, "replaced by a new connection")
        peer.conn = conn
        logger.info("raft peer %s connected (%s)", peer.address,
                    "dialed" if conn.role == ROLE_DIALER else "accepted from %s" % conn.remote)
        for t in list(peer.transports):
            entry = self._groups.get(t.gid)
            t._peer_connected(peer.address)
            if entry is not None:
                self._dirty.add(entry)

    def peer_alive(self, address: str) -> bool:
        """Something arrived from the node at `address` within ``liveness_timeout``, on an open connection."""
        heard = self.peer_last_heard(address)
        return heard is not None and _now() - heard <= self.liveness_timeout

    def peer_last_heard(self, address: str) -> float | None:
        """When something last arrived from the node at `address` (pysyncobj's clock), or None without an open
        connection to it."""
        peer = self._peers.get(address)
        conn = None if peer is None else peer.conn
        return conn.last_recv if conn is not None and conn.is_open else None

    def _touch_groups_of(self, address):
        peer = self._peers.get(address)
        for t in list(peer.transports) if peer is not None else ():
            entry = self._groups.get(t.gid)
            if entry is not None:
                self._dirty.add(entry)

    def _close_conn(self, conn, reason, security=False):
        if conn.closed:
            return
        if security:
            security_log.warning("dropping raft connection from %s (claims %s): %s", conn.remote, conn.peer_id,
                                 reason)
        else:
            logger.info("raft connection %s (%s) closed: %s", conn.remote, conn.peer_id, reason)
        try:
            self._sel.unregister(conn.sock)
        except (KeyError, ValueError, OSError):
            pass
        self._write_armed.discard(conn)
        self._handshaking.discard(conn)
        self._conns.discard(conn)
        conn.close()
        peer = self._peers.get(conn.peer_id) if conn.peer_id else None
        if peer is None:
            # a dialed connection that failed before the peer said who it is
            for p in self._peers.values():
                if p.dialing is conn:
                    p.dialing = None
            return
        if peer.dialing is conn:
            peer.dialing = None
        if peer.conn is conn:
            peer.conn = None
            for t in list(peer.transports):
                entry = self._groups.get(t.gid)
                t._peer_disconnected(peer.address)
                if entry is not None:
                    self._dirty.add(entry)

    def _housekeeping(self, now):
        for conn in list(self._handshaking):
            if conn.handshake_deadline is not None and now > conn.handshake_deadline:
                self.counters["auth_failures"] += 1
                self._close_conn(conn, "handshake timed out", security=True)
        for conn in list(self._conns):
            silence = now - conn.last_recv
            if silence > self.connection_timeout:
                self._close_conn(conn, "nothing received for %.1fs" % silence)
                continue
            if silence <= self.liveness_timeout:
                conn.silent = False
            elif not conn.silent:  # the peer went silent: its groups' quiet followers must notice (peer_alive)
                conn.silent = True
                self._touch_groups_of(conn.peer_id)
            if now - conn.last_send > self._ping_interval and not conn.wbuf:
                if conn.send_ping():
                    self._to_flush.add(conn)
        for peer in self._peers.values():
            d = peer.dialing
            if isinstance(d, socket.socket) and now > peer.dial_deadline:
                try:
                    self._sel.unregister(d)
                except (KeyError, ValueError):
                    pass
                d.close()
                peer.dialing = None
            if (peer.conn is None and peer.dialing is None and peer.refs > 0 and self._should_dial(peer)
                    and now - peer.last_attempt >= self.reconnect_interval):
                self._dial(peer, now)
