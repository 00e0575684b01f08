"""Config files for a loopback cluster whose nodes sit behind a chaos `Network` (see proxy.py for why).

Every node's config lists the same advertised addresses (the proxies' ports); what a node really binds is given
to it by `dmq_server.chaos.node` (``--raft-bind``/``--client-bind``, or the ``# dmq-chaos:`` comment lines this
module writes at the top of each config, which that launcher reads). The plain `dmq_server.daemon` ignores the
comments and would bind the advertised addresses itself, colliding with the proxies: start these configs with
``python -m dmq_server.chaos.node --config FILE``.
"""

from __future__ import annotations

import dataclasses
import os
import re
import secrets

from dmq_client.testing import free_ports

from .proxy import ProxiedNode

__all__ = ["ProxiedCluster", "config_texts_with_proxies", "bind_comments"]

_BIND_COMMENT = re.compile(r'^# dmq-chaos: (raft_bind|client_bind) = "([^"]+)"\s*$', re.MULTILINE)


@dataclasses.dataclass(frozen=True)
class ProxiedCluster:
    nodes: tuple[ProxiedNode, ...]
    texts: tuple[str, ...]  # one TOML config per node, in node order
    data_dirs: tuple[str, ...]
    secret: str = dataclasses.field(repr=False)


def _toml_string(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def config_texts_with_proxies(n: int = 3, *, root: str = ".", host: str = "127.0.0.1",
                              secret: str | None = None, raft: dict[str, int] | None = None,
                              log_level: str = "info", extra: str = "") -> ProxiedCluster:
    """Configs for `n` nodes ("node1".."nodeN") with free ports: advertised Raft and client addresses for the
    proxies, private binds for the nodes, data under `root`/dataI, metrics off. `raft` sets [raft] keys (e.g.
    shorter snapshot thresholds); `extra` is appended to every file (e.g. an [auth] table)."""
    if not 1 <= n <= 9:
        raise ValueError("1..9 nodes")
    ports = free_ports(4 * n)
    secret = secret or secrets.token_urlsafe(24)
    nodes = tuple(ProxiedNode(f"node{i + 1}", f"{host}:{ports[4 * i]}", f"{host}:{ports[4 * i + 1]}",
                              f"{host}:{ports[4 * i + 2]}", f"{host}:{ports[4 * i + 3]}") for i in range(n))
    data_dirs = tuple(os.path.abspath(os.path.join(root, f"data{i + 1}")) for i in range(n))
    members = "".join(f"\n[[cluster.nodes]]\nid = {_toml_string(node.node_id)}\nraft = {_toml_string(node.raft)}\n"
                      f"client = {_toml_string(node.client)}\n" for node in nodes)
    raft_table = "".join(f"{key} = {int(value)}\n" for key, value in (raft or {}).items())
    texts = []
    for node, data_dir in zip(nodes, data_dirs):
        texts.append(
            f'# dmq-chaos: raft_bind = "{node.raft_bind}"\n'
            f'# dmq-chaos: client_bind = "{node.client_bind}"\n'
            f"[node]\nid = {_toml_string(node.node_id)}\ndata_dir = {_toml_string(data_dir)}\n"
            f'metrics_address = ""\nlog_level = {_toml_string(log_level)}\n\n'
            f"[cluster]\nsecret = {_toml_string(secret)}\n{members}"
            + (f"\n[raft]\n{raft_table}" if raft_table else "") + extra)
    return ProxiedCluster(nodes, tuple(texts), data_dirs, secret)


def bind_comments(text: str) -> dict[str, str]:
    """The ``# dmq-chaos: raft_bind/client_bind = "host:port"`` lines of a config text."""
    return {key: value for key, value in _BIND_COMMENT.findall(text)}
