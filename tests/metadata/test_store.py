"""One test per rule of docs/METADATA.md, against the real RocksDB-backed metadata store."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest

from dmq_server.metadata import (MetadataStore, MetadataStoreFactory, QueueAlreadyExists, QueueChanged,
                                 QueueNotFound, TooManyNodes, TooManyQueues, limits, partition_group_id)
from dmq_server.store import CommandError, InvalidCommand, UnknownOperation

from .harness import T0, Driver


def test_create_queue_returns_its_record_and_bumps_the_version(meta: Driver) -> None:
    record = meta.create("orders", partitions=2, attrs={"fifo": True})
    assert record == {"id": 1, "name": "orders", "attrs": {"fifo": True},
                      "partitions": [["n1", "n2", "n3"], ["n2", "n3", "n1"]], "created_at": T0, "version": 1}
    assert meta.store.version == 1 and meta.store.get_queue("orders") == record
    meta.create("audit")
    assert [q["name"] for q in meta.store.queues()] == ["audit", "orders"]
    assert meta.store.version == 2 and meta.store.get_queue("missing") is None


def test_create_is_idempotent_for_the_same_attrs_and_partition_count(meta: Driver) -> None:
    first = meta.create("orders", partitions=2, attrs={"a": 1})
    meta.heartbeat("n1")
    again = meta.create("orders", partitions=2, attrs={"a": 1}, nodes=("n4", "n5"))  # placed elsewhere
    assert again == first and meta.store.version == 1
    with pytest.raises(QueueAlreadyExists) as raised:
        meta.create("orders", partitions=2, attrs={"a": 2})
    assert raised.value.code == "QueueAlreadyExists"
    with pytest.raises(QueueAlreadyExists):
        meta.create("orders", partitions=3, attrs={"a": 1})
    assert meta.store.get_queue("orders") == first


def test_max_queues_limits_new_queues_only(meta: Driver) -> None:
    meta.create("a", max_queues=1)
    with pytest.raises(TooManyQueues) as raised:
        meta.create("b", max_queues=1)
    assert raised.value.code == "TooManyQueues"
    assert meta.create("a", max_queues=1)["id"] == 1  # the existing queue is still returned
    assert meta.create("b", max_queues=2)["id"] == 2


def test_delete_queue_and_ids_are_never_reused(meta: Driver) -> None:
    record = meta.create("orders")
    assert meta.apply("delete_queue", name="orders") == {"deleted": record}
    assert meta.store.get_queue("orders") is None and meta.store.version == 2
    with pytest.raises(QueueNotFound) as raised:
        meta.apply("delete_queue", name="orders")
    assert raised.value.code == "QueueNotFound" and meta.store.version == 2
    assert meta.create("orders")["id"] == 2


def test_update_queue_replaces_the_attrs_and_keeps_the_initial_ones(meta: Driver) -> None:
    created = meta.create("orders", attrs={"a": 1})
    meta.now += 1_000
    updated = meta.apply("update_queue", name="orders", id=1, attrs={"a": 2}, previous={"a": 1})
    assert updated == {**created, "attrs": {"a": 2}, "initial_attrs": {"a": 1}, "updated_at": T0 + 1_000}
    assert meta.store.get_queue("orders") == updated and meta.store.version == meta.index
    again = meta.apply("update_queue", name="orders", id=1, attrs={"a": 3, "b": [1]}, previous={"a": 2})
    assert again["initial_attrs"] == {"a": 1} and again["attrs"] == {"a": 3, "b": [1]}  # the first ones stay
    with pytest.raises(QueueAlreadyExists):  # create compares with the attributes as they are now
        meta.create("orders", attrs={"a": 1})
    assert meta.create("orders", attrs={"a": 3, "b": [1]}) == again
    meta.reopen()
    assert meta.store.get_queue("orders") == again


def test_update_queue_is_a_compare_and_set_on_the_queue_and_its_attrs(meta: Driver) -> None:
    meta.create("orders", attrs={"a": 1})
    meta.apply("update_queue", name="orders", id=1, attrs={"a": 2}, previous={"a": 1})
    with pytest.raises(QueueChanged) as raised:  # computed from the attributes before the first update
        meta.apply("update_queue", name="orders", id=1, attrs={"a": 5}, previous={"a": 1})
    assert raised.value.code == "QueueChanged"
    meta.apply("delete_queue", name="orders")
    meta.create("orders", attrs={"a": 2})  # id 2
    version = meta.store.version
    with pytest.raises(QueueNotFound):  # computed for the deleted queue
        meta.apply("update_queue", name="orders", id=1, attrs={"a": 5}, previous={"a": 2})
    with pytest.raises(QueueNotFound):
        meta.apply("update_queue", name="missing", id=1, attrs={}, previous={})
    assert meta.store.get_queue("orders")["attrs"] == {"a": 2} and meta.store.version == version


def test_heartbeat_records_the_node_and_bumps_leaders_version_only_on_change(meta: Driver) -> None:
    assert meta.heartbeat("n1", "q1.p1", "q1.p0", "q1.p0") == {"leaders_version": 1}
    meta.now += 1_000
    assert meta.heartbeat("n1", "q1.p0", "q1.p1") == {"leaders_version": 1}
    assert meta.store.nodes() == {"n1": {"seen": T0 + 1_000, "leading": ["q1.p0", "q1.p1"], "started_at": T0}}
    assert meta.heartbeat("n2") == {"leaders_version": 1}  # a new node leading nothing changes no leader
    assert meta.heartbeat("n1", "q1.p0") == {"leaders_version": 4}
    assert meta.store.leaders_version == 4 and meta.store.version == 0


def test_leaders_later_heartbeat_wins_a_conflict(meta: Driver) -> None:
    meta.heartbeat("n1", "g1", "g2")
    meta.now += 10
    meta.heartbeat("n2", "g1")  # n1's claim on g1 is older
    assert meta.store.leaders() == {"g1": "n2", "g2": "n1"}
    meta.now += 10
    meta.heartbeat("n1", "g1", "g2")
    assert meta.store.leaders() == {"g1": "n1", "g2": "n1"}
    meta.heartbeat("n3", "g2")  # same time: the greater node id, on every replica
    assert meta.store.leaders() == {"g1": "n1", "g2": "n3"}


def test_time_never_moves_backwards(meta: Driver) -> None:
    meta.heartbeat("n1")
    meta.now -= 5_000  # a new metadata leader with a slower clock
    assert meta.create("orders")["created_at"] == T0
    meta.heartbeat("n2", "g1")
    assert meta.store.nodes()["n2"]["seen"] == T0


def test_too_many_nodes(meta: Driver, monkeypatch) -> None:
    monkeypatch.setattr(limits, "MAX_NODES", 2)
    meta.heartbeat("n1")
    meta.heartbeat("n2")
    with pytest.raises(TooManyNodes):
        meta.heartbeat("n3")
    assert meta.heartbeat("n2", "g") == {"leaders_version": 4}  # known nodes still beat


BAD_COMMANDS: list[tuple[Any, type[CommandError]]] = [
    (None, InvalidCommand),
    ({"op": "heartbeat"}, InvalidCommand),
    ({"now": T0}, UnknownOperation),
    ({"op": "explode", "now": T0}, UnknownOperation),
    ({"op": ["heartbeat"], "now": T0}, UnknownOperation),
    ({"op": "heartbeat", "now": -1, "node": "n1", "leading": []}, InvalidCommand),
    ({"op": "heartbeat", "now": T0, "node": "", "leading": []}, InvalidCommand),
    ({"op": "heartbeat", "now": T0, "node": "n" * 129, "leading": []}, InvalidCommand),
    ({"op": "heartbeat", "now": T0, "node": "n\n1", "leading": []}, InvalidCommand),
    ({"op": "heartbeat", "now": T0, "node": "n\udc80", "leading": []}, InvalidCommand),
    ({"op": "heartbeat", "now": T0, "node": "n1", "leading": "g1"}, InvalidCommand),
    ({"op": "heartbeat", "now": T0, "node": "n1", "leading": [1]}, InvalidCommand),
    ({"op": "heartbeat", "now": T0, "node": "n1", "leading": ["g"] * 65_537}, InvalidCommand),
    ({"op": "delete_queue", "now": T0, "name": "a b"}, InvalidCommand),
    ({"op": "delete_queue", "now": T0, "name": "ok"}, QueueNotFound),
    ({"op": "update_queue", "now": T0, "name": "existing", "attrs": {}, "previous": {}}, InvalidCommand),
    ({"op": "update_queue", "now": T0, "name": "existing", "id": 0, "attrs": {}, "previous": {}}, InvalidCommand),
    ({"op": "update_queue", "now": T0, "name": "existing", "id": 1, "attrs": [], "previous": {}}, InvalidCommand),
    ({"op": "update_queue", "now": T0, "name": "existing", "id": 1, "attrs": {}, "previous": None},
     InvalidCommand),
    ({"op": "update_queue", "now": T0, "name": "existing", "id": 1, "attrs": {1: 2}, "previous": {}},
     InvalidCommand),
    ({"op": "update_queue", "now": T0, "name": "existing", "id": 1, "attrs": {}, "previous": {"x": 1}},
     QueueChanged),
    ({"op": "update_queue", "now": T0, "name": "existing", "id": 2, "attrs": {}, "previous": {}}, QueueNotFound),
]
CREATE = {"op": "create_queue", "now": T0, "name": "q", "attrs": {}, "partitions": [["n1"]], "max_queues": 10}
BAD_CREATES: list[tuple[dict[str, Any], type[CommandError]]] = [
    ({"name": ""}, InvalidCommand),
    ({"name": "x" * 81}, InvalidCommand),
    ({"name": "bad.name"}, InvalidCommand),
    ({"name": "trailing\n"}, InvalidCommand),
    ({"name": 5}, InvalidCommand),
    ({"attrs": None}, InvalidCommand),
    ({"attrs": [1]}, InvalidCommand),
    ({"attrs": {1: "int key"}}, InvalidCommand),
    ({"attrs": {"nested": {2: "int key"}}}, InvalidCommand),
    ({"attrs": {"big": 2**70}}, InvalidCommand),
    ({"attrs": {"s": object()}}, InvalidCommand),
    ({"attrs": {"blob": b"x" * 16_384}}, InvalidCommand),
    ({"partitions": []}, InvalidCommand),
    ({"partitions": [["n1"]] * 1_025}, InvalidCommand),
    ({"partitions": [[]]}, InvalidCommand),
    ({"partitions": [["n1", "n2", "n3", "n4", "n5", "n6"]]}, InvalidCommand),
    ({"partitions": [["n1", "n1"]]}, InvalidCommand),
    ({"partitions": ["n1"]}, InvalidCommand),
    ({"partitions": [[7]]}, InvalidCommand),
    ({"max_queues": 0}, InvalidCommand),
    ({"max_queues": 100_001}, InvalidCommand),
    ({"max_queues": True}, InvalidCommand),
]


@pytest.mark.parametrize("command,error", BAD_COMMANDS + [({**CREATE, **change}, error)
                                                          for change, error in BAD_CREATES],
                         ids=lambda value: repr(value)[:60])
def test_malformed_command_is_rejected_with_typed_error_and_changes_nothing(meta: Driver, command, error) -> None:
    meta.create("existing")
    meta.heartbeat("n1", "g1")
    before = meta.store.snapshot()
    with pytest.raises(error) as raised:
        meta.store.apply(meta.index + 1, command)
    assert raised.value.code == error.__name__ and str(raised.value)
    meta.index += 1
    assert meta.store.applied_index == meta.index  # recorded, so a replay skips it
    assert meta.store.snapshot() == {**before, "applied_index": meta.index}


def test_largest_valid_queue(meta: Driver) -> None:
    partitions = [[f"node-{p % 7}-{i}" + "x" * 120 for i in range(limits.MAX_REPLICAS)]
                  for p in range(limits.MAX_PARTITIONS)]
    attrs = {"blob": b"x" * 16_000}
    record = meta.apply("create_queue", name="x" * 80, attrs=attrs, partitions=partitions,
                        max_queues=limits.MAX_QUEUES)
    assert record["partitions"] == partitions and record["attrs"] == attrs


def test_replayed_index_is_a_no_op(meta: Driver) -> None:
    meta.create("orders")
    before = meta.store.snapshot()
    assert meta.store.apply(meta.index, {"op": "delete_queue", "now": T0, "name": "orders"}) is None
    assert meta.store.apply(1, {"op": "explode"}) is None
    assert meta.store.snapshot() == before


def populate(meta: Driver) -> None:
    meta.create("orders", partitions=3, attrs={"fifo": True, "tags": {"team": b"x"}})
    meta.create("doomed")
    meta.create("audit", partitions=1)
    meta.apply("delete_queue", name="doomed")
    meta.heartbeat("n1", partition_group_id(1, 0), partition_group_id(1, 1))
    meta.now += 500
    meta.heartbeat("n2", partition_group_id(3, 0), partition_group_id(1, 1))
    with pytest.raises(QueueNotFound):
        meta.apply("delete_queue", name="doomed")


def test_reopen_restores_memory(meta: Driver) -> None:
    populate(meta)
    before = meta.store.snapshot()
    meta.reopen()
    assert meta.store.snapshot() == before
    assert meta.create("later")["id"] == 4  # the id counter survived too
    assert before["leaders"] == {"q1.p0": "n1", "q1.p1": "n2", "q3.p0": "n2"}


def test_checkpoint_and_restore_round_trip(meta: Driver, tmp_path) -> None:
    populate(meta)
    meta.store.checkpoint(str(tmp_path / "checkpoint"))
    at_checkpoint = meta.store.snapshot()
    meta.create("after")
    restored = MetadataStoreFactory().restore(str(tmp_path / "checkpoint"), str(tmp_path / "restored"))
    try:
        assert restored.snapshot() == at_checkpoint
        assert restored.applied_index == at_checkpoint["applied_index"]
    finally:
        restored.close()


def test_snapshot_is_msgpack_and_queries_hand_out_copies(meta: Driver) -> None:
    populate(meta)
    snapshot = meta.store.snapshot()
    expected = msgpack.unpackb(msgpack.packb(snapshot))
    assert expected == snapshot
    snapshot["queues"][0]["partitions"].clear()
    meta.store.get_queue("orders")["attrs"].clear()
    meta.store.nodes()["n1"]["leading"].clear()
    assert meta.store.snapshot() == expected


def test_partition_group_ids() -> None:
    assert partition_group_id(12, 0) == "q12.p0"
    with pytest.raises(AssertionError):
        partition_group_id(0, 1)


def test_closed_store_refuses_work(tmp_path) -> None:
    store = MetadataStore(str(tmp_path / "m"))
    store.close()
    with pytest.raises(RuntimeError):
        store.apply(1, {"op": "heartbeat", "now": T0, "node": "n1", "leading": []})
