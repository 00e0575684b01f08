"""Node configuration: one TOML file per node, validated whole before the node starts.

`dmq-server --config FILE` loads it with `load_config`; without a file the node runs `default_config()`, one
anonymous node on loopback. The files under config/ are worked examples. Every table and key is checked: an
unknown table or key, a wrong type (a boolean is not an integer) or a value out of range raises ConfigError
naming the file, the table and the key, and saying what to write instead.

Layout (every table but [node] is optional; values shown are the defaults)::

    [node]
    id = "node1"                        # required; 1-64 of A-Z a-z 0-9 _ -
    data_dir = "./dmq-data"             # relative to the CURRENT WORKING DIRECTORY, not to the config file
                                        # (the shipped files assume the repository root)
    metrics_address = "127.0.0.1:9400"  # Prometheus endpoint; "" disables it
    log_level = "info"                  # debug | info | warning | error
    log_format = "text"                 # text | json
    client_address = "127.0.0.1:7400"   # only without [cluster]: where clients connect
    raft_address = "127.0.0.1:7401"     # only without [cluster]: this node's Raft identity

    [cluster]                           # absent: a single node
    secret = "..."                      # or secret_env = "ENV_VAR"; >= 16 characters; required with >1 node
    metadata_nodes = ["node1", ...]     # 1, 3 or 5 node ids; default: all nodes when there are 1, 3 or 5,
                                        # the first node when there are 2, else the first 3
    [[cluster.nodes]]                   # one entry per node, this one included; ids and addresses unique
    id = "node1"
    raft = "10.0.0.1:7501"              # Raft traffic between nodes (authenticated with the secret)
    client = "10.0.0.1:7401"            # where clients reach this node

    [raft]
    heartbeat_ms = 50                   # 10..1000
    election_min_ms = 300               # >= 3 * heartbeat_ms
    election_max_ms = 450               # > election_min_ms, <= 60000
    snapshot_min_entries = 200000       # 1000..10**9
    snapshot_min_seconds = 600          # 1..10**7
    quiet_after_ms = 1000               # 0..3600000; an idle partition stops heartbeating after this; 0: never

    [auth]
    anonymous = true                    # default: true only when there are no principals
    [[auth.principals]]
    name = "admin"                      # 1-64 of A-Z a-z 0-9 _ . @ -, unique
    token = "..."                       # or token_env = "ENV_VAR"; at least 16 characters, unique
    permissions = [{ queues = "orders-*", actions = ["send", "receive"] }]   # actions: admin, send, receive

    [tls]                               # TLS on the client port; relative paths are relative to the
    cert_file = "node.pem"              # config file's directory; every file must exist and be readable
    key_file = "node.key"
    ca_file = "ca.pem"                  # optional

    [limits]
    max_connections = 1024              # 1..100000
    max_in_flight_per_connection = 1024 # 1..100000
    max_frame_bytes = 4194304           # 65536..67108864
    max_queues = 10000                  # 1..1000000
    max_partitions_per_queue = 64       # 1..1024

Rules across keys:

* Without [cluster] the node is alone: its Raft host has no peers, so it binds port 0 on the raft_address host
  (`raft_bind`) and the configured raft_address is only its identity. With [cluster], [node] must not set
  client_address or raft_address: they come from the node's [[cluster.nodes]] entry, and the Raft host binds
  that entry's raft address. Cluster addresses must be ones peers and clients can dial (not 0.0.0.0 or ::).
* Anonymous access (every permission, no token) is refused unless every node's client address is loopback
  (127.0.0.0/8, ::1 or localhost). `anonymous = false` needs at least one principal.
* The example secret shipped in config/node*.toml is public: it is refused unless every cluster address is
  loopback.
* `secret_env` and `token_env` name environment variables read when the file is loaded; they must be set.

`overrides` (tests, the CLI) is merged over the file's tables before validation, table by table:
``load_config(path, overrides={"node": {"data_dir": "/srv/dmq"}})``.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import hmac
import ipaddress
import os
import re
import tempfile
import tomllib
from collections.abc import Callable
from typing import Any

from dmq_client.mappings import deep_merge


class ConfigError(ValueError):
    """A configuration problem; the message names the file and key and says what to fix."""


ACTIONS = frozenset({"admin", "send", "receive"})
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")
MIN_SECRET_CHARS = 16
MIN_TOKEN_CHARS = 16
# The secret in the shipped config/node*.toml: anyone can read it, so it only protects a loopback cluster.
EXAMPLE_SECRET = "dmq-local-cluster-secret-change-me"

_NODE_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_PRINCIPAL_NAME = re.compile(r"[A-Za-z0-9_.@-]{1,64}")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_HOST_NAME = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_-]{0,62})(\.[A-Za-z0-9_]([A-Za-z0-9_-]{0,62}))*\.?")
_PORT = re.compile(r"[0-9]{1,5}")


@dataclasses.dataclass(frozen=True, slots=True)
class Address:
    host: str  # IPv6 without brackets
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @classmethod
    def parse(cls, text: str, *, allow_port_zero: bool = False) -> "Address":
        """Parse "host:port" ("[::1]:7400" for IPv6); raise ConfigError saying what is wrong."""
        if not isinstance(text, str):
            raise ConfigError(f"{text!r} is not an address; write \"host:port\", like \"127.0.0.1:7400\"")
        host, sep, port = text.rpartition(":")
        if not sep:
            raise ConfigError(f"{text!r} has no port; write \"host:port\", like \"127.0.0.1:7400\"")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
            try:
                ipaddress.IPv6Address(host)
            except ValueError:
                raise ConfigError(f"{text!r}: {host!r} in brackets is not an IPv6 address") from None
        elif ":" in host:
            raise ConfigError(f"{text!r}: put an IPv6 host in brackets, like \"[::1]:7400\"")
        elif not host:
            raise ConfigError(f"{text!r} has no host; write \"host:port\", like \"127.0.0.1:7400\"")
        elif not _HOST_NAME.fullmatch(host) or len(host) > 253:
            raise ConfigError(f"{text!r}: {host!r} is not a valid host name or IP address")
        elif re.fullmatch(r"[0-9.]+", host):
            try:  # all digits and dots: must be a real IPv4 address, not a host name
                ipaddress.IPv4Address(host)
            except ValueError:
                raise ConfigError(f"{text!r}: {host!r} is not a valid IPv4 address") from None
        low = 0 if allow_port_zero else 1
        if not _PORT.fullmatch(port) or not low <= int(port) <= 65535:
            raise ConfigError(f"{text!r}: port {port!r} must be a number from {low} to 65535")
        return cls(host, int(port))

    def is_loopback(self) -> bool:
        if self.host.lower() == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:  # a host name other than localhost may resolve anywhere
            return False

    def is_unspecified(self) -> bool:
        try:
            return ipaddress.ip_address(self.host).is_unspecified
        except ValueError:
            return False


@dataclasses.dataclass(frozen=True, slots=True)
class ClusterNode:
    id: str
    raft: Address
    client: Address


@dataclasses.dataclass(frozen=True, slots=True)
class Permission:
    queues: str  # fnmatch pattern, case-sensitive: "orders-*", "*"
    actions: frozenset[str]

    def allows(self, action: str, queue: str) -> bool:
        return action in self.actions and fnmatch.fnmatchcase(queue, self.queues)


@dataclasses.dataclass(frozen=True, slots=True)
class Principal:
    name: str
    token: str = dataclasses.field(repr=False)  # keep tokens out of logs and tracebacks
    permissions: tuple[Permission, ...]

    def allows(self, action: str, queue: str) -> bool:
        return any(p.allows(action, queue) for p in self.permissions)


@dataclasses.dataclass(frozen=True, slots=True)
class RaftSettings:
    heartbeat_ms: int = 50
    election_min_ms: int = 300
    election_max_ms: int = 450
    snapshot_min_entries: int = 200_000
    snapshot_min_seconds: int = 600
    quiet_after_ms: int = 1000


@dataclasses.dataclass(frozen=True, slots=True)
class Limits:
    max_connections: int = 1024
    max_in_flight_per_connection: int = 1024
    max_frame_bytes: int = 4 << 20
    max_queues: int = 10_000
    max_partitions_per_queue: int = 64


@dataclasses.dataclass(frozen=True, slots=True)
class TlsSettings:
    cert_file: str  # absolute paths
    key_file: str
    ca_file: str | None


@dataclasses.dataclass(frozen=True, slots=True)
class NodeConfig:
    node_id: str
    data_dir: str
    client_address: Address
    raft_address: Address
    raft_bind: Address
    metrics_address: Address | None
    nodes: tuple[ClusterNode, ...]
    metadata_nodes: tuple[str, ...]
    secret: str | None = dataclasses.field(repr=False)
    anonymous: bool
    principals: tuple[Principal, ...]
    tls: TlsSettings | None
    raft: RaftSettings
    limits: Limits
    log_level: str
    log_format: str

    def node(self, node_id: str) -> ClusterNode:
        for node in self.nodes:
            if node.id == node_id:
                return node
        raise KeyError(f"no node {node_id!r} in the cluster; nodes: {', '.join(n.id for n in self.nodes)}")

    def principal_for_token(self, token: str) -> Principal | None:
        # Compare against every principal without stopping early, so timing does not reveal which one matched.
        if not isinstance(token, str):
            return None
        given = token.encode("utf-8")
        found = None
        for principal in self.principals:
            if hmac.compare_digest(principal.token.encode("utf-8"), given):
                found = principal
        return found


# Inclusive ranges of the integer settings, by table.
_RAFT_RANGES: dict[str, tuple[int, int]] = {
    "heartbeat_ms": (10, 1000),
    "election_min_ms": (1, 60_000),  # the real bounds are the rules against heartbeat_ms and election_max_ms
    "election_max_ms": (1, 60_000),
    "snapshot_min_entries": (1000, 10**9),
    "snapshot_min_seconds": (1, 10**7),
    "quiet_after_ms": (0, 3_600_000),
}
_LIMIT_RANGES: dict[str, tuple[int, int]] = {
    "max_connections": (1, 100_000),
    "max_in_flight_per_connection": (1, 100_000),
    "max_frame_bytes": (65_536, 67_108_864),
    "max_queues": (1, 1_000_000),
    "max_partitions_per_queue": (1, 1024),
}
_TABLES = ("node", "cluster", "raft", "auth", "tls", "limits")
_NODE_KEYS = ("id", "data_dir", "client_address", "raft_address", "metrics_address", "log_level",
              "log_format")
_CLUSTER_KEYS = ("secret", "secret_env", "metadata_nodes", "nodes")
_CLUSTER_NODE_KEYS = ("id", "raft", "client")
_AUTH_KEYS = ("anonymous", "principals")
_PRINCIPAL_KEYS = ("name", "token", "token_env", "permissions")
_PERMISSION_KEYS = ("queues", "actions")
_TLS_KEYS = ("cert_file", "key_file", "ca_file")

_MISSING: Any = object()


def default_config(data_dir: str = "./dmq-data") -> NodeConfig:
    """One anonymous node on loopback: `dmq-server` without --config (the same as config/single.toml)."""
    raft_address = Address("127.0.0.1", 7401)
    client_address = Address("127.0.0.1", 7400)
    return NodeConfig(
        node_id="dmq1",
        data_dir=_absolute(data_dir),
        client_address=client_address,
        raft_address=raft_address,
        raft_bind=Address(raft_address.host, 0),  # a single node has no peers, so it needs no fixed Raft port
        metrics_address=Address("127.0.0.1", 9400),
        nodes=(ClusterNode("dmq1", raft_address, client_address),),
        metadata_nodes=("dmq1",),
        secret=None,
        anonymous=True,
        principals=(),
        tls=None,
        raft=RaftSettings(),
        limits=Limits(),
        log_level="info",
        log_format="text",
    )


def load_config(path: str, *, overrides: dict | None = None) -> NodeConfig:
    """Read and validate a config file; TLS paths are relative to its directory, data_dir to the CWD."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the config file: {e.strerror or e}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte {e.start}); TOML files must be UTF-8") from None
    base_dir = os.path.dirname(os.path.abspath(path))
    return parse_config(text, path, overrides=overrides, base_dir=base_dir)


