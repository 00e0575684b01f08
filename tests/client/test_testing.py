"""dmq_client.testing (cluster(), LocalCluster) and its pytest plugin (the dmq_cluster fixture), against real
nodes. One-node clusters wherever replicas do not matter, to keep this quick."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
import tomllib
from pathlib import Path

import pytest

from dmq_client.connection import Connection
from dmq_client.errors import DmqError, TooManyQueues, Unauthorized
from dmq_client import Client
from dmq_client.testing import ACTIVE, TABLES, ClusterError, LocalCluster, cluster, to_toml

pytestmark = pytest.mark.timeout(60)


def _gone(pid: int) -> bool:
    """No process with this PID exists (it exited and was reaped)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def _roundtrip(node: Connection, queue: str, body: bytes) -> None:
    node.call("create_queue", {"name": queue, "attributes": {}})
    node.call("send", {"queue": queue, "messages": [{"body": body}]})


def _received(node: Connection, queue: str) -> list[bytes]:
    return [m["body"] for m in node.call("receive", {"queue": queue, "max_messages": 10, "wait_ms": 1000})]


# ---------------------------------------------------------------------------------------------- cluster()


def test_one_node_cluster_answers_and_cleans_up() -> None:
    with cluster(1) as dmq:
        assert len(dmq) == 1 and dmq.node_ids == ["node1"] and dmq in ACTIVE
        assert dmq.addresses[0].startswith("127.0.0.1:") and dmq.metrics_addresses[0].startswith("127.0.0.1:")
        with Connection(dmq.addresses[0]) as node:
            assert node.welcome["node"] == "node1"
            _roundtrip(node, "one", b"hello")
            assert _received(node, "one") == [b"hello"]
        assert dmq.data_dirs[0].is_dir() and dmq.log_paths[0].is_file()
        assert "node 0 (node1), last 5 log lines:" in dmq.log_tail(0, lines=5)
        pid, root = dmq.pid(0), dmq.root
    assert _gone(pid) and dmq not in ACTIVE
    assert not root.exists(), "the temporary root is removed on exit"


def test_kill_and_start_keep_the_data() -> None:
    with cluster(1) as dmq:
        with dmq.connect(0) as node:
            _roundtrip(node, "durable", b"kept")
        first = dmq.pid(0)
        dmq.kill(0)
        assert not dmq.alive(0) and _gone(first)
        assert dmq.procs[0] is not None and dmq.procs[0].returncode == -9  # reaped, by SIGKILL
        with pytest.raises(ClusterError, match="not running"):
            dmq.kill(0)
        dmq.start(0)
        dmq.wait_ready(timeout=20)
        assert dmq.pid(0) != first and dmq.alive(0)
        # wait_ready covers the metadata group; the queue's partition elects its own leader just after
        with Client(dmq.addresses, retry_seconds=20) as client:
            assert [m.body for m in client.receive("durable", wait_seconds=2)] == [b"kept"]


def test_stop_exits_cleanly_and_start_again() -> None:
    with cluster(1) as dmq:
        assert dmq.stop(0) == 0
        assert not dmq.alive(0) and dmq.procs[0] is not None and dmq.procs[0].returncode == 0
        with pytest.raises(ClusterError, match="not running"):
            dmq.stop(0)
        dmq.start(0)
        with pytest.raises(ClusterError, match="already running"):
            dmq.start(0)
        dmq.wait_ready(timeout=20)


def test_pause_and_resume() -> None:
    with cluster(1) as dmq:
        dmq.pause(0)
        assert dmq.alive(0)
        started = time.monotonic()
        with pytest.raises(DmqError):  # the kernel accepts the connection, but no welcome comes
            Connection(dmq.addresses[0], connect_timeout=0.5)
        assert time.monotonic() - started < 5
        dmq.resume(0)
        dmq.wait_ready(timeout=20)
        dmq.pause(0)  # left paused: leaving the context must still stop it cleanly
        proc = dmq.procs[0]
    assert proc is not None and proc.returncode == 0, "a paused node gets SIGCONT with its SIGTERM"


def test_leaving_after_an_exception_stops_every_process(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="boom") as raised:
        with cluster(1, root=tmp_path / "kept") as dmq:
            pids = [dmq.pid(0)]
            dmq.kill(0)
            dmq.start(0)  # a second process of the same node: close() must stop it too
            pids.append(dmq.pid(0))
            raise RuntimeError("boom")
    assert all(_gone(pid) for pid in pids) and dmq not in ACTIVE
    assert any("last 40 log lines" in note for note in raised.value.__notes__), "the log tails go with it"
    assert (tmp_path / "kept" / "node1.log").is_file(), "a root= directory is kept"


ADMIN = {"name": "admin", "token": "admin-token-0123456789", "permissions": [
    {"queues": "*", "actions": ["admin", "send", "receive"]}]}


def test_node_options_reach_the_config() -> None:
    with cluster(1, limits={"max_queues": 1}, raft={"election_min_ms": 200, "election_max_ms": 400},
                 node={"log_level": "debug"}, auth={"anonymous": False, "principals": [ADMIN]}) as dmq:
        config = tomllib.loads(dmq.config_paths[0].read_text())
        assert config["limits"] == {"max_queues": 1}
        assert config["raft"] == {"election_min_ms": 200, "election_max_ms": 400}
        assert config["node"]["log_level"] == "debug" and config["node"]["id"] == "node1"
        assert config["cluster"]["metadata_nodes"] == ["node1"] and len(config["cluster"]["secret"]) >= 16
        assert config["auth"]["principals"] == [ADMIN]
        assert dmq.token == ADMIN["token"], "with anonymous access off, the first principal's token"
        with pytest.raises(Unauthorized):
            Connection(dmq.addresses[0], None)
        with dmq.connect(0) as node:
            node.call("create_queue", {"name": "first", "attributes": {}})
            with pytest.raises(TooManyQueues):
                node.call("create_queue", {"name": "second", "attributes": {}})


