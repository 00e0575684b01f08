"""A real dmq cluster for integration tests: three `dmq_server.daemon` processes started from the shipped
config/node1.toml..node3.toml, with every port moved to a free one and the data under the test's directory.

    cluster = Cluster(tmp_path)          # writes the configs; auth=True adds principals, anonymous = false
    cluster.start_all()                  # returns once every node answers and the metadata group has a leader
    cluster.connect(0)                   # a dmq_client Connection to node 0 (token: the admin's with auth)
    cluster.kill(0); cluster.start(0)    # SIGKILL by PID, start again on the same data
    cluster.stop(1)                      # SIGTERM; asserts a clean exit (status 0)
    cluster.close()                      # stops every process this cluster started, by PID

The processes are run by dmq_client.testing.LocalCluster (what these tests add is the shipped configs);
every cluster that is running is listed in dmq_client.testing.ACTIVE, so a failing test can show the tail of
each node's log (tests/node/conftest.py adds it to the failure report).
"""

from __future__ import annotations

import re
from pathlib import Path

from dmq_client.testing import ACTIVE, LocalCluster, free_ports

__all__ = ["ACTIVE", "ADMIN_TOKEN", "CONSUMER_TOKEN", "PRODUCER_TOKEN", "Cluster", "free_ports",
           "rewrite_configs"]

REPO = Path(__file__).resolve().parents[2]
SHIPPED = [REPO / "config" / f"node{i}.toml" for i in (1, 2, 3)]

ADMIN_TOKEN = "admin-token-0123456789abcdef"
PRODUCER_TOKEN = "producer-token-0123456789abcdef"
CONSUMER_TOKEN = "consumer-token-0123456789abcdef"

AUTH_SECTION = f"""
[auth]
anonymous = false

[[auth.principals]]
name = "admin"
token = "{ADMIN_TOKEN}"
permissions = [{{ queues = "*", actions = ["admin", "send", "receive"] }}]

[[auth.principals]]
name = "producer"
token = "{PRODUCER_TOKEN}"
permissions = [{{ queues = "orders-*", actions = ["send"] }}]

[[auth.principals]]
name = "consumer"
token = "{CONSUMER_TOKEN}"
permissions = [{{ queues = "orders-*", actions = ["receive"] }}]
"""

_LOOPBACK_PORT = re.compile(r"127\.0\.0\.1:(\d+)")
_AUTH_TABLE = re.compile(r"^\[auth\]\s*$(.*?)(?=^\[(?!\[?auth\b)|\Z)", re.MULTILINE | re.DOTALL)


def rewrite_configs(texts: list[str], *, auth: bool) -> tuple[list[str], dict[int, int]]:
    """The shipped configs with every 127.0.0.1 port mapped to a free one (the same mapping in every file) and,
    with `auth`, their [auth] table replaced by one with principals and anonymous = false."""
    old_ports = sorted({int(port) for text in texts for port in _LOOPBACK_PORT.findall(text)})
    mapping = dict(zip(old_ports, free_ports(len(old_ports))))
    out = []
    for text in texts:
        text = _LOOPBACK_PORT.sub(lambda m: f"127.0.0.1:{mapping[int(m.group(1))]}", text)
        if auth:
            text, found = _AUTH_TABLE.subn("", text)
            assert found <= 1, "a config with two [auth] tables"
            text = text.rstrip() + "\n" + AUTH_SECTION
        out.append(text)
    return out, mapping


class Cluster(LocalCluster):
    """The shipped three-node configs, ports moved to free ones (`port_mapping`: shipped port -> free port)."""

    def __init__(self, root: Path, *, auth: bool = False) -> None:
        texts, self.port_mapping = rewrite_configs([p.read_text() for p in SHIPPED], auth=auth)
        super().__init__(texts, root, token=ADMIN_TOKEN if auth else None)
        self.auth = auth
