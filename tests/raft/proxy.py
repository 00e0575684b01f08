"""A fault-injecting TCP proxy between the replicas of a Raft group (tests only, 127.0.0.1).

Each replica's Raft identity is a *front* address on which this proxy listens; the replica itself listens on a
separate *backend* address (node_process ``--bind``), and its peers are configured with the other replicas' fronts.
pysyncobj opens one connection per pair of nodes (from the greater address to the smaller one), and the first frame
on it is the connecting node's identity, so the proxy reads that frame to learn which link a connection carries,
then forwards every byte unchanged.

``cut(a, b)`` severs the link between two replicas both ways: open connections are closed and new ones refused until
``heal``. ``isolate(a)`` cuts every link of ``a``.
"""

from __future__ import annotations

import pickle
import socket
import struct
import threading
import zlib

_FRAME = struct.Struct("i")  # pysyncobj's length prefix (native int)


class FaultProxy:
    def __init__(self, n: int) -> None:
        self._listeners = []
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            s.listen(16)
            s.settimeout(0.2)
            self._listeners.append(s)
        self.fronts = [f"127.0.0.1:{s.getsockname()[1]}" for s in self._listeners]
        self.backends: list[str] = []
        self._lock = threading.Lock()
        self._blocked: set[frozenset[str]] = set()
        self._links: list[tuple[str, str, socket.socket, socket.socket]] = []
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self.refused = 0  # connections refused because their link was cut
        self.accepted = 0

    def start(self, backends: list[str]) -> "FaultProxy":
        assert len(backends) == len(self._listeners)
        self.backends = list(backends)
        for i, listener in enumerate(self._listeners):
            self._spawn(self._accept_loop, listener, i)
        return self

    # ------------------------------------------------------------------ faults

    def cut(self, a: str, b: str) -> None:
        with self._lock:
            self._blocked.add(frozenset((a, b)))
            doomed = [link for link in self._links if frozenset(link[:2]) == frozenset((a, b))]
        for link in doomed:
            self._close(link)

    def isolate(self, a: str) -> None:
        for b in self.fronts:
            if b != a:
                self.cut(a, b)

    def heal(self) -> None:
        with self._lock:
            self._blocked.clear()

    def stop(self) -> None:
        self._stopping.set()
        for listener in self._listeners:
            listener.close()
        with self._lock:
            links = list(self._links)
        for link in links:
            self._close(link)
        for thread in self._threads:
            thread.join(5)

    def __enter__(self) -> "FaultProxy":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ plumbing

    def _spawn(self, target, *args) -> None:  # type: ignore[no-untyped-def]
        thread = threading.Thread(target=target, args=args, daemon=True)
        self._threads = [t for t in self._threads if t.is_alive()]
        self._threads.append(thread)
        thread.start()

    def _accept_loop(self, listener: socket.socket, index: int) -> None:
        while not self._stopping.is_set():
            try:
                client, _ = listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            self._spawn(self._handle, client, index)

    def _handle(self, client: socket.socket, index: int) -> None:
        destination = self.fronts[index]
        try:
            client.settimeout(2.0)
            header = _recv_exactly(client, _FRAME.size)
            payload = _recv_exactly(client, _FRAME.unpack(header)[0])
            source = pickle.loads(zlib.decompress(payload))
            if not isinstance(source, str) or self._is_blocked(source, destination):
                raise ConnectionRefusedError(f"link {source} - {destination} is cut")
            host, port = self.backends[index].rsplit(":", 1)
            server = socket.create_connection((host, int(port)), timeout=2.0)
        except Exception:  # noqa: BLE001 - a refused or broken connection: the node reconnects later
            with self._lock:
                self.refused += 1
            client.close()
            return
        client.settimeout(None)
        server.settimeout(None)
        link = (source, destination, client, server)
        with self._lock:
            if self._stopping.is_set() or frozenset((source, destination)) in self._blocked:
                blocked = True
            else:
                blocked = False
                self._links.append(link)
                self.accepted += 1
        if blocked:
            self._close(link)
            return
        try:
            server.sendall(header + payload)
        except OSError:
            self._close(link)
            return
        self._spawn(self._pump, client, server, link)
        self._spawn(self._pump, server, client, link)

    def _is_blocked(self, a: str, b: str) -> bool:
        with self._lock:
            return frozenset((a, b)) in self._blocked

    def _pump(self, source: socket.socket, sink: socket.socket, link) -> None:  # type: ignore[no-untyped-def]
        try:
            while True:
                data = source.recv(1 << 16)
                if not data:
                    break
                sink.sendall(data)
        except OSError:
            pass
        finally:
            self._close(link)

    def _close(self, link) -> None:  # type: ignore[no-untyped-def]
        with self._lock:
            if link in self._links:
                self._links.remove(link)
        for s in link[2:]:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    if not 0 <= n <= 1 << 20:
        raise ValueError(f"unexpected frame length {n}")
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("closed before the first frame")
        data += chunk
    return data
