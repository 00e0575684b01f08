"""The `dmq` commands that talk to a cluster (dmq_server/cli_client.py), through click's CliRunner against one
real node: every command, text and --json output, stdin and file sending, confirmations, and the exit codes of
errors (not found, unreachable, auth). A second node with TLS and tokens covers --tls-ca and exit code 5."""

from __future__ import annotations

import base64
import itertools
import json
import os
import re
import shutil
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from dmq_client import Client
from dmq_client.testing import LocalCluster, cluster, free_ports
from dmq_server.cli import main
from dmq_server.cli_client import format_table

pytestmark = pytest.mark.timeout(120)

_names = itertools.count(1)


def fresh(prefix: str = "cli") -> str:
    return f"{prefix}-{next(_names)}"


@pytest.fixture(scope="module")
def dmq() -> Iterator[LocalCluster]:
    with cluster(1) as local:
        yield local


@pytest.fixture(scope="module")
def client(dmq: LocalCluster) -> Iterator[Client]:
    with Client(dmq.addresses, retry_seconds=10) as c:
        yield c


def run(dmq: LocalCluster, *args: str, input: str | bytes | None = None, nodes: str | None = None,
        env: dict[str, str] | None = None) -> Result:
    """`dmq ARGS --nodes <the cluster>` in-process; options after the arguments, as a user may type them."""
    started = time.monotonic()
    result = CliRunner().invoke(main, [*args, "--nodes", nodes or dmq.addresses[0], "--timeout", "10"],
                                input=input, env=env, catch_exceptions=True)
    assert time.monotonic() - started < 30, f"dmq {' '.join(args)} took too long"
    return result


def ok(result: Result) -> Result:
    assert result.exit_code == 0, (result.exit_code, result.output, result.exception)
    assert result.exception is None or isinstance(result.exception, SystemExit)
    return result


def failed(result: Result, code: int, name: str | None = None) -> Result:
    """Exit `code`, no traceback (an expected error is a SystemExit), one `error: <name>: ...` line."""
    assert result.exit_code == code, (result.exit_code, result.output, result.exception)
    assert isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    if name is not None:
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"error: {name}: "), result.stderr
    return result


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def receive_all(dmq: LocalCluster, queue: str, expect: int) -> list[dict]:
    """`dmq receive --json` until `expect` messages came (a receive returns *up to* --max), then one more that
    must find nothing; they are deleted."""
    messages: list[dict] = []
    for _ in range(expect + 1):
        batch = json_lines(ok(run(dmq, "receive", queue, "--max", "1000", "--wait", "1", "--json")).stdout)
        messages += batch
        if not batch or len(messages) >= expect:
            break
    assert len(messages) == expect, messages
    assert ok(run(dmq, "receive", queue, "--json")).stdout == ""
    return messages


# ---------------------------------------------------------------------------------------------- help, tables


def test_help_documents_exit_codes_and_lag() -> None:
    runner = CliRunner()
    text = runner.invoke(main, ["--help"]).output
    for command in ("queue", "send", "receive", "peek", "tail", "redrive", "cluster"):
        assert f"  {command} " in text
    assert "Exit codes" in text and "3  not found" in text and "5  authentication" in text
    status_help = runner.invoke(main, ["cluster", "status", "--help"]).output
    assert "metrics" in status_help and "lag" in status_help
    peek_help = runner.invoke(main, ["peek", "--help"]).output
    assert "receive count" in peek_help and "--partition" in peek_help
    create_help = runner.invoke(main, ["queue", "create", "--help"]).output
    assert "--dead-letter-queue" in create_help and "DMQ_NODES" in create_help


def test_format_table() -> None:
    assert format_table(["A", "LONG"], [(1, None), ("xyz", "b")]) == "A    LONG\n1    -\nxyz  b"
    assert format_table(None, [("k", "v")], indent="  ") == "  k  v"
    assert format_table(None, []) == ""


# ---------------------------------------------------------------------------------------------- queues


