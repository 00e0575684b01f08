"""The node configuration loader: shipped files, defaults, and one test per kind of mistake it must catch."""

from __future__ import annotations

import dataclasses
import os
import types
from pathlib import Path

import pytest

from dmq_server.config import (Address, ClusterNode, ConfigError, Limits, Permission, Principal, RaftSettings,
                               default_config, load_config, parse_config, prepare_data_dir)

CONFIG_DIR = Path(__file__).resolve().parents[2] / "config"

SINGLE = """
[node]
id = "n1"
"""

CLUSTER = """
[node]
id = "node1"
[cluster]
secret = "0123456789abcdef-test"
[[cluster.nodes]]
id = "node1"
raft = "127.0.0.1:7501"
client = "127.0.0.1:7401"
[[cluster.nodes]]
id = "node2"
raft = "127.0.0.1:7502"
client = "127.0.0.1:7402"
[[cluster.nodes]]
id = "node3"
raft = "127.0.0.1:7503"
client = "127.0.0.1:7403"
"""

TOKEN_A = "token-aaaaaaaaaaaaaaaa"
TOKEN_B = "token-bbbbbbbbbbbbbbbb"
ADMIN = {"name": "admin", "token": TOKEN_A,
         "permissions": [{"queues": "*", "actions": ["admin", "send", "receive"]}]}


def nodes(count: int, host: str = "127.0.0.1") -> list[dict]:
    return [{"id": f"node{i}", "raft": f"{host}:{7500 + i}", "client": f"{host}:{7400 + i}"}
            for i in range(1, count + 1)]


def error(text: str, overrides: dict | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "test.toml", overrides=overrides)
    message = str(info.value)
    assert message.startswith("test.toml: "), message
    return message


# --- shipped files and defaults -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["single.toml", "node1.toml", "node2.toml", "node3.toml"])
def test_shipped_files_load(name, tmp_path):
    config = load_config(str(CONFIG_DIR / name), overrides={"node": {"data_dir": str(tmp_path / "data")}})
    assert config.data_dir == str(tmp_path / "data")
    assert not (tmp_path / "data").exists()  # loading validates; only prepare_data_dir creates
    assert config.anonymous and config.principals == ()
    assert config.raft == RaftSettings() and config.limits == Limits()
    assert config.node(config.node_id).client == config.client_address


def test_single_toml_is_the_default(tmp_path):
    config = load_config(str(CONFIG_DIR / "single.toml"), overrides={"node": {"data_dir": str(tmp_path)}})
    assert config == default_config(str(tmp_path))


def test_single_toml_data_dir_is_dmq_data_relative_to_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert load_config(str(CONFIG_DIR / "single.toml")).data_dir == str(tmp_path / "dmq-data")


