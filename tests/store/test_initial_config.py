"""A new partition starts from its queue's configuration; a persisted configuration always wins."""

from __future__ import annotations

from dmq_server.store import PartitionStore, PartitionStoreFactory, QueueConfig

from .harness import T0

SMALL_FIFO = QueueConfig(fifo=True, max_messages=5)


def send(store: PartitionStore, index: int, *groups: str) -> list[dict]:
    return store.apply(index, {"op": "enqueue", "now": T0,
                               "messages": [[b"x", None, None, None, group] for group in groups]})


def test_a_new_partition_starts_from_the_initial_config_and_keeps_it(tmp_path) -> None:
    path = str(tmp_path / "p")
    store = PartitionStore(path, initial_config=SMALL_FIFO)
    try:
        assert store.config() == SMALL_FIFO.to_dict()
        results = send(store, 1, *["g"] * 6)
        assert [r.get("error") for r in results] == [None] * 5 + ["QueueFull"]
        received = store.apply(2, {"op": "receive", "now": T0, "max": 10, "visibility_ms": None})
        assert [m["id"] for m in received] == [1]  # FIFO: one message of the group at a time
    finally:
        store.close()
    reopened = PartitionStore(path)
    try:
        assert reopened.config() == SMALL_FIFO.to_dict()
    finally:
        reopened.close()


def test_a_persisted_config_ignores_a_different_initial_config(tmp_path) -> None:
    path = str(tmp_path / "p")
    store = PartitionStore(path)
    store.apply(1, {"op": "configure", "now": T0, "attrs": {"max_messages": 7}})
    store.close()
    factory = PartitionStoreFactory(initial_config=SMALL_FIFO)
    reopened = factory.open(path)
    try:
        assert reopened.config() == QueueConfig(max_messages=7).to_dict()
        reopened.checkpoint(str(tmp_path / "checkpoint"))
    finally:
        reopened.close()
    restored = factory.restore(str(tmp_path / "checkpoint"), str(tmp_path / "restored"))
    try:
        assert restored.config() == QueueConfig(max_messages=7).to_dict()
    finally:
        restored.close()
