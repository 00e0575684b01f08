"""TLS on the client port: a single node started from a config with [tls] serves TLS clients and refuses
plaintext sessions."""

from __future__ import annotations

import os
import shutil
import signal
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dmq_client.connection import Connection
from dmq_client.errors import Unavailable

from .nodes import free_ports

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl tool to make a cert")


def _self_signed(directory: Path) -> tuple[Path, Path]:
    cert, key = directory / "node.crt", directory / "node.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
                    "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out",
                    str(cert)], check=True, capture_output=True, timeout=60)
    return cert, key


def _connect(address: str, tls: ssl.SSLContext, deadline: float) -> Connection:
    while True:
        try:
            return Connection(address, tls=tls)
        except Unavailable:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_tls_client_port(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    client_port, raft_port = free_ports(2)
    config = tmp_path / "tls.toml"
    config.write_text(f'''
[node]
id = "tls1"
data_dir = "{tmp_path / 'data'}"
client_address = "127.0.0.1:{client_port}"
raft_address = "127.0.0.1:{raft_port}"
metrics_address = ""

[tls]
cert_file = "{cert}"
key_file = "{key}"
''')
    log = open(tmp_path / "node.log", "wb")
    process = subprocess.Popen([sys.executable, "-m", "dmq_server.daemon", "--config", str(config)],
                               stdout=log, stderr=subprocess.STDOUT, env={**os.environ})
    address = f"127.0.0.1:{client_port}"
    try:
        context = ssl.create_default_context(cafile=str(cert))
        deadline = time.monotonic() + 20
        with _connect(address, context, deadline) as node:
            while node.call("cluster_status")["metadata_leader"] is None:  # the node has just started
                assert time.monotonic() < deadline, "no metadata leader within 20 s"
                time.sleep(0.05)
            node.call("create_queue", {"name": "secure"})
            node.call("send", {"queue": "secure", "messages": [{"body": b"over tls"}]})
            received = node.call("receive", {"queue": "secure", "max_messages": 1, "wait_ms": 1000})
            assert [m["body"] for m in received] == [b"over tls"]
        with pytest.raises(Unavailable):  # a plaintext handshake is not TLS: the node drops the connection
            Connection(address, connect_timeout=5).close()
        assert process.poll() is None, "the node must keep serving after a plaintext client"
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(15) == 0
        log.close()