@pytest.mark.parametrize("i", [1, 2, 3])
def test_local_cluster_files(i, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = load_config(str(CONFIG_DIR / f"node{i}.toml"))
    assert config.node_id == f"node{i}"
    assert config.data_dir == str(tmp_path / "dmq-data" / f"node{i}")
    assert config.client_address == Address("127.0.0.1", 7410 + i)
    assert config.raft_address == config.raft_bind == Address("127.0.0.1", 7510 + i)
    assert config.metrics_address == Address("127.0.0.1", 9410 + i)
    assert config.secret == "dmq-local-cluster-secret-change-me"
    assert config.metadata_nodes == ("node1", "node2", "node3")
    assert [n.client.port for n in config.nodes] == [7411, 7412, 7413]
    assert [n.raft.port for n in config.nodes] == [7511, 7512, 7513]


def test_default_config(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = default_config()
    assert config.node_id == "dmq1"
    assert config.data_dir == str(tmp_path / "dmq-data")
    assert config.client_address == Address("127.0.0.1", 7400)
    assert config.raft_address == Address("127.0.0.1", 7401)
    assert config.raft_bind == Address("127.0.0.1", 0)
    assert config.metrics_address == Address("127.0.0.1", 9400)
    assert config.nodes == (ClusterNode("dmq1", Address("127.0.0.1", 7401), Address("127.0.0.1", 7400)),)
    assert config.metadata_nodes == ("dmq1",)
    assert config.anonymous is True and config.principals == ()
    assert config.tls is None and config.secret is None
    assert (config.log_level, config.log_format) == ("info", "text")
    assert config.limits.max_frame_bytes == 4 << 20


def test_minimal_single_node_file_gets_defaults():
    config = parse_config(SINGLE)
    assert config.client_address == Address("127.0.0.1", 7400)
    assert config.raft_bind == Address("127.0.0.1", 0)
    assert config.metadata_nodes == ("n1",)


def test_relative_data_dir_is_relative_to_cwd_not_the_file(tmp_path, monkeypatch):
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "n.toml").write_text('[node]\nid = "n1"\ndata_dir = "data/n1"\n')
    monkeypatch.chdir(tmp_path)
    assert load_config("etc/n.toml").data_dir == str(tmp_path / "data" / "n1")


def test_metrics_can_be_disabled():
    assert parse_config(SINGLE, overrides={"node": {"metrics_address": ""}}).metrics_address is None


def test_overrides_merge_table_by_table():
    config = parse_config(CLUSTER, overrides={"raft": {"heartbeat_ms": 20}, "node": {"log_level": "debug"}})
    assert config.raft.heartbeat_ms == 20 and config.raft.election_min_ms == 300
    assert config.node_id == "node1" and config.log_level == "debug"
    assert "unknown key 'verbose'" in error(CLUSTER, {"node": {"verbose": True}})


def test_node_lookup():
    config = parse_config(CLUSTER)
    assert config.node("node2").client == Address("127.0.0.1", 7402)
    with pytest.raises(KeyError, match="no node 'node9'"):
        config.node("node9")


def test_secrets_stay_out_of_repr():
    config = parse_config(CLUSTER, overrides={"auth": {"anonymous": False, "principals": [ADMIN]}})
    assert "0123456789abcdef-test" not in repr(config)
    assert TOKEN_A not in repr(config)


# --- structure and types ------------------------------------------------------------------------------------


def test_unknown_table():
    message = error(SINGLE + "[metrics]\nport = 1\n")
    assert "unknown table [metrics]" in message
    assert "known tables: node, cluster, raft, auth, tls, limits" in message


def test_unknown_top_level_key():
    assert "unknown top-level key 'id'" in error('id = "n1"\n' + SINGLE)


def test_unknown_key_lists_known_keys():
    message = error(SINGLE + 'clinet_address = "127.0.0.1:7400"\n')
    assert "[node] unknown key 'clinet_address'" in message
    assert "known keys: id, data_dir, client_address, raft_address, metrics_address, log_level, log_format" \
        in message


def test_unknown_key_in_cluster_node_entry():
    message = error(CLUSTER, {"cluster": {"nodes": [{**nodes(1)[0], "adress": "x"}]}})
    assert "[[cluster.nodes]] entry 1 unknown key 'adress'; known keys: id, raft, client" in message


def test_missing_node_table_and_id():
    assert "missing the [node] table" in error("[raft]\nheartbeat_ms = 50\n")
    assert "[node] is missing the required key 'id'" in error('[node]\ndata_dir = "x"\n')


@pytest.mark.parametrize("overrides, expected", [
    ({"raft": {"heartbeat_ms": "50"}}, "[raft] heartbeat_ms must be an integer, found string '50'"),
    ({"raft": {"heartbeat_ms": True}}, "[raft] heartbeat_ms must be an integer, found boolean True"),
    ({"limits": {"max_queues": 1.5}}, "[limits] max_queues must be an integer, found float 1.5"),
    ({"node": {"id": 7}}, "[node] id must be a string, found integer 7"),
    ({"auth": {"anonymous": 1}}, "[auth] anonymous must be true or false, found integer 1"),
    ({"cluster": {"metadata_nodes": "node1"}}, "[cluster] metadata_nodes must be an array of strings"),
    ({"raft": 5}, "[raft] must be a table, found integer 5"),
])
def test_wrong_type(overrides, expected):
    assert expected in error(CLUSTER, overrides)


def test_wrong_type_never_echoes_a_secret():
    message = error(CLUSTER, {"cluster": {"secret": ["hunter2-hunter2-hunter2"]}})
    assert "[cluster] secret must be a string, found an array" in message
    assert "hunter2" not in message


@pytest.mark.parametrize("overrides, expected", [
    ({"limits": {"max_frame_bytes": 1024}},
     "[limits] max_frame_bytes must be from 65536 to 67108864, found 1024"),
    ({"limits": {"max_partitions_per_queue": 0}}, "max_partitions_per_queue must be from 1 to 1024"),
    ({"raft": {"snapshot_min_entries": 10}}, "snapshot_min_entries must be from 1000 to 1000000000"),
    ({"node": {"log_level": "verbose"}},
     "log_level must be one of debug, info, warning, error; found 'verbose'"),
    ({"node": {"log_format": "xml"}}, "log_format must be one of text, json"),
    ({"node": {"id": "node 1"}}, "[node] id must be 1-64 of A-Z a-z 0-9 _ -, found 'node 1'"),
])
def test_out_of_range(overrides, expected):
    assert expected in error(SINGLE, overrides)


def test_malformed_toml_names_the_file(tmp_path):
    path = tmp_path / "broken.toml"
    path.write_text('[node]\nid = "n1\n')
    with pytest.raises(ConfigError, match=r"broken\.toml: invalid TOML: .*line 2"):
        load_config(str(path))


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="nope.toml: cannot read the config file: No such file"):
        load_config(str(tmp_path / "nope.toml"))


