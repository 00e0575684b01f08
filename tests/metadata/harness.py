"""A metadata store driven the way the Raft layer drives it: consecutive indexes, time in every command."""

from __future__ import annotations

from typing import Any

from dmq_server.metadata import MetadataStore

T0 = 1_700_000_000_000


class Driver:
    def __init__(self, path: str) -> None:
        self.path = path
        self.store = MetadataStore(path)
        self.index = self.store.applied_index
        self.now = T0

    def apply(self, op: str, **fields: Any) -> Any:
        self.index += 1
        fields.setdefault("now", self.now)
        return self.store.apply(self.index, {"op": op, **fields})

    def create(self, name: str, partitions: int = 2, attrs: dict[str, Any] | None = None, max_queues: int = 100,
               nodes: tuple[str, ...] = ("n1", "n2", "n3")) -> dict[str, Any]:
        replica_sets = [[nodes[(p + i) % len(nodes)] for i in range(len(nodes))] for p in range(partitions)]
        return self.apply("create_queue", name=name, attrs=attrs or {}, partitions=replica_sets,
                          max_queues=max_queues)

    def heartbeat(self, node: str, *leading: str) -> dict[str, int]:
        return self.apply("heartbeat", node=node, leading=list(leading))

    def reopen(self) -> None:
        self.store.close()
        self.store = MetadataStore(self.path)

    def close(self) -> None:
        self.store.close()