def test_queue_create_maps_every_option(dmq: LocalCluster) -> None:
    dlq, name = fresh("dlq"), fresh("full")
    ok(run(dmq, "queue", "create", dlq))
    result = ok(run(dmq, "queue", "create", name, "--partitions", "2", "--max-messages", "5000",
                    "--max-message-bytes", "2048", "--visibility-timeout", "5", "--retention", "3600",
                    "--delay", "0.5", "--receive-wait", "2", "--dead-letter-queue", dlq,
                    "--max-receives", "3", "--replication", "1", "--ack-mode", "quorum",
                    "--dedup-window", "60", "--json"))
    info = json.loads(result.stdout)
    assert info["name"] == name and len(info["partitions"]) == 2
    attributes = info["attributes"]
    expected = {"partitions": 2, "max_messages": 5000, "max_message_bytes": 2048,
                "visibility_timeout_ms": 5000, "retention_ms": 3_600_000, "delay_ms": 500,
                "receive_wait_ms": 2000, "dead_letter_queue": dlq, "max_receives": 3, "replication": 1,
                "ack_mode": "quorum", "dedup_window_ms": 60_000}
    assert {k: attributes[k] for k in expected} == expected
    assert not attributes.get("fifo", False)  # only attributes that were given are stored

    fifo = fresh("fifo")
    assert ok(run(dmq, "queue", "create", fifo, "--fifo")).stdout == f"created queue {fifo} (id " \
        f"{json.loads(ok(run(dmq, 'queue', 'describe', fifo, '--json')).stdout)['id']}, 1 partition)\n"
    described = json.loads(ok(run(dmq, "queue", "describe", fifo, "--json")).stdout)
    assert described["attributes"]["fifo"] is True
    assert set(described["stats"]) >= {"count", "ready", "in_flight"}

    # idempotent with the same attributes; other attributes: QueueAlreadyExists, exit 1
    ok(run(dmq, "queue", "create", fifo, "--fifo"))
    failed(run(dmq, "queue", "create", fifo, "--partitions", "3"), 1, "QueueAlreadyExists")
    # a dead-letter queue needs --max-receives (and the reverse): usage errors
    assert run(dmq, "queue", "create", fresh(), "--dead-letter-queue", dlq).exit_code == 2
    assert run(dmq, "queue", "create", fresh(), "--max-receives", "2").exit_code == 2
    # the node validates the rest: InvalidRequest, exit 1
    failed(run(dmq, "queue", "create", fresh(), "--replication", "2"), 1, "InvalidRequest")
    failed(run(dmq, "queue", "create", fresh(), "--dead-letter-queue", fresh("missing"),
               "--max-receives", "1"), 3, "QueueNotFound")


def test_queue_update_maps_every_option_and_keeps_the_rest(dmq: LocalCluster) -> None:
    dlq, name = fresh("dlq"), fresh("upd")
    ok(run(dmq, "queue", "create", dlq))
    ok(run(dmq, "queue", "create", name, "--partitions", "2", "--fifo", "--max-messages", "100"))
    result = ok(run(dmq, "queue", "update", name, "--max-messages", "5000", "--max-message-bytes", "2048",
                    "--visibility-timeout", "5", "--retention", "3600", "--delay", "0.5", "--receive-wait", "2",
                    "--dead-letter-queue", dlq, "--max-receives", "3", "--ack-mode", "leader",
                    "--dedup-window", "60", "--json"))
    attributes = json.loads(result.stdout)["attributes"]
    expected = {"partitions": 2, "fifo": True, "max_messages": 5000, "max_message_bytes": 2048,
                "visibility_timeout_ms": 5000, "retention_ms": 3_600_000, "delay_ms": 500,
                "receive_wait_ms": 2000, "dead_letter_queue": dlq, "max_receives": 3, "ack_mode": "leader",
                "dedup_window_ms": 60_000}
    assert {k: attributes[k] for k in expected} == expected
    assert ok(run(dmq, "queue", "update", name, "--visibility-timeout", "7")).stdout.startswith(
        f"updated queue {name} (id ")
    described = json.loads(ok(run(dmq, "queue", "describe", name, "--json")).stdout)["attributes"]
    assert described == {**attributes, "visibility_timeout_ms": 7000}  # the others kept
    cleared = json.loads(ok(run(dmq, "queue", "update", name, "--no-dead-letter-queue", "--json")).stdout)
    assert cleared["attributes"]["dead_letter_queue"] is None and "max_receives" not in cleared["attributes"]
    # usage errors (exit 2): nothing to change, a fixed attribute, contradictory options
    assert run(dmq, "queue", "update", name).exit_code == 2
    assert run(dmq, "queue", "update", name, "--partitions", "3").exit_code == 2
    assert run(dmq, "queue", "update", name, "--no-dead-letter-queue", "--max-receives", "2").exit_code == 2
    # the node checks the queue's attributes whole: InvalidRequest, exit 1; a missing queue: exit 3
    failed(run(dmq, "queue", "update", name, "--max-receives", "2"), 1, "InvalidRequest")
    failed(run(dmq, "queue", "update", fresh("missing"), "--delay", "1"), 3, "QueueNotFound")