# --- addresses ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text, address", [
    ("127.0.0.1:7400", Address("127.0.0.1", 7400)),
    ("localhost:1", Address("localhost", 1)),
    ("db-1.example.com:65535", Address("db-1.example.com", 65535)),
    ("[::1]:7400", Address("::1", 7400)),
])
def test_address_parse(text, address):
    assert Address.parse(text) == address
    assert str(address) == text


@pytest.mark.parametrize("text, expected", [
    ("127.0.0.1", "has no port"),
    (":7400", "has no host"),
    ("::1:7400", "put an IPv6 host in brackets"),
    ("[nope]:7400", "is not an IPv6 address"),
    ("300.1.1.1:7400", "is not a valid IPv4 address"),
    ("bad host:7400", "is not a valid host name"),
    ("127.0.0.1:70000", "port '70000' must be a number from 1 to 65535"),
    ("127.0.0.1:0", "port '0' must be a number from 1 to 65535"),
    ("127.0.0.1:http", "port 'http' must be a number"),
    ("127.0.0.1:-1", "port '-1' must be a number"),
])
def test_bad_address(text, expected):
    with pytest.raises(ConfigError, match=expected):
        Address.parse(text)
    message = error(SINGLE, {"node": {"client_address": text}})
    assert f"[node] client_address {text!r}" in message and expected in message


def test_port_zero_only_where_allowed():
    assert Address.parse("127.0.0.1:0", allow_port_zero=True) == Address("127.0.0.1", 0)
    assert "port '0'" in error(CLUSTER, {"cluster": {"nodes": [{**nodes(1)[0], "raft": "127.0.0.1:0"}]}})


def test_cluster_addresses_must_be_dialable():
    message = error(CLUSTER, {"cluster": {"nodes": [{**nodes(1)[0], "client": "0.0.0.0:7401"}]}})
    assert "client 0.0.0.0:7401 is not an address others can dial" in message


def test_single_node_client_and_raft_address_must_differ():
    message = error(SINGLE, {"node": {"client_address": "127.0.0.1:7000", "raft_address": "127.0.0.1:7000"}})
    assert "client_address and raft_address are both 127.0.0.1:7000" in message


def test_metrics_address_must_not_reuse_a_node_port():
    message = error(CLUSTER, {"node": {"metrics_address": "127.0.0.1:7402"}})
    assert "metrics_address 127.0.0.1:7402 is also the client address of node 'node2'" in message


# --- cluster ------------------------------------------------------------------------------------------------


def test_duplicate_node_id():
    twice = nodes(3)
    twice[2]["id"] = "node1"
    message = error(CLUSTER, {"cluster": {"nodes": twice}})
    assert "[[cluster.nodes]] entry 3 id 'node1' is already used by entry 1" in message