def parse_config(text: str, source: str = "<config>", *, overrides: dict | None = None,
                 base_dir: str | None = None) -> NodeConfig:
    """Validate TOML text; `source` names it in errors; relative TLS paths resolve against base_dir (CWD)."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{source}: invalid TOML: {e}") from None
    if overrides is not None:
        if not isinstance(overrides, dict):
            raise ConfigError(f"overrides must be a dict of tables, got {type(overrides).__name__}")
        doc = deep_merge(doc, overrides)
    return _build(doc, source, base_dir if base_dir is not None else os.getcwd())


def prepare_data_dir(path: str) -> None:
    """Create the data directory if missing and prove it is a writable directory."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise ConfigError(f"data_dir {path} exists but is not a directory; remove it or choose another "
                          f"[node] data_dir")
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)  # queue data: owner only
    except OSError as e:
        raise ConfigError(f"data_dir {path} cannot be created: {e.strerror or e}; create it or choose "
                          f"another [node] data_dir") from None
    try:  # os.access is not enough: it ignores read-only mounts and ACL details a real write hits
        fd, probe = tempfile.mkstemp(prefix=".dmq-write-probe-", dir=path)
        os.close(fd)
        os.remove(probe)
    except OSError as e:
        raise ConfigError(f"data_dir {path} is not writable: {e.strerror or e}; fix its permissions for this "
                          f"user or choose another [node] data_dir") from None