def test_queue_list_and_describe(dmq: LocalCluster) -> None:
    prefix = fresh("listing")
    names = [f"{prefix}-{i}" for i in range(3)]
    for name in names:
        ok(run(dmq, "queue", "create", name, "--visibility-timeout", "45"))
    assert ok(run(dmq, "queue", "list", "--prefix", prefix)).stdout.splitlines() == names
    assert json.loads(ok(run(dmq, "queue", "list", "--prefix", prefix, "--json")).stdout) == names
    assert set(names) <= set(ok(run(dmq, "queue", "list")).stdout.splitlines())
    assert ok(run(dmq, "queue", "list", "--prefix", "no-such-prefix-")).stdout == ""

    ok(run(dmq, "send", names[0], "one", "two"))
    text = ok(run(dmq, "queue", "describe", names[0])).stdout
    assert f"name     {names[0]}" in text
    assert "visibility_timeout_ms  45000 (45 s)" in text
    assert "PARTITION  LEADER" in text and dmq.addresses[0] in text
    assert "\nstats\n" in text and re.search(r"\n  count +2\n", text)
    info = json.loads(ok(run(dmq, "queue", "describe", names[0], "--json")).stdout)
    assert info["stats"]["count"] == 2 and info["partitions"][0]["leader"] == dmq.addresses[0]
    assert info["partitions"][0]["replicas"] == [dmq.addresses[0]]


def test_queue_delete_asks_first(dmq: LocalCluster, client: Client) -> None:
    name = fresh("del")
    ok(run(dmq, "queue", "create", name))
    declined = run(dmq, "queue", "delete", name, input="n\n")
    assert declined.exit_code == 1 and "Delete queue" in declined.output and "Aborted" in declined.output
    assert name in client.list_queues(name)
    no_answer = run(dmq, "queue", "delete", name)  # stdin at EOF: nothing confirmed
    assert no_answer.exit_code == 1 and name in client.list_queues(name)
    assert ok(run(dmq, "queue", "delete", name, input="y\n")).stdout.endswith(f"deleted queue {name}\n")
    assert client.list_queues(name) == []

    other = fresh("del")
    ok(run(dmq, "queue", "create", other))
    assert ok(run(dmq, "queue", "delete", other, "--yes")).stdout == f"deleted queue {other}\n"
    failed(run(dmq, "queue", "delete", other, "--yes"), 3, "QueueNotFound")


def test_queue_purge(dmq: LocalCluster, client: Client) -> None:
    name = fresh("purge")
    ok(run(dmq, "queue", "create", name))
    ok(run(dmq, "send", name, "a", "b", "c"))
    assert run(dmq, "queue", "purge", name, input="n\n").exit_code == 1
    assert client.get_queue(name).stats["count"] == 3
    purged = ok(run(dmq, "queue", "purge", name, input="y\n"))
    assert purged.stdout.endswith(f"purged 3 messages from {name}\n")
    ok(run(dmq, "send", name, "d"))
    assert json.loads(ok(run(dmq, "queue", "purge", name, "--yes", "--json")).stdout) == {"purged": 1}
    failed(run(dmq, "queue", "purge", fresh("missing"), "--yes"), 3, "QueueNotFound")


# ---------------------------------------------------------------------------------------------- send, receive