def test_duplicate_raft_address():
    same = nodes(3)
    same[1]["raft"] = same[0]["raft"]
    message = error(CLUSTER, {"cluster": {"nodes": same}})
    assert "entry 2 ('node2') raft address 127.0.0.1:7501 is already the raft address of node 'node1'" \
        in message


def test_duplicate_client_address():
    same = nodes(3)
    same[2]["client"] = same[1]["client"]
    message = error(CLUSTER, {"cluster": {"nodes": same}})
    assert "entry 3 ('node3') client address 127.0.0.1:7402 is already the client address of node 'node2'" \
        in message


def test_raft_address_of_one_node_is_the_client_address_of_another():
    same = nodes(3)
    same[1]["raft"] = same[0]["client"]
    assert "raft address 127.0.0.1:7401 is already the client address of node 'node1'" in \
        error(CLUSTER, {"cluster": {"nodes": same}})


def test_node_id_not_in_cluster():
    message = error(CLUSTER, {"node": {"id": "node4"}})
    assert "[node] id 'node4' is not in [[cluster.nodes]] (ids: node1, node2, node3)" in message


def test_cluster_without_nodes():
    assert "[cluster] needs at least one [[cluster.nodes]] entry" in \
        error('[node]\nid = "n1"\n[cluster]\nsecret = "0123456789abcdef"\n')


@pytest.mark.parametrize("key", ["client_address", "raft_address"])
def test_node_addresses_are_rejected_with_a_cluster(key):
    message = error(CLUSTER, {"node": {key: "127.0.0.1:9000"}})
    assert f"[node] {key} is not allowed with a [cluster] table" in message


def test_secret_missing_for_multi_node():
    text = CLUSTER.replace('secret = "0123456789abcdef-test"\n', "")
    assert "[cluster] needs secret (or secret_env) with 3 nodes" in error(text)
    # One node in a [cluster] table has no peers to authenticate.
    assert parse_config(text, overrides={"cluster": {"nodes": nodes(1)}}).secret is None


def test_secret_too_short():
    assert "the secret is 5 characters; use at least 16" in error(CLUSTER, {"cluster": {"secret": "short"}})


def test_secret_and_secret_env_together():
    assert "has both secret and secret_env" in error(CLUSTER, {"cluster": {"secret_env": "DMQ_SECRET"}})


def test_secret_env_is_read_from_the_environment(monkeypatch):
    text = CLUSTER.replace('secret = "0123456789abcdef-test"', 'secret_env = "DMQ_TEST_SECRET"')
    monkeypatch.setenv("DMQ_TEST_SECRET", "from-the-environment-1234")
    assert parse_config(text).secret == "from-the-environment-1234"
    monkeypatch.delenv("DMQ_TEST_SECRET")
    assert "secret_env: environment variable DMQ_TEST_SECRET is not set" in error(text)
    monkeypatch.setenv("DMQ_TEST_SECRET", "")
    assert "environment variable DMQ_TEST_SECRET is empty" in error(text)
    monkeypatch.setenv("DMQ_TEST_SECRET", "short")
    assert "the secret is 5 characters" in error(text)


def test_example_secret_is_refused_off_loopback():
    overrides = {"cluster": {"secret": "dmq-local-cluster-secret-change-me", "nodes": nodes(3, "10.0.0.1")},
                 "auth": {"anonymous": False, "principals": [ADMIN]}}
    assert "uses the example secret from the shipped config files" in error(CLUSTER, overrides)
    overrides["cluster"]["secret"] = "a-real-secret-0123456789"
    assert parse_config(CLUSTER, overrides=overrides).secret == "a-real-secret-0123456789"


@pytest.mark.parametrize("count, expected", [
    (1, ("node1",)),
    (2, ("node1",)),
    (3, ("node1", "node2", "node3")),
    (4, ("node1", "node2", "node3")),
    (5, ("node1", "node2", "node3", "node4", "node5")),
    (7, ("node1", "node2", "node3")),
])
def test_metadata_nodes_default(count, expected):
    assert parse_config(CLUSTER, overrides={"cluster": {"nodes": nodes(count)}}).metadata_nodes == expected


def test_metadata_nodes_explicit():
    config = parse_config(CLUSTER, overrides={"cluster": {"nodes": nodes(5), "metadata_nodes": ["node5"]}})
    assert config.metadata_nodes == ("node5",)