# --- validation ---------------------------------------------------------------------------------------------


def _absolute(path: str) -> str:
    return os.path.abspath(os.path.expanduser(path))


def _default(cls: type, name: str) -> Any:
    return next(f.default for f in dataclasses.fields(cls) if f.name == name)


def _toml_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "table"
    return "date/time"


def _found(value: Any, secret: bool = False) -> str:
    kind = _toml_type(value)
    if secret or kind in ("array", "table"):  # never echo secrets; containers are too long to be useful
        return f"{'an' if kind[0] in 'aeiou' else 'a'} {kind}"
    shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
    return f"{kind} {shown}"


class _Table:
    """One TOML table under validation: errors name the file and where the table is."""

    def __init__(self, source: str, where: str, data: Any, known: tuple[str, ...]) -> None:
        self.source, self.where, self.known = source, where, known
        if not isinstance(data, dict):
            raise self.error(f"must be a table, found {_found(data)}")
        self.data = data
        for key in data:
            if key not in known:
                raise self.error(f"unknown key {key!r}; known keys: {', '.join(known)}")

    def error(self, message: str) -> ConfigError:
        return ConfigError(f"{self.source}: {self.where} {message}")

    def has(self, key: str) -> bool:
        return key in self.data

    def _get(self, key: str, expected: str, ok: Callable[[Any], bool], default: Any,
             secret: bool = False) -> Any:
        if key not in self.data:
            if default is _MISSING:
                raise self.error(f"is missing the required key {key!r}")
            return default
        value = self.data[key]
        if not ok(value):
            raise self.error(f"{key} must be {expected}, found {_found(value, secret)}")
        return value

    def string(self, key: str, default: Any = _MISSING, *, secret: bool = False) -> Any:
        return self._get(key, "a string", lambda v: isinstance(v, str), default, secret)

    def integer(self, key: str, default: Any, low: int, high: int) -> int:
        value = self._get(key, "an integer", lambda v: type(v) is int, default)  # bool is an int subclass
        if not low <= value <= high:
            raise self.error(f"{key} must be from {low} to {high}, found {value}")
        return value

    def boolean(self, key: str, default: Any = _MISSING) -> bool:
        return self._get(key, "true or false", lambda v: isinstance(v, bool), default)

    def strings(self, key: str, default: Any = _MISSING) -> list[str]:
        return self._get(key, "an array of strings",
                         lambda v: isinstance(v, list) and all(isinstance(s, str) for s in v), default)

    def tables(self, key: str, default: Any = ()) -> list[dict]:
        return self._get(key, "an array of tables",
                         lambda v: isinstance(v, list) and all(isinstance(t, dict) for t in v), default)

    def choice(self, key: str, default: str, choices: tuple[str, ...]) -> str:
        value = self.string(key, default)
        if value not in choices:
            raise self.error(f"{key} must be one of {', '.join(choices)}; found {value!r}")
        return value

    def address(self, key: str, default: Any = _MISSING) -> Address:
        text = self.string(key, default)
        try:
            return Address.parse(text)
        except ConfigError as e:
            raise self.error(f"{key} {e}") from None

    def env(self, key: str, what: str) -> str:
        name = self.string(key)
        if not _ENV_NAME.fullmatch(name):
            raise self.error(f"{key} must name an environment variable (letters, digits, _), found {name!r}")
        value = os.environ.get(name)
        if not value:
            state = "is not set" if value is None else "is empty"
            raise self.error(f"{key}: environment variable {name} {state}; export it with the {what} "
                             f"before starting the node")
        return value