def test_send_arguments_and_receive(dmq: LocalCluster, client: Client) -> None:
    name = fresh("send")
    ok(run(dmq, "queue", "create", name))
    ids = ok(run(dmq, "send", name, "hello", "wörld", "--attribute", "color=red", "-a", "n=1",
                 "--group", "g1")).stdout.splitlines()
    assert len(ids) == 2 and all("." in i for i in ids)

    text = ok(run(dmq, "receive", name, "--max", "1", "--keep", "--visibility-timeout", "0")).stdout
    header, body = text.splitlines()[:2]
    assert header.startswith(f"{ids[0]}  receive_count=1  enqueued=20") and "group='g1'" in header
    assert "color=red" in header and "n=1" in header and body == "hello"

    messages = receive_all(dmq, name, 2)  # deleted after printing
    assert [m["body"] for m in messages] == ["hello", "wörld"]
    assert messages[0]["receive_count"] == 2 and messages[1]["receive_count"] == 1
    assert messages[0]["attributes"] == {"color": "red", "n": "1"} and messages[0]["group"] == "g1"
    assert {"id", "enqueued_at", "receipt"} <= set(messages[0])
    empty = ok(run(dmq, "receive", name, "--wait", "0.2"))
    assert empty.stdout == "" and "no messages" in empty.stderr
    assert ok(run(dmq, "receive", name, "--json")).stdout == ""
    assert client.get_queue(name).stats["count"] == 0


def test_send_quiet_json_batches_and_dedup(dmq: LocalCluster) -> None:
    name = fresh("batches")
    ok(run(dmq, "queue", "create", name, "--partitions", "2"))
    assert ok(run(dmq, "send", name, *[f"m{i}" for i in range(7)], "--batch", "3", "--quiet")).stdout == "7\n"
    sent = json.loads(ok(run(dmq, "send", name, "x", "y", "--json")).stdout)
    assert sent["sent"] == 2 and len(sent["ids"]) == 2
    assert json.loads(ok(run(dmq, "send", name, "z", "--json", "--quiet")).stdout) == {"sent": 1}
    assert sorted(m["body"] for m in receive_all(dmq, name, 10)) == sorted([f"m{i}" for i in range(7)] +
                                                                           ["x", "y", "z"])

    first = ok(run(dmq, "send", name, "once", "--dedup-id", "k1")).stdout
    assert ok(run(dmq, "send", name, "once again", "--dedup-id", "k1")).stdout == first
    assert [m["body"] for m in receive_all(dmq, name, 1)] == ["once"]
    too_many = run(dmq, "send", name, "a", "b", "--dedup-id", "k2")
    assert too_many.exit_code == 2 and "--dedup-id" in too_many.output


def test_send_stdin_and_files(dmq: LocalCluster, tmp_path: Path) -> None:
    name = fresh("stdin")
    ok(run(dmq, "queue", "create", name))
    # no BODY and stdin not a terminal: one message per line, empty lines skipped, CRLF handled
    assert len(ok(run(dmq, "send", name, input="a\nb\r\n\nc")).stdout.splitlines()) == 3
    assert [m["body"] for m in receive_all(dmq, name, 3)] == ["a", "b", "c"]
    # `-` reads stdin too; --whole sends it as one message
    ok(run(dmq, "send", name, "-", input="l1\nl2\n", env={}))
    assert [m["body"] for m in receive_all(dmq, name, 2)] == ["l1", "l2"]
    ok(run(dmq, "send", name, "--whole", input="l1\nl2\n"))
    assert [m["body"] for m in receive_all(dmq, name, 1)] == ["l1\nl2\n"]

    lines = tmp_path / "lines.txt"
    lines.write_text("\n".join(f"line {i}" for i in range(250)) + "\n")
    assert ok(run(dmq, "send", name, "--file", str(lines), "--batch", "100", "--quiet")).stdout == "250\n"
    assert [m["body"] for m in receive_all(dmq, name, 250)] == [f"line {i}" for i in range(250)]

    binary = tmp_path / "blob.bin"
    blob = bytes(range(256)) * 2
    binary.write_bytes(blob)
    ok(run(dmq, "send", name, "--file", str(binary), "--whole"))
    text = ok(run(dmq, "receive", name, "--keep", "--visibility-timeout", "0")).stdout
    assert text.splitlines()[1].startswith("b'\\x00\\x01")  # not UTF-8: its repr
    record = receive_all(dmq, name, 1)[0]
    assert "body" not in record and base64.b64decode(record["body_base64"]) == blob

    assert run(dmq, "send", name, "x", "--file", str(lines)).exit_code == 2
    assert run(dmq, "send", name, "x", "--whole").exit_code == 2
    assert run(dmq, "send", name, "--file", str(tmp_path / "missing.txt")).exit_code == 2
    empty = ok(run(dmq, "send", name, input=""))
    assert "nothing sent" in empty.stderr