@pytest.mark.parametrize("chosen, expected", [
    (["node1", "node2"], "metadata_nodes must list 1, 3 or 5 node ids"),
    (["node1", "node2", "node3", "node4"], "found 4"),
    ([], "found 0"),
    (["node1", "node2", "node9"], "metadata_nodes: 'node9' is not in [[cluster.nodes]]"),
    (["node1", "node1", "node2"], "metadata_nodes lists a node twice"),
])
def test_metadata_nodes_invalid(chosen, expected):
    assert expected in error(CLUSTER, {"cluster": {"nodes": nodes(5), "metadata_nodes": chosen}})


# --- raft timing --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("raft, expected", [
    ({"heartbeat_ms": 200}, "election_min_ms (300) must be at least 3 * heartbeat_ms (600)"),
    ({"election_min_ms": 100}, "election_min_ms (100) must be at least 3 * heartbeat_ms (150)"),
    ({"election_max_ms": 300}, "election_max_ms (300) must be greater than election_min_ms (300)"),
    ({"election_max_ms": 60_001}, "election_max_ms must be from 1 to 60000, found 60001"),
    ({"heartbeat_ms": 5}, "heartbeat_ms must be from 10 to 1000, found 5"),
    ({"quiet_after_ms": -1}, "quiet_after_ms must be from 0 to 3600000, found -1"),
    ({"quiet_after_ms": "1s"}, "quiet_after_ms"),
])
def test_election_timing(raft, expected):
    assert expected in error(SINGLE, {"raft": raft})


def test_election_timing_accepted_at_the_boundary():
    raft = parse_config(SINGLE, overrides={"raft": {"heartbeat_ms": 100, "election_min_ms": 300,
                                                    "election_max_ms": 301}}).raft
    assert (raft.heartbeat_ms, raft.election_min_ms, raft.election_max_ms) == (100, 300, 301)


def test_quiet_after_reaches_the_groups():
    from dmq_server.node import Node
    for given, expected in ((0, None), (2500, 2.5)):
        config = parse_config(SINGLE, overrides={"raft": {"quiet_after_ms": given}})
        assert Node._timings(types.SimpleNamespace(config=config)).quiet_after == expected
    assert parse_config(SINGLE).raft.quiet_after_ms == 1000


# --- auth ---------------------------------------------------------------------------------------------------


def test_anonymous_default_depends_on_principals():
    assert parse_config(SINGLE).anonymous is True
    config = parse_config(SINGLE, overrides={"auth": {"principals": [ADMIN]}})
    assert config.anonymous is False and config.principals[0].name == "admin"


def test_anonymous_refused_on_non_loopback_address():
    message = error(SINGLE, {"node": {"client_address": "0.0.0.0:7400"}, "auth": {"anonymous": True}})
    assert "anonymous = true is only allowed when clients connect over loopback" in message
    assert "node 'n1' takes clients on 0.0.0.0:7400" in message


def test_anonymous_by_default_refused_on_non_loopback_address():
    message = error(SINGLE, {"node": {"client_address": "192.168.1.5:7400"}})
    assert "anonymous access (the default without [[auth.principals]]) is only allowed" in message
    config = parse_config(SINGLE, overrides={"node": {"client_address": "192.168.1.5:7400"},
                                             "auth": {"principals": [ADMIN]}})
    assert config.anonymous is False


@pytest.mark.parametrize("host", ["127.0.0.1", "127.9.9.9", "localhost", "LOCALHOST", "[::1]"])
def test_anonymous_allowed_on_loopback(host):
    assert parse_config(SINGLE, overrides={"node": {"client_address": f"{host}:7400"}}).anonymous is True


def test_anonymous_refused_when_any_cluster_node_is_remote():
    remote = nodes(3)
    remote[2]["client"] = "10.0.0.3:7403"
    message = error(CLUSTER, {"cluster": {"nodes": remote}, "auth": {"anonymous": True}})
    assert "node 'node3' takes clients on 10.0.0.3:7403" in message


def test_anonymous_false_needs_a_principal():
    assert "anonymous = false with no [[auth.principals]]" in error(SINGLE, {"auth": {"anonymous": False}})