def _build(doc: dict, source: str, base_dir: str) -> NodeConfig:
    for name, value in doc.items():
        if name not in _TABLES:
            if isinstance(value, dict):
                raise ConfigError(f"{source}: unknown table [{name}]; known tables: {', '.join(_TABLES)}")
            raise ConfigError(f"{source}: unknown top-level key {name!r}; keys belong in one of the tables "
                              f"{', '.join(_TABLES)} (a missing [node] header?)")
    if "node" not in doc:
        raise ConfigError(f"{source}: missing the [node] table; it needs at least id = \"...\"")

    node = _Table(source, "[node]", doc["node"], _NODE_KEYS)
    node_id = node.string("id")
    if not _NODE_ID.fullmatch(node_id):
        raise node.error(f"id must be 1-64 of A-Z a-z 0-9 _ -, found {node_id!r}")
    data_dir = node.string("data_dir", "./dmq-data")
    if not data_dir or "\0" in data_dir:
        raise node.error(f"data_dir must be a directory path, found {data_dir!r}")
    metrics_text = node.string("metrics_address", "127.0.0.1:9400")
    metrics = node.address("metrics_address", metrics_text) if metrics_text else None
    log_level = node.choice("log_level", "info", LOG_LEVELS)
    log_format = node.choice("log_format", "text", LOG_FORMATS)

    if "cluster" in doc:
        for key in ("client_address", "raft_address"):
            if node.has(key):
                raise node.error(f"{key} is not allowed with a [cluster] table: this node's addresses come "
                                 f"from its [[cluster.nodes]] entry; remove {key}")
        cluster = _Table(source, "[cluster]", doc["cluster"], _CLUSTER_KEYS)
        nodes = _cluster_nodes(cluster)
        if node_id not in [n.id for n in nodes]:
            ids = ", ".join(n.id for n in nodes)
            raise node.error(f"id {node_id!r} is not in [[cluster.nodes]] (ids: {ids}); add an entry for "
                             f"this node or fix the id")
        me = next(n for n in nodes if n.id == node_id)
        client_address, raft_address, raft_bind = me.client, me.raft, me.raft
        metadata_nodes = _metadata_nodes(cluster, nodes)
        secret = _secret(cluster, nodes)
    else:
        client_address = node.address("client_address", "127.0.0.1:7400")
        raft_address = node.address("raft_address", "127.0.0.1:7401")
        if client_address == raft_address:
            raise node.error(f"client_address and raft_address are both {client_address}; give them "
                             f"different ports")
        raft_bind = Address(raft_address.host, 0)  # no peers dial a single node, so any free port will do
        nodes = (ClusterNode(node_id, raft_address, client_address),)
        metadata_nodes = (node_id,)
        secret = None

    if metrics is not None:
        for other in nodes:
            if metrics in (other.raft, other.client):
                kind = "raft" if metrics == other.raft else "client"
                raise node.error(f"metrics_address {metrics} is also the {kind} address of node "
                                 f"{other.id!r}; give it its own port")

    anonymous, principals = _auth(_Table(source, "[auth]", doc.get("auth", {}), _AUTH_KEYS), nodes)
    tls = _tls(_Table(source, "[tls]", doc["tls"], _TLS_KEYS), base_dir) if "tls" in doc else None
    raft = _raft(_Table(source, "[raft]", doc.get("raft", {}), tuple(_RAFT_RANGES)))
    limits_table = _Table(source, "[limits]", doc.get("limits", {}), tuple(_LIMIT_RANGES))
    limits = Limits(**{key: limits_table.integer(key, _default(Limits, key), *bounds)
                       for key, bounds in _LIMIT_RANGES.items()})

    return NodeConfig(
        node_id=node_id,
        data_dir=_absolute(data_dir),
        client_address=client_address,
        raft_address=raft_address,
        raft_bind=raft_bind,
        metrics_address=metrics,
        nodes=nodes,
        metadata_nodes=metadata_nodes,
        secret=secret,
        anonymous=anonymous,
        principals=principals,
        tls=tls,
        raft=raft,
        limits=limits,
        log_level=log_level,
        log_format=log_format,
    )