def test_send_failures(dmq: LocalCluster) -> None:
    name = fresh("small")
    ok(run(dmq, "queue", "create", name, "--max-message-bytes", "10", "--max-messages", "2"))
    assert "nothing was sent" in failed(run(dmq, "send", name, "x" * 50), 1, "MessageTooLarge").stderr
    result = failed(run(dmq, "send", name, "a", "b", "c"), 1, "QueueFull")  # the third does not fit
    assert len(result.stdout.splitlines()) == 2  # the ids of the two that were sent
    assert "2 messages sent in all" in result.stderr
    fifo = fresh("fifo")
    ok(run(dmq, "queue", "create", fifo, "--fifo"))
    failed(run(dmq, "send", fifo, "late", "--delay", "1"), 1, "InvalidRequest")
    assert run(dmq, "send", name, "x", "--attribute", "novalue").exit_code == 2


# ---------------------------------------------------------------------------------------------- tail


def test_tail_drains_and_stops(dmq: LocalCluster, client: Client) -> None:
    name = fresh("tail")
    ok(run(dmq, "queue", "create", name))
    ok(run(dmq, "send", name, *[f"t{i}" for i in range(5)]))
    counted = json_lines(ok(run(dmq, "tail", name, "--count", "2", "--json")).stdout)
    assert [m["body"] for m in counted] == ["t0", "t1"]
    rest = ok(run(dmq, "tail", name, "--wait", "0.3", "--batch", "2")).stdout
    assert [line for line in rest.splitlines() if line.startswith("t")] == ["t2", "t3", "t4"]
    assert client.get_queue(name).stats["count"] == 0
    # --follow with --count returns once enough arrived
    ok(run(dmq, "send", name, "f1", "f2", "f3"))
    followed = json_lines(ok(run(dmq, "tail", name, "-f", "-n", "3", "--wait", "1", "--json")).stdout)
    assert [m["body"] for m in followed] == ["f1", "f2", "f3"]
    failed(run(dmq, "tail", fresh("missing"), "--wait", "0.2"), 3, "QueueNotFound")


def test_peek_prints_messages_and_their_state_without_receiving_them(dmq: LocalCluster, client: Client) -> None:
    name = fresh("peek")
    ok(run(dmq, "queue", "create", name))
    ok(run(dmq, "send", name, "p1", "p2"))
    (leased,) = client.receive(name, visibility_timeout=60)
    peeked = json_lines(ok(run(dmq, "peek", name, "--json")).stdout)
    assert [(m["body"], m["state"], m["receive_count"]) for m in peeked] == [("p1", "in_flight", 1),
                                                                            ("p2", "ready", 0)]
    assert peeked[0]["visible_at"] >= peeked[0]["enqueued_at"] + 60_000 and peeked[1]["visible_at"] is None
    assert "receipt" not in peeked[0]
    text = ok(run(dmq, "peek", name, "--max", "1")).stdout
    assert text.startswith(f"{leased.id}  receive_count=1  ") and "state=in_flight  visible=" in text
    assert "p1" in text and "p2" not in text
    assert [m.receive_count for m in client.receive(name, max_messages=10)] == [1]  # p2: its first delivery
    assert ok(run(dmq, "peek", name, "--partition", "0", "--json")).stdout.count("\n") == 2
    assert [m["body"] for m in json_lines(ok(run(dmq, "peek", name, "--after", leased.id, "--json")).stdout)] == ["p2"]
    failed(run(dmq, "peek", name, "--after", "nonsense"), 2)
    failed(run(dmq, "peek", name, "--partition", "1"), 1, "InvalidRequest")
    failed(run(dmq, "peek", fresh("missing")), 3, "QueueNotFound")
    empty = fresh("empty")
    ok(run(dmq, "queue", "create", empty))
    shown = ok(run(dmq, "peek", empty))
    assert shown.stdout == "" and "no messages" in shown.stderr