def test_token_too_short():
    message = error(SINGLE, {"auth": {"principals": [{**ADMIN, "token": "abc"}]}})
    assert "[[auth.principals]] entry 1 ('admin') token is 3 characters; use at least 16" in message
    assert "abc" not in message.split("token is")[1]


def test_duplicate_tokens():
    message = error(SINGLE, {"auth": {"principals": [ADMIN, {**ADMIN, "name": "ops"}]}})
    assert "entry 2 ('ops') has the same token as 'admin'" in message
    assert TOKEN_A not in message


def test_duplicate_principal_names():
    message = error(SINGLE, {"auth": {"principals": [ADMIN, {**ADMIN, "token": TOKEN_B}]}})
    assert "entry 2 ('admin') name is already used by entry 1" in message


def test_token_and_token_env():
    both = {**ADMIN, "token_env": "X"}
    assert "needs exactly one of token or token_env" in error(SINGLE, {"auth": {"principals": [both]}})
    neither = {k: v for k, v in ADMIN.items() if k != "token"}
    assert "needs exactly one of token or token_env" in error(SINGLE, {"auth": {"principals": [neither]}})


def test_token_env(monkeypatch):
    from_env = {k: v for k, v in ADMIN.items() if k != "token"} | {"token_env": "DMQ_TEST_TOKEN"}
    monkeypatch.setenv("DMQ_TEST_TOKEN", TOKEN_B)
    config = parse_config(SINGLE, overrides={"auth": {"principals": [from_env]}})
    assert config.principals[0].token == TOKEN_B
    monkeypatch.delenv("DMQ_TEST_TOKEN")
    assert "token_env: environment variable DMQ_TEST_TOKEN is not set" in \
        error(SINGLE, {"auth": {"principals": [from_env]}})


@pytest.mark.parametrize("change, expected", [
    ({"name": "has space"}, "name must be 1-64 of A-Z a-z 0-9 _ . @ -, found 'has space'"),
    ({"permissions": [{"queues": "*", "actions": ["write"]}]}, "actions must be a non-empty list of admin, "
                                                               "receive, send; found ['write']"),
    ({"permissions": [{"queues": "*", "actions": []}]}, "actions must be a non-empty list"),
    ({"permissions": [{"queues": "", "actions": ["send"]}]},
     "permissions entry 1 queues must be a queue name"),
    ({"permissions": [{"queue": "*", "actions": ["send"]}]},
     "unknown key 'queue'; known keys: queues, actions"),
    ({"permissions": "all"}, "permissions must be an array of tables"),
])
def test_bad_principal(change, expected):
    assert expected in error(SINGLE, {"auth": {"principals": [{**ADMIN, **change}]}})


def test_principal_permissions_are_required():
    no_permissions = {k: v for k, v in ADMIN.items() if k != "permissions"}
    message = error(SINGLE, {"auth": {"principals": [no_permissions]}})
    assert "[[auth.principals]] entry 1 ('admin') is missing the required key 'permissions'" in message


def test_principal_for_token():
    orders = {"name": "orders", "token": TOKEN_B,
              "permissions": [{"queues": "orders-*", "actions": ["send"]}]}
    config = parse_config(SINGLE, overrides={"auth": {"principals": [ADMIN, orders]}})
    assert config.principal_for_token(TOKEN_B).name == "orders"
    assert config.principal_for_token(TOKEN_A).name == "admin"
    assert config.principal_for_token(TOKEN_A[:-1]) is None
    assert config.principal_for_token("") is None
    assert config.principal_for_token("tökén") is None


def test_principal_for_token_compares_every_token(monkeypatch):
    # Stopping at the first match would let response time reveal which principal a token belongs to.
    import hmac
    compared = []
    real = hmac.compare_digest
    monkeypatch.setattr(hmac, "compare_digest", lambda a, b: compared.append(a) or real(a, b))
    other = {**ADMIN, "name": "b", "token": TOKEN_B}
    config = parse_config(SINGLE, overrides={"auth": {"principals": [ADMIN, other]}})
    assert config.principal_for_token(TOKEN_A).name == "admin"
    assert compared == [TOKEN_A.encode(), TOKEN_B.encode()]