def _cluster_nodes(cluster: _Table) -> tuple[ClusterNode, ...]:
    entries = cluster.tables("nodes")
    if not entries:
        raise cluster.error("needs at least one [[cluster.nodes]] entry (id, raft, client); for a single "
                            "node, remove [cluster] and set client_address and raft_address in [node]")
    nodes: list[ClusterNode] = []
    ids: dict[str, int] = {}
    endpoints: dict[Address, str] = {}  # address -> what uses it, so a raft/client clash is caught too
    for number, data in enumerate(entries, 1):
        entry = _Table(cluster.source, f"[[cluster.nodes]] entry {number}", data, _CLUSTER_NODE_KEYS)
        node_id = entry.string("id")
        if not _NODE_ID.fullmatch(node_id):
            raise entry.error(f"id must be 1-64 of A-Z a-z 0-9 _ -, found {node_id!r}")
        if node_id in ids:
            raise entry.error(f"id {node_id!r} is already used by entry {ids[node_id]}; node ids must be "
                              f"unique")
        ids[node_id] = number
        entry.where = f"[[cluster.nodes]] entry {number} ({node_id!r})"
        raft, client = entry.address("raft"), entry.address("client")
        for kind, address in (("raft", raft), ("client", client)):
            if address.is_unspecified():
                raise entry.error(f"{kind} {address} is not an address others can dial; give the node's own "
                                  f"address (peers and clients connect to it)")
            if address in endpoints:
                raise entry.error(f"{kind} address {address} is already the {endpoints[address]}; every raft "
                                  f"and client address must be unique")
            endpoints[address] = f"{kind} address of node {node_id!r}"
        nodes.append(ClusterNode(node_id, raft, client))
    return tuple(nodes)


