"""A TCP relay in front of one node that loses one answer (tests only, 127.0.0.1).

It forwards every frame both ways, except the answer to the first request of operation `op`: that answer is
dropped and the connection closed. The client then sees what a node crash or a cut link looks like right after
the node carried a request out, and retries it.
"""

from __future__ import annotations

import socket
import threading

from dmq_client import protocol


class LossyRelay:
    def __init__(self, target: str, op: str) -> None:
        host, port = target.rsplit(":", 1)
        self._target = (host, int(port))
        self._op = op
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self.address = f"127.0.0.1:{self._listener.getsockname()[1]}"
        self._lock = threading.Lock()
        self._armed = True  # the next request of `op` loses its answer
        self.dropped = 0
        self._stopping = threading.Event()
        self._sockets: list[socket.socket] = []
        self._threads = [threading.Thread(target=self._accept_loop, daemon=True)]
        self._threads[0].start()

    def close(self) -> None:
        self._stopping.set()
        self._listener.close()
        self._threads[0].join(5)  # the accept loop: no connection is added after this
        with self._lock:
            sockets = list(self._sockets)
        for sock in sockets:
            _shut(sock)
        for thread in self._threads[1:]:
            thread.join(5)

    def __enter__(self) -> "LossyRelay":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                client, _ = self._listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            try:
                server = socket.create_connection(self._target, timeout=5)
            except OSError:
                client.close()
                continue
            client.settimeout(None)
            server.settimeout(None)
            doomed: set[int] = set()  # ids of requests on this connection whose answers are dropped
            with self._lock:
                self._sockets += [client, server]
            for source, sink, upstream in ((client, server, True), (server, client, False)):
                thread = threading.Thread(target=self._pump, args=(source, sink, upstream, doomed), daemon=True)
                self._threads.append(thread)
                thread.start()

    def _pump(self, source: socket.socket, sink: socket.socket, upstream: bool, doomed: set[int]) -> None:
        decoder = protocol.FrameDecoder()
        try:
            for _ in range(1_000_000):  # bounded: far more frames than any test sends
                data = source.recv(1 << 16)
                if not data:
                    return
                for frame in decoder.feed(data):
                    if upstream:
                        self._note_request(frame, doomed)
                    elif frame.get("id") in doomed:
                        with self._lock:
                            self.dropped += 1
                        return  # the answer is lost with the connection
                    sink.sendall(protocol.encode(frame))
        except OSError:
            pass
        finally:
            _shut(source)
            _shut(sink)

    def _note_request(self, frame: dict, doomed: set[int]) -> None:
        with self._lock:
            if self._armed and frame.get("op") == self._op:
                self._armed = False
                doomed.add(frame["id"])


def _shut(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()