def test_permission_patterns():
    orders = Permission("orders-*", frozenset({"send", "receive"}))
    assert orders.allows("send", "orders-eu")
    assert not orders.allows("send", "billing")
    assert not orders.allows("admin", "orders-eu")
    assert not orders.allows("send", "Orders-eu")  # case-sensitive on every platform
    exact = Permission("audit", frozenset({"receive"}))
    assert exact.allows("receive", "audit") and not exact.allows("receive", "audit-2")
    principal = Principal("svc", TOKEN_A, (orders, exact, Permission("*", frozenset({"admin"}))))
    assert principal.allows("receive", "audit")
    assert principal.allows("admin", "anything")
    assert not principal.allows("send", "audit")
    assert not Principal("nobody", TOKEN_B, ()).allows("send", "orders-eu")


def test_parsed_permissions():
    config = parse_config(SINGLE, overrides={"auth": {"principals": [
        {**ADMIN, "permissions": [{"queues": "orders-?", "actions": ["send", "send"]}]}]}})
    assert config.principals[0].permissions == (Permission("orders-?", frozenset({"send"})),)
    assert config.principals[0].allows("send", "orders-1")
    assert not config.principals[0].allows("send", "orders-10")


# --- TLS ----------------------------------------------------------------------------------------------------


def test_tls_files_relative_to_the_config_file(tmp_path, monkeypatch):
    etc = tmp_path / "etc"
    etc.mkdir()
    for name in ("node.pem", "node.key", "ca.pem"):
        (etc / name).write_text("pem")
    (etc / "n.toml").write_text(SINGLE + '[tls]\ncert_file = "node.pem"\nkey_file = "node.key"\n'
                                         'ca_file = "ca.pem"\n')
    monkeypatch.chdir(tmp_path)
    tls = load_config("etc/n.toml").tls
    assert (tls.cert_file, tls.key_file, tls.ca_file) == \
        (str(etc / "node.pem"), str(etc / "node.key"), str(etc / "ca.pem"))


def test_tls_ca_file_is_optional(tmp_path):
    (tmp_path / "c.pem").write_text("pem")
    (tmp_path / "k.pem").write_text("pem")
    (tmp_path / "n.toml").write_text(SINGLE + '[tls]\ncert_file = "c.pem"\nkey_file = "k.pem"\n')
    assert load_config(str(tmp_path / "n.toml")).tls.ca_file is None


def test_tls_file_missing(tmp_path):
    (tmp_path / "c.pem").write_text("pem")
    (tmp_path / "n.toml").write_text(SINGLE + '[tls]\ncert_file = "c.pem"\nkey_file = "missing.key"\n')
    with pytest.raises(ConfigError) as info:
        load_config(str(tmp_path / "n.toml"))
    assert f"[tls] key_file {tmp_path / 'missing.key'} cannot be read: No such file" in str(info.value)


def test_tls_needs_cert_and_key(tmp_path):
    assert "[tls] is missing the required key 'key_file'" in error(SINGLE, {"tls": {"cert_file": "c.pem"}})


# --- data directory -----------------------------------------------------------------------------------------


def test_prepare_data_dir_creates_it(tmp_path):
    path = tmp_path / "a" / "b"
    prepare_data_dir(str(path))
    assert path.is_dir() and os.listdir(path) == []  # the write probe is gone
    prepare_data_dir(str(path))  # existing is fine


def test_data_dir_that_is_a_file(tmp_path):
    path = tmp_path / "data"
    path.write_text("")
    with pytest.raises(ConfigError, match="exists but is not a directory"):
        prepare_data_dir(str(path))
    with pytest.raises(ConfigError, match="cannot be created"):
        prepare_data_dir(str(path / "below"))


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes to any directory")
def test_data_dir_not_writable(tmp_path):
    path = tmp_path / "ro"
    path.mkdir()
    path.chmod(0o500)
    try:
        with pytest.raises(ConfigError, match=r"data_dir .*ro is not writable: Permission denied"):
            prepare_data_dir(str(path))
    finally:
        path.chmod(0o700)


def test_configs_are_frozen():
    config = default_config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.node_id = "other"  # type: ignore[misc]