def _metadata_nodes(cluster: _Table, nodes: tuple[ClusterNode, ...]) -> tuple[str, ...]:
    ids = tuple(n.id for n in nodes)
    if not cluster.has("metadata_nodes"):
        if len(ids) in (1, 3, 5):
            return ids
        # Two replicas survive no more failures than one and add a node to lose, so 2 nodes get 1.
        return ids[:1] if len(ids) == 2 else ids[:3]
    chosen = cluster.strings("metadata_nodes")
    if len(chosen) not in (1, 3, 5):
        raise cluster.error(f"metadata_nodes must list 1, 3 or 5 node ids (a Raft group needs an odd "
                            f"majority), found {len(chosen)}")
    for node_id in chosen:
        if node_id not in ids:
            raise cluster.error(f"metadata_nodes: {node_id!r} is not in [[cluster.nodes]] "
                                f"(ids: {', '.join(ids)})")
    if len(set(chosen)) != len(chosen):
        raise cluster.error("metadata_nodes lists a node twice; list distinct node ids")
    return tuple(chosen)


def _secret(cluster: _Table, nodes: tuple[ClusterNode, ...]) -> str | None:
    if cluster.has("secret") and cluster.has("secret_env"):
        raise cluster.error("has both secret and secret_env; give only one")
    if cluster.has("secret"):
        secret = cluster.string("secret", secret=True)
    elif cluster.has("secret_env"):
        secret = cluster.env("secret_env", "cluster secret")
    elif len(nodes) > 1:
        raise cluster.error(f"needs secret (or secret_env) with {len(nodes)} nodes: nodes authenticate each "
                            f"other's Raft traffic with it; set the same random string of at least "
                            f"{MIN_SECRET_CHARS} characters on every node, e.g. from "
                            f"`python3 -c 'import secrets; print(secrets.token_urlsafe(32))'`")
    else:
        return None
    if len(secret) < MIN_SECRET_CHARS:
        raise cluster.error(f"the secret is {len(secret)} characters; use at least {MIN_SECRET_CHARS} random "
                            f"characters")
    if secret == EXAMPLE_SECRET and not all(n.raft.is_loopback() and n.client.is_loopback() for n in nodes):
        raise cluster.error("uses the example secret from the shipped config files, which is public; set "
                            "your own secret for a cluster on real addresses")
    return secret


