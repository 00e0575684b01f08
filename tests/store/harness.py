"""A partition store driven the way the Raft layer drives it: consecutive indexes, time in every command."""

from __future__ import annotations

from typing import Any

from dmq_server.store import PartitionStore, StoreOptions

T0 = 1_700_000_000_000


class Driver:
    def __init__(self, path: str, options: StoreOptions | None = None) -> None:
        self.path = path
        self.options = options
        self.store = PartitionStore(path, options)
        self.index = self.store.applied_index
        self.now = T0

    def apply(self, op: str, **fields: Any) -> Any:
        self.index += 1
        fields.setdefault("now", self.now)
        return self.store.apply(self.index, {"op": op, **fields})

    def configure(self, **attrs: Any) -> dict[str, Any]:
        return self.apply("configure", attrs=attrs)

    def send(self, *bodies: bytes, delay: int | None = None, dedup: str | None = None, group: str | None = None,
             attrs: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        return self.apply("enqueue", messages=[[body, attrs, delay, dedup, group] for body in bodies])

    def receive(self, count: int = 1, visibility: int | None = None) -> list[dict[str, Any]]:
        return self.apply("receive", max=count, visibility_ms=visibility)

    def delete(self, *receipts: list[int]) -> list[dict[str, Any]]:
        return self.apply("delete", receipts=list(receipts))

    def change_visibility(self, receipt: list[int], visibility: int) -> dict[str, Any]:
        return self.apply("change_visibility", entries=[[*receipt, visibility]])[0]

    def tick(self) -> dict[str, int]:
        return self.apply("tick")

    def advance(self, ms: int) -> None:
        self.now += ms

    def stats(self) -> dict[str, int]:
        return self.store.stats(self.now)

    def reopen(self) -> None:
        self.store.close()
        self.store = PartitionStore(self.path, self.options)

    def close(self) -> None:
        self.store.close()
