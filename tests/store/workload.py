"""A deterministic mixed workload: the same seed and the same results give the same commands, so a crashed
run can be replayed exactly up to the index it reached."""

from __future__ import annotations

import random
from collections.abc import Generator
from typing import Any

T0 = 1_700_000_000_000
Command = dict[str, Any]


def workload(seed: int, fifo: bool) -> Generator[Command, Any, None]:
    rng = random.Random(seed)
    now = T0
    receipts: list[list[int]] = []
    result = yield {"op": "configure", "now": now, "attrs": {
        "fifo": fifo, "max_messages": 5_000, "max_receives": 3, "retention_ms": 600_000,
        "dedup_window_ms": 5_000}}
    while True:
        now += rng.choice([0, 1, 5, 50, 400])
        roll = rng.random()
        if roll < 0.45:
            messages = []
            for _ in range(rng.randint(1, 50)):
                delay = None if fifo or rng.random() < 0.8 else rng.randint(0, 2_000)
                dedup = f"d{rng.randint(0, 500)}" if rng.random() < 0.3 else None
                group = f"g{rng.randint(0, 8)}" if rng.random() < 0.7 else None
                attrs = {"n": rng.randint(0, 9)} if rng.random() < 0.2 else None
                messages.append([rng.randbytes(rng.randint(0, 300)), attrs, delay, dedup, group])
            command = {"op": "enqueue", "now": now, "messages": messages}
            if rng.random() < 0.4:  # coalesced sends with batch ids (a small pool: retries and mismatches)
                first = rng.randint(0, len(messages) - 1)
                count = rng.randint(1, len(messages) - first)
                command["batches"] = [[b"b%d" % rng.randint(0, 30), first, count]]
            result = yield command
        elif roll < 0.75:
            result = yield {"op": "receive", "now": now, "max": rng.randint(1, 60),
                            "visibility_ms": rng.choice([None, 0, 100, 1_000, 10_000])}
            receipts.extend(message["receipt"] for message in result)
            del receipts[:-500]
        elif roll < 0.9 and receipts:
            chosen = [receipts.pop(rng.randrange(len(receipts))) for _ in range(min(len(receipts), 40))]
            result = yield {"op": "delete", "now": now, "receipts": chosen}
        elif roll < 0.95 and receipts:
            entries = [[*rng.choice(receipts), rng.choice([0, 500, 5_000])] for _ in range(5)]
            result = yield {"op": "change_visibility", "now": now, "entries": entries}
        elif roll < 0.99:
            result = yield {"op": "tick", "now": now}
        elif roll < 0.995:
            result = yield {"op": "ack_dead_letters", "now": now, "upto": rng.randint(0, 10_000)}
        else:
            result = yield {"op": "purge", "now": now}
        del result


def run(store: Any, seed: int, fifo: bool, upto: int | None = None) -> int:
    """Apply the workload to `store` from index 1, up to `upto` (or forever); return the last index applied."""
    commands = workload(seed, fifo)
    command = next(commands)
    index = 0
    while upto is None or index < upto:
        index += 1
        result = store.apply(index, command)
        command = commands.send(result)
    return index