def _auth(auth: _Table, nodes: tuple[ClusterNode, ...]) -> tuple[bool, tuple[Principal, ...]]:
    principals: list[Principal] = []
    names: dict[str, int] = {}
    tokens: dict[str, str] = {}
    for number, data in enumerate(auth.tables("principals"), 1):
        entry = _Table(auth.source, f"[[auth.principals]] entry {number}", data, _PRINCIPAL_KEYS)
        principal = _principal(entry)
        if principal.name in names:
            raise entry.error(f"name is already used by entry {names[principal.name]}; principal names must "
                              f"be unique")
        if principal.token in tokens:
            raise entry.error(f"has the same token as {tokens[principal.token]!r}; give every principal its "
                              f"own token")
        names[principal.name] = number
        tokens[principal.token] = principal.name
        principals.append(principal)

    anonymous = auth.boolean("anonymous", not principals)
    if anonymous:
        remote = [n for n in nodes if not n.client.is_loopback()]
        if remote:
            why = "anonymous = true" if auth.has("anonymous") else \
                "anonymous access (the default without [[auth.principals]])"
            raise auth.error(f"{why} is only allowed when clients connect over loopback, but node "
                             f"{remote[0].id!r} takes clients on {remote[0].client}; add [[auth.principals]] "
                             f"with tokens and set anonymous = false, or use a loopback client address")
    elif not principals:
        raise auth.error("anonymous = false with no [[auth.principals]] would let no client in; add a "
                         "principal")
    return anonymous, tuple(principals)


def _principal(entry: _Table) -> Principal:
    name = entry.string("name")
    if not _PRINCIPAL_NAME.fullmatch(name):
        raise entry.error(f"name must be 1-64 of A-Z a-z 0-9 _ . @ -, found {name!r}")
    entry.where = f"{entry.where} ({name!r})"
    if entry.has("token") == entry.has("token_env"):
        raise entry.error("needs exactly one of token or token_env")
    if entry.has("token"):
        token = entry.string("token", secret=True)
    else:
        token = entry.env("token_env", "token")
    if len(token) < MIN_TOKEN_CHARS:
        raise entry.error(f"token is {len(token)} characters; use at least {MIN_TOKEN_CHARS} random "
                          f"characters")
    permissions = []
    for number, data in enumerate(entry.tables("permissions", _MISSING), 1):
        grant = _Table(entry.source, f"{entry.where} permissions entry {number}", data, _PERMISSION_KEYS)
        queues = grant.string("queues")
        if not queues:
            raise grant.error("queues must be a queue name or pattern like \"orders-*\" or \"*\", found \"\"")
        actions = grant.strings("actions")
        unknown = sorted(set(actions) - ACTIONS)
        if unknown or not actions:
            raise grant.error(f"actions must be a non-empty list of {', '.join(sorted(ACTIONS))}; "
                              f"found {actions!r}")
        permissions.append(Permission(queues, frozenset(actions)))
    return Principal(name, token, tuple(permissions))


def _tls(tls: _Table, base_dir: str) -> TlsSettings:
    # Read every key before any file, so a missing key is reported as such rather than as a missing file.
    given = {key: tls.string(key) for key in ("cert_file", "key_file")}
    if tls.has("ca_file"):
        given["ca_file"] = tls.string("ca_file")
    paths: dict[str, str] = {}
    for key, value in given.items():
        path = os.path.normpath(os.path.join(base_dir, os.path.expanduser(value)))
        try:
            with open(path, "rb"):
                pass
        except OSError as e:
            raise tls.error(f"{key} {path} cannot be read: {e.strerror or e} (relative paths are relative to "
                            f"the config file's directory)") from None
        paths[key] = path
    return TlsSettings(paths["cert_file"], paths["key_file"], paths.get("ca_file"))


def _raft(table: _Table) -> RaftSettings:
    raft = RaftSettings(**{key: table.integer(key, _default(RaftSettings, key), *bounds)
                           for key, bounds in _RAFT_RANGES.items()})
    if raft.election_min_ms < 3 * raft.heartbeat_ms:
        raise table.error(f"election_min_ms ({raft.election_min_ms}) must be at least 3 * heartbeat_ms "
                          f"({3 * raft.heartbeat_ms}), or followers start elections under a healthy leader")
    if raft.election_max_ms <= raft.election_min_ms:
        raise table.error(f"election_max_ms ({raft.election_max_ms}) must be greater than election_min_ms "
                          f"({raft.election_min_ms}): the spread keeps candidates from splitting the vote")
    return raft