def test_bad_options_raise_type_error_before_starting() -> None:
    count = len(ACTIVE)
    with pytest.raises(TypeError, match="unexpected keyword argument 'limit'.*node, cluster, raft"):
        with cluster(1, limit={"max_queues": 1}):
            pass
    with pytest.raises(TypeError, match="limits= must be a dict"):
        with cluster(1, limits=5):  # type: ignore[arg-type]
            pass
    with pytest.raises(TypeError, match=r"sets \[node\] data_dir"):
        with cluster(1, node={"data_dir": "/tmp/elsewhere"}):
            pass
    assert len(ACTIVE) == count


def test_a_node_that_exits_while_starting_fails_fast() -> None:
    started = time.monotonic()
    with pytest.raises(ClusterError, match=r"(?s)exited with status 2 while starting.*max_queues"):
        with cluster(1, limits={"max_queues": 0}):  # out of range: the daemon refuses the config
            pass
    assert time.monotonic() - started < 15


def test_tables_match_the_server_config() -> None:
    from dmq_server import config

    assert TABLES == config._TABLES


def test_to_toml_round_trips() -> None:
    doc = {
        "node": {"id": "n", "odd key": 'quote " backslash \\ tab \t newline \n del \x7f nul \x00 é'},
        "cluster": {"secret": "s", "metadata_nodes": ["a", "b"],
                    "nodes": [{"id": "a", "raft": "x:1"}, {"id": "b", "raft": "x:2"}]},
        "raft": {"flag": True, "off": False, "ratio": 0.5, "big": 1e300, "neg": -3, "empty": []},
        "auth": {"principals": [{"name": "p", "permissions": [{"queues": "*", "actions": ["send"]}],
                                 "inline": [{"k": 1}, 2]}],
                 "nested": {"deeper": {"x": 1}}},
    }
    assert tomllib.loads(to_toml(doc)) == doc
    with pytest.raises(TypeError, match="cannot write"):
        to_toml({"t": {"when": object()}})


def test_local_cluster_runs_given_config_texts(tmp_path: Path) -> None:
    """The core nodes.py builds on: config texts in, processes out (a lone node without [cluster] here)."""
    from dmq_client.testing import free_ports

    client, raft = free_ports(2)
    text = to_toml({"node": {"id": "solo", "client_address": f"127.0.0.1:{client}",
                             "raft_address": f"127.0.0.1:{raft}", "metrics_address": ""}})
    local = LocalCluster([text], tmp_path)
    try:
        local.start_all(timeout=20)
        assert local.addresses == [f"127.0.0.1:{client}"] and local.metrics_addresses == [None]
        assert local.config_paths[0].read_text() == text
    finally:
        local.close()
    assert not local.alive(0) and local not in ACTIVE


# ---------------------------------------------------------------------------------------------- the plugin


def test_fixture_without_marker(dmq_cluster: LocalCluster) -> None:
    assert len(dmq_cluster) == 1
    with dmq_cluster.connect(0) as node:
        _roundtrip(node, "fixture", b"plain")
        assert _received(node, "fixture") == [b"plain"]


@pytest.mark.dmq_cluster(3, raft={"election_min_ms": 200, "election_max_ms": 400}, limits={"max_queues": 5})
def test_fixture_with_marker_three_nodes(dmq_cluster: LocalCluster) -> None:
    assert dmq_cluster.node_ids == ["node1", "node2", "node3"]
    assert tomllib.loads(dmq_cluster.config_paths[2].read_text())["raft"]["election_min_ms"] == 200
    for i in range(3):
        with dmq_cluster.connect(i) as node:
            status = node.call("cluster_status", {})
            assert status["metadata_leader"] in dmq_cluster.node_ids
            assert sorted(n["id"] for n in status["nodes"] if n["alive"]) == dmq_cluster.node_ids
    with dmq_cluster.connect(1) as node:
        _roundtrip(node, "replicated", b"three")
    with dmq_cluster.connect(2) as node:
        assert _received(node, "replicated") == [b"three"]


def test_plugin_reports_node_logs_of_a_failing_test(tmp_path: Path) -> None:
    """In a fresh pytest (the plugin comes from its entry point): a failing test shows its nodes' logs."""
    (tmp_path / "test_inner.py").write_text(textwrap.dedent("""
        def test_fails(dmq_cluster):
            assert dmq_cluster.alive(0)
            assert False, "inner failure"
    """))
    # its own basetemp, so its tmp_path cleanup never touches this run's; no hypothesis plugin: startup time
    run = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p",
                          "no:hypothesispytest", "-q", f"--basetemp={tmp_path / 'inner-tmp'}",
                          "test_inner.py"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=50)
    assert run.returncode == 1, run.stdout + run.stderr
    assert "inner failure" in run.stdout
    assert "dmq node logs" in run.stdout and "node 0 (node1), last 40 log lines" in run.stdout, run.stdout


def test_plugin_imports_nothing_beyond_dmq_client() -> None:
    """Every pytest run loads the plugin: importing it imports neither the server nor dmq_client.testing."""
    code = ("import sys, pytest, dmq_client; before = set(sys.modules); import dmq_client.pytest_plugin; "
            "print(sorted(set(sys.modules) - before), "
            "sorted(m for m in sys.modules if m.startswith('dmq_server')))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "['dmq_client.pytest_plugin'] []"