def test_tail_follow_stops_on_ctrl_c(dmq: LocalCluster) -> None:
    """A real process: SIGINT (Ctrl-C) during the long poll ends `dmq tail -f`: exit 0, no traceback."""
    name = fresh("ctrlc")
    ok(run(dmq, "queue", "create", name))
    ok(run(dmq, "send", name, "before"))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[2]),
                                                        os.environ.get("PYTHONPATH", "")])}
    # As from a terminal: a test run started in the background by a shell without job control inherits SIGINT
    # ignored, and the tail would inherit that too.
    proc = subprocess.Popen([sys.executable, "-m", "dmq_server.cli", "tail", name, "-f", "--wait", "20",
                             "--nodes", dmq.addresses[0]], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=env, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()  # the header of the first message: it is in its long poll next
        assert b"receive_count=1" in first, first
        assert proc.stdout.readline() == b"before\n"
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    assert proc.returncode == 0, err
    assert b"Traceback" not in err and b"stopped after 1 message" in err


# ------------------------------------------------------------------------------------------ redrive, cluster


def test_redrive(dmq: LocalCluster, client: Client) -> None:
    dlq, source, other = fresh("rdlq"), fresh("rsrc"), fresh("rother")
    ok(run(dmq, "queue", "create", dlq))
    ok(run(dmq, "queue", "create", other))
    ok(run(dmq, "queue", "create", source, "--dead-letter-queue", dlq, "--max-receives", "1"))
    ok(run(dmq, "send", source, "r1", "r2"))
    # received once and not deleted, visible again at once: the next advance dead-letters them
    receive_all_kept = ok(run(dmq, "receive", source, "--max", "10", "--keep", "--visibility-timeout", "0"))
    assert receive_all_kept.stdout.count("receive_count=1") == 2
    deadline = time.monotonic() + 20
    while client.get_queue(dlq).stats.get("count", 0) < 2:
        client.receive(source, max_messages=10, wait_seconds=0.2)  # advances the partition
        assert time.monotonic() < deadline, "messages did not reach the dead-letter queue"
    assert ok(run(dmq, "redrive", dlq, "--max", "1")).stdout == "moved 1, skipped 0\n"
    moved = json.loads(ok(run(dmq, "redrive", dlq, "--to", other, "--json")).stdout)
    assert moved == {"moved": 1, "skipped": 0}
    bodies = [m["body"] for queue in (source, other) for m in receive_all(dmq, queue, 1)]
    assert sorted(bodies) == ["r1", "r2"]
    failed(run(dmq, "redrive", dlq, "--to", fresh("missing")), 3, "QueueNotFound")


def test_cluster_status(dmq: LocalCluster) -> None:
    name = fresh("status")
    ok(run(dmq, "queue", "create", name, "--partitions", "2"))
    text = ok(run(dmq, "cluster", "status")).stdout
    node_id = dmq.node_ids[0]
    assert f"metadata leader  {node_id}" in text
    assert "ID     CLIENT" in text and dmq.addresses[0] in text and "yes" in text
    partition_lines = [line for line in text.splitlines() if line.strip().startswith(name + " ")]
    assert len(partition_lines) == 2 and all(node_id in line for line in partition_lines)
    status = json.loads(ok(run(dmq, "cluster", "status", "--json")).stdout)
    assert status["metadata_leader"] == node_id and status["nodes"][0]["alive"] is True
    assert {(p["queue"], p["partition"]) for p in status["partitions"]} >= {(name, 0), (name, 1)}


# ---------------------------------------------------------------------------------------------- errors


def test_unknown_queue_is_exit_3(dmq: LocalCluster) -> None:
    missing = fresh("missing")
    for args in (("queue", "describe", missing), ("send", missing, "x"), ("receive", missing),
                 ("redrive", missing)):
        result = failed(run(dmq, *args), 3, "QueueNotFound")
        assert missing in result.stderr


def test_unreachable_node_is_exit_4(dmq: LocalCluster) -> None:
    port = free_ports(1)[0]  # nobody listens there
    started = time.monotonic()
    result = CliRunner().invoke(main, ["queue", "list", "--nodes", f"127.0.0.1:{port}", "--timeout", "0.5"])
    assert time.monotonic() - started < 10
    failed(result, 4, "Unavailable")
    assert f"no node reachable at 127.0.0.1:{port} (connection refused)" in result.stderr
    # the environment names the nodes too; several nodes, all down
    ports = free_ports(2)
    result = CliRunner().invoke(main, ["send", "q", "x", "--timeout", "0.5"],
                                env={"DMQ_NODES": ",".join(f"127.0.0.1:{p}" for p in ports)})
    failed(result, 4, "Unavailable")
    assert f"127.0.0.1:{ports[0]}, 127.0.0.1:{ports[1]}" in result.stderr
    # one reachable node among unreachable ones is enough
    ok(CliRunner().invoke(main, ["queue", "list", "--timeout", "5", "--nodes",
                                 f"127.0.0.1:{ports[0]},{dmq.addresses[0]}"]))


def test_usage_errors_are_exit_2(dmq: LocalCluster) -> None:
    assert run(dmq, "queue", "list", nodes="localhost").exit_code == 2
    assert run(dmq, "receive", "q", "--max", "0").exit_code == 2
    assert run(dmq, "send", "q", "x", "--batch", "1001").exit_code == 2
    assert run(dmq, "queue", "create", "q", "--ack-mode", "sometimes").exit_code == 2


# ------------------------------------------------------------------------------------------- TLS and tokens

ADMIN_TOKEN = "admin-token-0123456789abcdef"
READER_TOKEN = "reader-token-0123456789abcdef"


@pytest.fixture(scope="module")
def secure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalCluster, Path]]:
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl tool to make a certificate")
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "node.crt", directory / "node.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
                    "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out",
                    str(cert)], check=True, capture_output=True, timeout=60)
    auth = {"anonymous": False, "principals": [
        {"name": "admin", "token": ADMIN_TOKEN,
         "permissions": [{"queues": "*", "actions": ["admin", "send", "receive"]}]},
        {"name": "reader", "token": READER_TOKEN, "permissions": [{"queues": "*", "actions": ["receive"]}]}]}
    with cluster(1, auth=auth, tls={"cert_file": str(cert), "key_file": str(key)},
                 client_tls=ssl.create_default_context(cafile=str(cert))) as local:
        yield local, cert


