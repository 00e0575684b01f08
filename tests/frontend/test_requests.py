"""Request validation (dmq_server.frontend.requests.parse): every operation, field, limit and rule."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dmq_client import protocol
from dmq_client.protocol import ErrorCode
from dmq_server.frontend import requests as rq
from dmq_server.frontend.requests import RequestError, parse
from dmq_server.store import limits
from dmq_server.store.config import INT_RANGES

RECEIPT = protocol.receipt(7, 2, 41, 3)
HUGE = 10**5000  # str() and repr() of it raise ValueError


def ident(value: Any) -> str:
    """A pytest id that does not fail on HUGE."""
    try:
        return repr(value)[:30]
    except ValueError:
        return "huge-int"


def refused(op: Any, args: Any, **kwargs: Any) -> RequestError:
    with pytest.raises(RequestError) as caught:
        parse(op, args, **kwargs)
    return caught.value


def invalid(op: Any, args: Any, field: str, **kwargs: Any) -> str:
    err = refused(op, args, **kwargs)
    assert err.code is ErrorCode.INVALID_REQUEST, err.message
    assert field in err.message, err.message
    assert err.leader is None
    return err.message


def create(**attributes: Any) -> rq.CreateQueue:
    return parse("create_queue", {"name": "q", "attributes": attributes})


# ---------------------------------------------------------------------------------------------- valid forms

def test_create_queue_minimal():
    request = parse("create_queue", {"name": "orders"})
    assert request == rq.CreateQueue("orders", rq.QueueAttributes())
    attributes = request.attributes
    assert (attributes.partitions, attributes.replication, attributes.ack_mode, attributes.receive_wait_ms,
            attributes.dead_letter_queue, attributes.store) == (1, None, "quorum", 0, None, ())
    assert parse("create_queue", {"name": "orders", "attributes": None}) == request
    assert parse("create_queue", {"name": "orders", "attributes": {}}) == request


def test_create_queue_full():
    store = {"fifo": True, "max_messages": 5000, "max_message_bytes": 1024, "retention_ms": 60_000,
             "visibility_timeout_ms": 0, "delay_ms": 900_000, "max_receives": 5, "dedup_window_ms": 86_400_000}
    request = parse("create_queue", {"name": "Q_1-x", "attributes": {
        "partitions": 8, "replication": 5, "ack_mode": "leader", "receive_wait_ms": 20_000,
        "dead_letter_queue": "dlq", **store}})
    attributes = request.attributes
    assert request.name == "Q_1-x"
    assert (attributes.partitions, attributes.replication, attributes.ack_mode, attributes.receive_wait_ms,
            attributes.dead_letter_queue) == (8, 5, "leader", 20_000, "dlq")
    assert attributes.store == tuple(sorted(store.items()))
    assert attributes.to_dict() == {"partitions": 8, "replication": 5, "ack_mode": "leader",
                                    "receive_wait_ms": 20_000, "dead_letter_queue": "dlq", **store}


@pytest.mark.parametrize("op", ["delete_queue", "get_queue", "lookup"])
def test_queue_ops(op):
    assert parse(op, {"name": "a" * 80}) == rq.QueueOp(op, "a" * 80)


def test_purge_queue():
    assert parse("purge_queue", {"name": "q"}) == rq.PurgeQueue("q")
    assert parse("purge_queue", {"name": "q", "purge_id": "é" * 64}) == rq.PurgeQueue("q", "é" * 64)
    for bad in ("", "x" * 129, b"id", 7, "\ud800"):
        with pytest.raises(rq.RequestError, match="purge_id"):
            parse("purge_queue", {"name": "q", "purge_id": bad})


def test_list_queues():
    assert parse("list_queues", {}) == rq.ListQueues("")
    assert parse("list_queues", None) == rq.ListQueues("")
    assert parse("list_queues", {"prefix": "or"}) == rq.ListQueues("or")
    assert parse("list_queues", {"prefix": "p" * 80}) == rq.ListQueues("p" * 80)


def test_send_minimal():
    request = parse("send", {"queue": "q", "messages": [{"body": b"x"}]})
    assert request == rq.Send("q", (rq.OutgoingMessage(b"x", None, None, None, None),), None)
    assert list(request.messages[0]) == [b"x", None, None, None, None]  # the store's enqueue entry, as it is


def test_send_full():
    attributes = {"s": "v", "b": b"\x00", "i": -2**63, "u": 2**64 - 1, "f": 1.5, "t": True, "n" * 128: 0}
    request = parse("send", {"queue": "q", "partition": 1023, "messages": [
        {"body": b"\x00\xff", "attributes": attributes, "delay_ms": 900_000, "dedup_id": "d" * 128,
         "group": "\u00e9" * 64},
        {"body": "", "attributes": {}, "delay_ms": 0, "dedup_id": None, "group": None},
    ]})
    first, second = request.messages
    assert request.partition == 1023
    assert first == rq.OutgoingMessage(b"\x00\xff", attributes, 900_000, "d" * 128, "\u00e9" * 64)
    assert second == rq.OutgoingMessage(b"", None, 0, None, None)


def test_send_batch_id():
    request = parse("send", {"queue": "q", "partition": 0, "batch_id": "b" * 128, "messages": [{"body": b"x"}]})
    assert request == rq.Send("q", (rq.OutgoingMessage(b"x", None, None, None, None),), 0, "b" * 128)
    assert parse("send", {"queue": "q", "partition": 3, "batch_id": "\u00e9" * 64,
                          "messages": [{"body": b"x"}]}).batch_id == "\u00e9" * 64  # 128 bytes
    assert parse("send", {"queue": "q", "batch_id": None, "messages": [{"body": b"x"}]}).batch_id is None
    assert parse("send", {"queue": "q", "messages": [{"body": b"x"}]}).batch_id is None


@pytest.mark.parametrize("args", [{}, {"partition": None}])
def test_send_batch_id_needs_an_explicit_partition(args):
    message = invalid("send", {"queue": "q", "batch_id": "b", "messages": [{"body": b"x"}], **args}, "'batch_id'")
    assert "'partition'" in message


@pytest.mark.parametrize("bad", ["", "k" * 129, "\u00e9" * 65, "\U0001f600" * 33, "\ud800", "a\udc00", 5, b"k",
                                 ["k"], True, {"k": 1}, 1.5])
def test_send_batch_id_values(bad):
    invalid("send", {"queue": "q", "partition": 0, "batch_id": bad, "messages": [{"body": b"x"}]}, "'batch_id'")


def test_send_text_body_is_utf8():
    request = parse("send", {"queue": "q", "messages": [{"body": "h\u00e9llo \U0001f600"}]})
    assert request.messages[0].body == "h\u00e9llo \U0001f600".encode("utf-8")
    assert type(request.messages[0].body) is bytes


def test_send_batch_limit():
    batch = [{"body": b""}] * limits.MAX_BATCH_ENTRIES
    assert len(parse("send", {"queue": "q", "messages": batch}).messages) == 1000
    invalid("send", {"queue": "q", "messages": batch + [{"body": b""}]}, "'messages'")


def test_receive():
    assert parse("receive", {"queue": "q"}) == rq.Receive("q", 1, None, None, None)
    assert parse("receive", {"queue": "q", "max_messages": 1000, "wait_ms": 20_000,
                             "visibility_timeout_ms": 43_200_000, "partition": 0}) == \
        rq.Receive("q", 1000, 20_000, 43_200_000, 0)
    assert parse("receive", {"queue": "q", "max_messages": None, "wait_ms": 0, "visibility_timeout_ms": 0,
                             "partition": None}) == rq.Receive("q", 1, 0, 0, None)


def test_peek():
    assert parse("peek", {"queue": "q"}) == rq.Peek("q", 1, None)
    assert parse("peek", {"queue": "q", "max_messages": 1000, "partition": 3, "max_bytes": 1}) == \
        rq.Peek("q", 1000, 3, 1)
    assert parse("peek", {"queue": "q", "max_messages": None, "partition": None}) == rq.Peek("q", 1, None)
    assert parse("peek", {"queue": "q", "after": "3.17"}) == rq.Peek("q", 1, 3, after=17)
    assert parse("peek", {"queue": "q", "after": "3.17", "partition": 3}) == rq.Peek("q", 1, 3, after=17)
    assert parse("peek", {"queue": "q", "after": None}) == rq.Peek("q", 1, None)
    for bad in ("3.17.1", "3", "", 17, "3.0", ["3.17"], "1024.1"):
        invalid("peek", {"queue": "q", "after": bad}, "'after'")
    invalid("peek", {"queue": "q", "after": "3.17", "partition": 2}, "'after'")


def test_delete():
    request = parse("delete", {"queue": "q", "receipts": [RECEIPT, "garbage", 5, None, "7.2.0.3"]})
    assert request.queue == "q"
    assert request.receipts[0] == rq.Receipt(7, 2, 41, 3, RECEIPT)
    assert request.receipts[1:] == (None, None, None, None)  # reported per entry as InvalidReceipt


def test_change_visibility():
    request = parse("change_visibility", {"queue": "q", "entries": [[RECEIPT, 0], ["nope", 43_200_000]]})
    assert request.entries == ((rq.Receipt(7, 2, 41, 3, RECEIPT), 0), (None, 43_200_000))


def test_redrive():
    assert parse("redrive", {"queue": "dlq"}) == rq.Redrive("dlq", None, 1000)
    assert parse("redrive", {"queue": "dlq", "to": "q", "max_messages": 100_000}) == rq.Redrive("dlq", "q", 100_000)
    assert parse("redrive", {"queue": "dlq", "to": None, "max_messages": 1}) == rq.Redrive("dlq", None, 1)


def test_cluster_status():
    assert parse("cluster_status", {}) == rq.ClusterStatus()
    assert parse("cluster_status", None) == rq.ClusterStatus()


# ---------------------------------------------------------------------------------------------- operation and envelope

REQUIRED = {"create_queue": {"name": "q"}, "update_queue": {"name": "q", "attributes": {"delay_ms": 0}},
            "delete_queue": {"name": "q"}, "get_queue": {"name": "q"},
            "list_queues": {}, "purge_queue": {"name": "q"}, "send": {"queue": "q", "messages": [{"body": b""}]},
            "receive": {"queue": "q"}, "peek": {"queue": "q"}, "delete": {"queue": "q", "receipts": [RECEIPT]},
            "change_visibility": {"queue": "q", "entries": [[RECEIPT, 1]]}, "redrive": {"queue": "q"},
            "lookup": {"name": "q"}, "cluster_status": {}}


@pytest.mark.parametrize("op", ["nope", "", "SEND", " send", "send\x00", None, 5, HUGE, -HUGE, 1.5, True, b"send",
                                ["send"], {"op": "send"}], ids=ident)
def test_unknown_operation(op):
    err = refused(op, {})
    assert err.code is ErrorCode.UNKNOWN_OPERATION
    assert "create_queue" in err.message and len(err.message) < 300


def test_every_operation_is_known():
    assert set(rq.OPERATIONS) == set(rq.PERMISSION) == set(REQUIRED)
    for op, args in REQUIRED.items():
        assert isinstance(parse(op, args), RESULT_TYPES)


@pytest.mark.parametrize("args", [[], "x", 5, b"{}", [["queue", "q"]], True])
@pytest.mark.parametrize("op", rq.OPERATIONS)
def test_args_must_be_a_map(op, args):
    invalid(op, args, "'args'")


@pytest.mark.parametrize("key", ["bogus", "Queue", "", b"queue", 5, HUGE, None, 1.5], ids=ident)
@pytest.mark.parametrize("op", rq.OPERATIONS)
def test_unknown_fields_are_rejected(op, key):
    message = invalid(op, {**REQUIRED[op], key: 1}, "unknown field")
    if isinstance(key, str) and key:
        assert repr(key) in message


def test_unknown_fields_in_a_message_and_in_attributes():
    assert "'priority'" in invalid("send", {"queue": "q", "messages": [{"body": b"", "priority": 1}]}, "message")
    assert "'colour'" in invalid("create_queue", {"name": "q", "attributes": {"colour": 1}}, "attributes")
    assert "'id'" in invalid("create_queue", {"name": "q", "attributes": {"id": 1}}, "attributes")


# ---------------------------------------------------------------------------------------------- queue names

BAD_NAMES = ["", "a" * 81, "a b", "a.b", "a/b", "\u00e4", "q\n", "q\x00", 5, None, b"q", ["q"], True]
NAME_FIELDS = [
    ("create_queue", {}, "name"), ("update_queue", {"attributes": {"delay_ms": 1}}, "name"),
    ("delete_queue", {}, "name"), ("get_queue", {}, "name"),
    ("purge_queue", {}, "name"), ("lookup", {}, "name"),
    ("send", {"messages": [{"body": b""}]}, "queue"), ("receive", {}, "queue"), ("peek", {}, "queue"),
    ("delete", {"receipts": [RECEIPT]}, "queue"), ("change_visibility", {"entries": [[RECEIPT, 1]]}, "queue"),
    ("redrive", {}, "queue"), ("redrive", {"queue": "q"}, "to"),
]


@pytest.mark.parametrize("name", BAD_NAMES, ids=ident)
@pytest.mark.parametrize(("op", "base", "field"), NAME_FIELDS, ids=lambda v: v if isinstance(v, str) else "")
def test_queue_name_fields(op, base, field, name):
    if field == "to" and name is None:
        return  # 'to' is optional
    invalid(op, {**base, field: name}, f"'{field}'")


def test_queue_name_edges():
    for name in ("a", "a" * 80, "A-Z_a-z-0-9", "-", "_"):
        assert parse("get_queue", {"name": name}).name == name


def test_missing_required_fields():
    invalid("create_queue", {}, "'name'")
    invalid("update_queue", {"name": "q"}, "'attributes'")
    invalid("send", {"queue": "q"}, "'messages'")
    invalid("send", {"messages": [{"body": b""}]}, "'queue'")
    invalid("receive", {}, "'queue'")
    invalid("peek", {}, "'queue'")
    invalid("delete", {"queue": "q"}, "'receipts'")
    invalid("change_visibility", {"queue": "q"}, "'entries'")
    invalid("redrive", {}, "'queue'")


# ---------------------------------------------------------------------------------------------- integer fields

INT_FIELDS = [  # (op, base args, where the field goes, field, low, high)
    ("receive", {"queue": "q"}, None, "max_messages", 1, 1000),
    ("receive", {"queue": "q"}, None, "wait_ms", 0, 20_000),
    ("receive", {"queue": "q"}, None, "visibility_timeout_ms", 0, 43_200_000),
    ("receive", {"queue": "q"}, None, "partition", 0, 1023),
    ("receive", {"queue": "q"}, None, "max_bytes", 1, 3 << 20),
    ("peek", {"queue": "q"}, None, "max_messages", 1, 1000),
    ("peek", {"queue": "q"}, None, "partition", 0, 1023),
    ("peek", {"queue": "q"}, None, "max_bytes", 1, 3 << 20),
    ("send", {"queue": "q", "messages": [{"body": b""}]}, None, "partition", 0, 1023),
    ("send", {"queue": "q"}, "message", "delay_ms", 0, 900_000),
    ("redrive", {"queue": "q"}, None, "max_messages", 1, 100_000),
    ("create_queue", {"name": "q"}, "attributes", "partitions", 1, 64),
    ("create_queue", {"name": "q"}, "attributes", "receive_wait_ms", 0, 20_000),
    *[("create_queue", {"name": "q"}, "attributes", name, low, high) for name, (low, high) in INT_RANGES.items()],
    ("update_queue", {"name": "q"}, "attributes", "receive_wait_ms", 0, 20_000),
    *[("update_queue", {"name": "q"}, "attributes", name, low, high) for name, (low, high) in INT_RANGES.items()],
]


def _with(base: dict, where: str | None, field: str, value: Any) -> dict:
    if where == "message":
        return {**base, "messages": [{"body": b"", field: value}]}
    if where == "attributes":
        return {**base, "attributes": {field: value}}
    return {**base, field: value}


@pytest.mark.parametrize(("op", "base", "where", "field", "low", "high"), INT_FIELDS,
                         ids=[f"{f[0]}.{f[3]}" for f in INT_FIELDS])
def test_integer_fields(op, base, where, field, low, high):
    for bad in (low - 1, high + 1, -2**63 - 1, 2**64, HUGE, -HUGE, float(low), float("nan"), True, False, str(low),
                [low], {"v": low}, b"1"):
        message = invalid(op, _with(base, where, field, bad), f"'{field}'")
        assert str(low) in message and str(high) in message
    for good in (low, high, (low + high) // 2):
        if field == "max_receives" and good and op == "create_queue":
            continue  # needs a dead-letter queue: tested below (an update's is checked with the queue's own)
        parse(op, _with(base, where, field, good))


def test_partitions_limit_follows_the_node_config():
    invalid("create_queue", {"name": "q", "attributes": {"partitions": 65}}, "'partitions'")
    assert parse("create_queue", {"name": "q", "attributes": {"partitions": 65}},
                 max_partitions=1024).attributes.partitions == 65
    invalid("create_queue", {"name": "q", "attributes": {"partitions": 2}}, "'partitions'", max_partitions=1)


def test_null_optional_integers_mean_the_default():
    for name in INT_RANGES:
        attributes = create(**{name: None}).attributes
        assert attributes.store == ()  # not a None in the partition's configuration
        assert name not in attributes.to_dict()
    assert create(partitions=None, receive_wait_ms=None).attributes == rq.QueueAttributes()
    assert parse("redrive", {"queue": "q", "max_messages": None}).max_messages == 1000


# ---------------------------------------------------------------------------------------------- attributes rules

@pytest.mark.parametrize("value", [3, 1, 5])
def test_replication_accepts_1_3_5(value):
    assert create(replication=value).attributes.replication == value


@pytest.mark.parametrize("value", [0, 2, 4, 6, 7, -1, True, 3.0, "3", [3], HUGE], ids=ident)
def test_replication_rejects(value):
    invalid("create_queue", {"name": "q", "attributes": {"replication": value}}, "'replication'")


def test_ack_mode():
    assert create(ack_mode="quorum").attributes.ack_mode == "quorum"
    assert create(ack_mode="leader").attributes.ack_mode == "leader"
    assert create(ack_mode=None).attributes.ack_mode == "quorum"  # null is the default, as for every attribute
    for value in ("QUORUM", "fast", "", 1, ["leader"], b"leader"):
        invalid("create_queue", {"name": "q", "attributes": {"ack_mode": value}}, "'ack_mode'")


def test_fifo():
    assert create(fifo=True).attributes.store == (("fifo", True),)
    assert create(fifo=False).attributes.store == (("fifo", False),)
    assert create(fifo=None).attributes.store == ()
    for value in (1, 0, "true", [True]):
        invalid("create_queue", {"name": "q", "attributes": {"fifo": value}}, "'fifo'")


def test_dead_letter_queue_and_max_receives_go_together():
    attributes = create(dead_letter_queue="dlq", max_receives=1).attributes
    assert attributes.dead_letter_queue == "dlq" and dict(attributes.store)["max_receives"] == 1
    assert dict(create(dead_letter_queue="dlq", max_receives=1000).attributes.store)["max_receives"] == 1000
    invalid("create_queue", {"name": "q", "attributes": {"max_receives": 3}}, "'dead_letter_queue'")
    invalid("create_queue", {"name": "q", "attributes": {"dead_letter_queue": "dlq"}}, "'max_receives'")
    invalid("create_queue", {"name": "q", "attributes": {"dead_letter_queue": "dlq", "max_receives": 0}},
            "'max_receives'")
    invalid("create_queue", {"name": "q", "attributes": {"dead_letter_queue": "dlq", "max_receives": None}},
            "'max_receives'")
    assert dict(create(max_receives=0).attributes.store) == {"max_receives": 0}
    assert create(dead_letter_queue=None).attributes.dead_letter_queue is None
    for name in BAD_NAMES:
        if name is not None:
            invalid("create_queue", {"name": "q", "attributes": {"dead_letter_queue": name, "max_receives": 1}},
                    "'dead_letter_queue'")


@pytest.mark.parametrize("value", [[], [["partitions", 2]], "x", 1, True, b""])
def test_attributes_must_be_a_map(value):
    invalid("create_queue", {"name": "q", "attributes": value}, "'attributes'")
    invalid("update_queue", {"name": "q", "attributes": value}, "'attributes'")


def update(**changes: Any) -> rq.UpdateQueue:
    return parse("update_queue", {"name": "q", "attributes": changes})


def test_update_queue_takes_the_changeable_attributes_each_checked_alone():
    changes = {"ack_mode": "leader", "receive_wait_ms": 20_000, "dead_letter_queue": "dlq", "max_receives": 3,
               "max_messages": 7, "max_message_bytes": 1024, "retention_ms": 60_000, "visibility_timeout_ms": 0,
               "delay_ms": 900_000, "dedup_window_ms": 1_000}
    assert set(changes) == set(rq.CHANGEABLE_ATTRIBUTES)
    assert update(**changes) == rq.UpdateQueue("q", tuple(sorted(changes.items())))
    # Alone: the pairing of a dead-letter queue with max_receives is checked against the queue's attributes.
    assert update(max_receives=5).changes == (("max_receives", 5),)
    assert update(dead_letter_queue=None, max_receives=None).changes == (("dead_letter_queue", None),
                                                                         ("max_receives", None))
    for name in rq.FIXED_ATTRIBUTES:
        message = invalid("update_queue", {"name": "q", "attributes": {name: 3, "delay_ms": 0}}, f"'{name}'")
        assert "cannot change" in message
    invalid("update_queue", {"name": "q", "attributes": {}}, "'attributes'")
    invalid("update_queue", {"name": "q", "attributes": {"colour": 1}}, "'colour'")
    invalid("update_queue", {"name": "q", "attributes": {"ack_mode": "fast"}}, "'ack_mode'")
    invalid("update_queue", {"name": "q", "attributes": {"dead_letter_queue": "a b"}}, "'dead_letter_queue'")


def test_updated_attributes_are_the_queue_s_own_with_the_changes_checked_whole():
    current = create(partitions=4, max_messages=100, visibility_timeout_ms=5_000).attributes.to_dict()
    current["replication"] = 3
    changed = rq.updated_attributes(current, update(visibility_timeout_ms=9_000, delay_ms=10).changes)
    assert changed == {**current, "visibility_timeout_ms": 9_000, "delay_ms": 10}
    assert rq.updated_attributes(current, update(max_messages=100).changes) == current  # no change at all
    # null: back to the default, stored as create_queue stores a default (left out)
    reset = rq.updated_attributes(current, update(visibility_timeout_ms=None, ack_mode=None).changes)
    assert "visibility_timeout_ms" not in reset and reset["ack_mode"] == "quorum"
    with pytest.raises(RequestError, match="'dead_letter_queue'"):
        rq.updated_attributes(current, update(max_receives=3).changes)
    with_dlq = rq.updated_attributes(current, update(dead_letter_queue="dlq", max_receives=3).changes)
    assert (with_dlq["dead_letter_queue"], with_dlq["max_receives"]) == ("dlq", 3)
    assert rq.updated_attributes(with_dlq, update(max_receives=9).changes)["max_receives"] == 9
    with pytest.raises(RequestError, match="'max_receives'"):
        rq.updated_attributes(with_dlq, update(max_receives=None).changes)
    cleared = rq.updated_attributes(with_dlq, update(dead_letter_queue=None, max_receives=None).changes)
    assert cleared == current


# ---------------------------------------------------------------------------------------------- send fields

def send(*messages: Any, **args: Any) -> rq.Send:
    return parse("send", {"queue": "q", "messages": list(messages), **args})


def send_invalid(message: Any, field: str) -> str:
    return invalid("send", {"queue": "q", "messages": [message]}, field)


@pytest.mark.parametrize("messages", [[], None, {"body": b""}, "body", b"", [{"body": b""}] * 1001])
def test_messages_must_be_a_list_of_1_to_1000(messages):
    invalid("send", {"queue": "q", "messages": messages}, "'messages'")


@pytest.mark.parametrize("message", [None, b"x", "x", [b"x"], 5])
def test_message_must_be_a_map(message):
    send_invalid(message, "message")


@pytest.mark.parametrize("body", [None, 5, 1.5, True, [b"x"], {"b": 1}, bytearray(b"x"), "\ud800", "a\udfffb"],
                         ids=repr)
def test_body_must_be_bytes_or_text(body):
    send_invalid({"body": body}, "'body'")


def test_body_is_required():
    send_invalid({}, "'body'")
    send_invalid({"attributes": {"a": 1}}, "'body'")


@pytest.mark.parametrize("field", ["dedup_id", "group"])
def test_keys(field):
    assert getattr(send({"body": b"", field: "k" * 128}).messages[0], field) == "k" * 128
    assert getattr(send({"body": b"", field: "\u00e9" * 64}).messages[0], field) == "\u00e9" * 64  # 128 bytes
    assert getattr(send({"body": b"", field: "\U0001f600" * 32}).messages[0], field) == "\U0001f600" * 32
    for bad in ("", "k" * 129, "\u00e9" * 65, "\U0001f600" * 33, "\ud800", "a\udc00", 5, b"k", ["k"], True):
        send_invalid({"body": b"", field: bad}, f"'{field}'")


def test_message_attributes():
    sixteen = {f"a{i}": i for i in range(16)}
    assert send({"body": b"", "attributes": sixteen}).messages[0].attributes == sixteen
    assert send({"body": b"", "attributes": None}).messages[0].attributes is None
    assert send({"body": b"", "attributes": {}}).messages[0].attributes is None
    for bad in ({**sixteen, "a16": 0}, [], [["a", 1]], "a=1", 5, True):
        send_invalid({"body": b"", "attributes": bad}, "'attributes'")
    for bad_name in ("", "n" * 129, 5, b"name", None, HUGE):
        send_invalid({"body": b"", "attributes": {bad_name: 1}}, "attribute names")
    for bad_value in (None, [1], {"x": 1}, 2**64, -2**63 - 1, HUGE):
        send_invalid({"body": b"", "attributes": {"name": bad_value}}, "'name'")


# ---------------------------------------------------------------------------------------------- receipts

@pytest.mark.parametrize("receipts", [[], None, RECEIPT, {"r": RECEIPT}, [RECEIPT] * 1001])
def test_receipts_must_be_a_list_of_1_to_1000(receipts):
    invalid("delete", {"queue": "q", "receipts": receipts}, "'receipts'")


def test_a_thousand_receipts():
    assert len(parse("delete", {"queue": "q", "receipts": [RECEIPT] * 1000}).receipts) == 1000


@pytest.mark.parametrize("entries", [[], None, [RECEIPT, 1], [[RECEIPT, 1]] * 1001])
def test_entries_must_be_a_list_of_1_to_1000(entries):
    invalid("change_visibility", {"queue": "q", "entries": entries}, "entr")


@pytest.mark.parametrize("entry", [RECEIPT, [RECEIPT], [RECEIPT, 1, 2], {"receipt": RECEIPT}, (RECEIPT, 1), None],
                         ids=repr)
def test_change_visibility_entry_shape(entry):
    invalid("change_visibility", {"queue": "q", "entries": [entry]}, "entry")


@pytest.mark.parametrize("timeout", [-1, 43_200_001, 1.0, True, None, "1", HUGE], ids=ident)
def test_change_visibility_timeout(timeout):
    invalid("change_visibility", {"queue": "q", "entries": [[RECEIPT, timeout]]}, "visibility_timeout_ms")


def test_list_queues_prefix():
    for bad in ("p" * 81, 5, None, b"p", ["p"]):
        invalid("list_queues", {"prefix": bad}, "'prefix'")


# ---------------------------------------------------------------------------------------------- the protocol doc

def test_protocol_doc_covers_operations_and_attributes():
    doc = (Path(__file__).resolve().parents[2] / "docs" / "PROTOCOL.md").read_text()
    for op in rq.OPERATIONS:
        assert re.search(rf"^\| `{op}` \|", doc, re.M), op
    for name in ("partitions", "replication", "ack_mode", "receive_wait_ms", "dead_letter_queue", "fifo",
                 *INT_RANGES):
        assert re.search(rf"^\| `{name}` \|", doc, re.M), name


# ---------------------------------------------------------------------------------------------- fuzzing

FIELDS = sorted({"name", "attributes", "prefix", "queue", "messages", "partition", "batch_id", "purge_id",
                 "max_messages", "max_bytes", "after",
                 "wait_ms", "visibility_timeout_ms", "receipts", "entries", "to", "body", "delay_ms", "dedup_id",
                 "group", "partitions", "replication", "ack_mode", "receive_wait_ms", "dead_letter_queue", "fifo",
                 *INT_RANGES})
texts = st.one_of(
    st.text(max_size=12), st.text(st.characters(exclude_categories=()), max_size=6),
    st.sampled_from(["q", "dlq", "a" * 80, "a" * 81, "", "quorum", "leader", RECEIPT, "0.0.1.1", "\ud800",
                     "x\udfffy", "k" * 129, *FIELDS, *rq.OPERATIONS]))
ints = st.one_of(st.integers(-3, 1025), st.integers(),
                 st.sampled_from([2**63 - 1, 2**63, 2**64 - 1, 2**64, -2**63, -2**63 - 1, 20_000, 20_001,
                                  43_200_000, 900_000, 100_000]),
                 st.sampled_from([1, -1]).map(lambda sign: sign * 10**5000))  # HUGE: a constant would break repr
scalars = st.one_of(st.none(), st.booleans(), ints, st.floats(), texts, st.binary(max_size=12))
keys = st.one_of(st.sampled_from(FIELDS), texts, st.binary(max_size=4), ints, st.none(), st.booleans())
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=5) | st.dictionaries(keys, inner, max_size=5),
                      max_leaves=25)
# Mostly known field names, so the fuzz reaches the checks behind the first one.
args_maps = st.dictionaries(st.sampled_from(FIELDS) | keys, values, max_size=6)
ops = st.one_of(st.sampled_from(rq.OPERATIONS), values)

RESULT_TYPES = (rq.CreateQueue, rq.UpdateQueue, rq.QueueOp, rq.PurgeQueue, rq.ListQueues, rq.Send, rq.Receive, rq.Peek, rq.Delete,
                rq.ChangeVisibility, rq.Redrive, rq.ClusterStatus)
NAME = re.compile(r"[A-Za-z0-9_-]{1,80}\Z")


def _check_int(value: Any, low: int, high: int, optional: bool = False) -> None:
    if optional and value is None:
        return
    assert type(value) is int and low <= value <= high, value


def _check_key(value: Any) -> None:
    if value is not None:
        assert isinstance(value, str) and 0 < len(value.encode("utf-8")) <= 128


def _check(request: Any) -> None:
    """What an accepted request guarantees to the broker."""
    assert isinstance(request, RESULT_TYPES)
    for field in ("name", "queue"):
        if hasattr(request, field):
            assert NAME.match(getattr(request, field))
    if isinstance(request, rq.CreateQueue):
        a = request.attributes
        _check_int(a.partitions, 1, 64)
        assert a.replication in (None, 1, 3, 5) and type(a.replication) in (int, type(None))
        assert a.ack_mode in ("quorum", "leader")
        _check_int(a.receive_wait_ms, 0, 20_000)
        store = dict(a.store)
        for name, value in store.items():
            if name == "fifo":
                assert type(value) is bool
            else:
                _check_int(value, *INT_RANGES[name])
        assert (a.dead_letter_queue is not None) == bool(store.get("max_receives"))
        if a.dead_letter_queue is not None:
            assert NAME.match(a.dead_letter_queue)
    elif isinstance(request, rq.UpdateQueue):
        assert request.changes and len({name for name, _ in request.changes}) == len(request.changes)
        for name, value in request.changes:
            assert name in rq.CHANGEABLE_ATTRIBUTES
            if value is None:
                continue
            if name in INT_RANGES:
                _check_int(value, *INT_RANGES[name])
            elif name == "receive_wait_ms":
                _check_int(value, 0, 20_000)
            elif name == "ack_mode":
                assert value in ("quorum", "leader")
            else:
                assert NAME.match(value)
    elif isinstance(request, rq.PurgeQueue):
        _check_key(request.purge_id)
    elif isinstance(request, rq.Send):
        assert 1 <= len(request.messages) <= 1000
        _check_int(request.partition, 0, 1023, optional=True)
        _check_key(request.batch_id)
        assert request.batch_id is None or request.partition is not None
        for message in request.messages:
            assert type(message.body) is bytes
            _check_int(message.delay_ms, 0, 900_000, optional=True)
            _check_key(message.dedup_id)
            _check_key(message.group)
            if message.attributes is not None:
                assert isinstance(message.attributes, dict) and 0 < len(message.attributes) <= 16
                for key, item in message.attributes.items():
                    assert isinstance(key, str) and 0 < len(key) <= 128
                    assert isinstance(item, (str, bytes, int, float, bool))
                    if type(item) is int:
                        assert -2**63 <= item < 2**64
    elif isinstance(request, rq.Receive):
        _check_int(request.max_messages, 1, 1000)
        _check_int(request.wait_ms, 0, 20_000, optional=True)
        _check_int(request.visibility_ms, 0, 43_200_000, optional=True)
        _check_int(request.partition, 0, 1023, optional=True)
        _check_int(request.max_bytes, 1, 3 << 20)
    elif isinstance(request, rq.Peek):
        _check_int(request.max_messages, 1, 1000)
        _check_int(request.partition, 0, 1023, optional=True)
        _check_int(request.max_bytes, 1, 3 << 20)
        _check_int(request.after, 0, 2**63 - 1)
        assert request.after == 0 or request.partition is not None
    elif isinstance(request, rq.Delete):
        assert 1 <= len(request.receipts) <= 1000
        for receipt in request.receipts:
            assert receipt is None or protocol.parse_receipt(receipt.text) == (
                receipt.queue_id, receipt.partition, receipt.sequence, receipt.receive_count)
    elif isinstance(request, rq.ChangeVisibility):
        assert 1 <= len(request.entries) <= 1000
        for _, timeout in request.entries:
            _check_int(timeout, 0, 43_200_000)
    elif isinstance(request, rq.Redrive):
        _check_int(request.max_messages, 1, 100_000)
        assert request.to is None or NAME.match(request.to)
    elif isinstance(request, rq.ListQueues):
        assert isinstance(request.prefix, str) and len(request.prefix) <= 80


def _parse_or_refuse(op: Any, args: Any) -> None:
    try:
        request = parse(op, args)
    except RequestError as exc:
        assert exc.code in (ErrorCode.INVALID_REQUEST, ErrorCode.UNKNOWN_OPERATION)
        assert isinstance(exc.message, str) and 0 < len(exc.message) < 1000
        return
    assert op in rq.OPERATIONS
    _check(request)


FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                        HealthCheck.filter_too_much])


@FUZZ
@given(ops, st.one_of(args_maps, values))
def test_fuzz_parse_raises_only_request_error(op, args):
    _parse_or_refuse(op, args)


message_maps = st.dictionaries(st.sampled_from(["body", "attributes", "delay_ms", "dedup_id", "group"]), values,
                               max_size=5) | values
plausible = {
    "send": st.fixed_dictionaries({"queue": st.sampled_from(["q"]) | values,
                                   "messages": st.lists(message_maps, min_size=1, max_size=3) | values},
                                  optional={"partition": values | st.integers(0, 3),
                                            "batch_id": values | st.sampled_from(["b", "k" * 129])}),
    "create_queue": st.fixed_dictionaries({"name": st.just("q") | values},
                                          optional={"attributes": st.dictionaries(
                                              st.sampled_from(FIELDS), values, max_size=6) | values}),
    "update_queue": st.fixed_dictionaries({"name": st.just("q") | values},
                                          optional={"attributes": st.dictionaries(
                                              st.sampled_from(FIELDS), values, max_size=6) | values}),
    "change_visibility": st.fixed_dictionaries({"queue": st.just("q"), "entries": st.lists(
        st.lists(values, min_size=2, max_size=2) | values, min_size=1, max_size=3)}),
    "delete": st.fixed_dictionaries({"queue": st.just("q"), "receipts": st.lists(values, min_size=1, max_size=3)}),
    "receive": st.fixed_dictionaries({"queue": st.just("q")}, optional={
        name: values for name in ("max_messages", "wait_ms", "visibility_timeout_ms", "partition")}),
    "redrive": st.fixed_dictionaries({"queue": st.just("q")}, optional={"to": values, "max_messages": values}),
}


@FUZZ
@given(st.sampled_from(sorted(plausible)).flatmap(lambda op: st.tuples(st.just(op), plausible[op])))
def test_fuzz_nearly_valid_requests(op_and_args):
    _parse_or_refuse(*op_and_args)