def test_tls_and_auth_exit_codes(secure: tuple[LocalCluster, Path]) -> None:
    local, cert = secure
    address = local.addresses[0]
    name = fresh("secure")

    def invoke(*args: str, token: str | None = ADMIN_TOKEN, tls: bool = True) -> Result:
        extra = ["--nodes", address, "--timeout", "5"] + (["--tls-ca", str(cert)] if tls else [])
        env = {"DMQ_TOKEN": token} if token else {"DMQ_TOKEN": ""}
        return CliRunner().invoke(main, [*args, *extra], env=env)

    ok(invoke("queue", "create", name))
    ok(invoke("send", name, "secret"))
    failed(invoke("queue", "list", token=None), 5, "Unauthorized")
    failed(invoke("queue", "list", token="wrong-token-0123456789"), 5, "Unauthorized")
    failed(invoke("send", name, "x", token=READER_TOKEN), 5, "Forbidden")
    assert [m["body"] for m in json_lines(ok(invoke("receive", name, "--json", token=READER_TOKEN)).stdout)] \
        == ["secret"]
    plain = failed(invoke("queue", "list", tls=False), 4, "Unavailable")
    assert "TLS" in plain.stderr
    not_a_ca = Path(str(cert) + ".txt")
    not_a_ca.write_text("not a certificate\n")
    bad_ca = CliRunner().invoke(main, ["queue", "list", "--nodes", address, "--tls-ca", str(not_a_ca)])
    assert bad_ca.exit_code == 2 and "cannot load CA certificates" in bad_ca.output


def test_bench_accounts_for_every_message(dmq: LocalCluster, client: Client) -> None:
    """`dmq bench --json` end to end on a small run: every phase ran, and every acknowledged message came back."""
    result = CliRunner().invoke(main, ["bench", "--nodes", dmq.addresses[0], "--messages", "3000", "--batch", "50",
                                       "--producers", "4", "--consumers", "4", "--receive-batch", "30",
                                       "--partitions", "2", "--latency-sends", "50", "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    figures = json.loads(result.output)
    assert figures["messages"] == 3050 and figures["lost"] == 0 and figures["send_failed"] == 0
    assert figures["receive_batch"] == 30 and figures["duplicates"] == 0
    assert figures["send_msgs_per_s"] > 0 and figures["receive_msgs_per_s"] > 0
    assert 0 < figures["send_p50_ms"] <= figures["send_p99_ms"]
    assert sum(figures["send_latency_histogram_ms"].values()) == 50
    assert not [q for q in client.list_queues() if q.startswith("bench-")]  # the bench queue is deleted


@pytest.mark.parametrize("option, value", [("--batch", "0"), ("--receive-batch", "1001")])
def test_bench_refuses_batches_out_of_range(option: str, value: str) -> None:
    result = CliRunner().invoke(main, ["bench", "--nodes", "127.0.0.1:1", option, value])
    assert result.exit_code == 2 and option in result.output and "1 to 1000" in result.output
