"""Malformed commands get a typed error and change nothing; no input makes apply fail any other way."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dmq_server.store import (CommandError, InvalidCommand, InvalidReceipt, MessageTooLarge, UnknownOperation)

from .harness import Driver

NOW = 1_700_000_000_000

BAD_COMMANDS: list[tuple[Any, type[CommandError]]] = [
    (None, InvalidCommand),
    ([1, 2], InvalidCommand),
    ({"now": NOW}, UnknownOperation),
    ({"op": "explode", "now": NOW}, UnknownOperation),
    ({"op": b"enqueue", "now": NOW}, UnknownOperation),
    ({"op": ["enqueue"], "now": NOW}, UnknownOperation),
    ({"op": "tick"}, InvalidCommand),
    ({"op": "tick", "now": -1}, InvalidCommand),
    ({"op": "tick", "now": 1.5}, InvalidCommand),
    ({"op": "tick", "now": True}, InvalidCommand),
    ({"op": "tick", "now": 2**70}, InvalidCommand),
    ({"op": "enqueue", "now": NOW, "messages": []}, InvalidCommand),
    ({"op": "enqueue", "now": NOW, "messages": "abc"}, InvalidCommand),
    ({"op": "enqueue", "now": NOW, "messages": [[b"x"]]}, InvalidCommand),
    ({"op": "enqueue", "now": NOW, "messages": [["text", None, None, None, None]]}, InvalidCommand),
    ({"op": "enqueue", "now": NOW, "messages": [[b"x", None, -1, None, None]]}, InvalidCommand),
    ({"op": "enqueue", "now": NOW, "messages": [[b"x", None, 10**9, None, None]]}, InvalidCommand),
    ({"op": "enqueue", "now": NOW, "messages": [[b"x", None, None, "", None]]}, InvalidCommand),
    ({"op": "enqueue", "now": NOW, "messages": [[b"x", None, None, "d" * 129, None]]}, InvalidCommand),
    ({"op": "enqueue", "now": NOW, "messages": [[b"x", None, None, None, 5]]}, InvalidCommand),
    ({"op": "enqueue", "now": NOW, "messages": [[b"x", {"k": [1]}, None, None, None]]}, InvalidCommand),
    ({"op": "enqueue", "now": NOW, "messages": [[b"x", {1: "v"}, None, None, None]]}, InvalidCommand),
    ({"op": "enqueue", "now": NOW, "messages": [[b"x", {"k%d" % i: 1 for i in range(17)}, None, None, None]]},
     InvalidCommand),
    ({"op": "enqueue", "now": NOW, "messages": [[b"x", None, None, None, None]] * 1_001}, InvalidCommand),
    ({"op": "enqueue", "now": NOW, "messages": [[b"x" * 262_145, None, None, None, None]]}, MessageTooLarge),
    ({"op": "enqueue", "now": NOW, "messages": [[b"x", None, None, None, None]], "batches": [[b"b", 0, 2]]},
     InvalidCommand),
    ({"op": "enqueue", "now": NOW, "messages": [[b"x", None, None, None, None]], "batches": [["b", 0, 1]]},
     InvalidCommand),
    ({"op": "enqueue", "now": NOW, "messages": [[b"x", None, None, None, None]] * 2,
      "batches": [[b"b", 0, 2], [b"c", 1, 1]]}, InvalidCommand),
    ({"op": "receive", "now": NOW, "max": 0}, InvalidCommand),
    ({"op": "receive", "now": NOW, "max": 1_001}, InvalidCommand),
    ({"op": "receive", "now": NOW, "max": "5"}, InvalidCommand),
    ({"op": "receive", "now": NOW, "max": 1, "visibility_ms": -5}, InvalidCommand),
    ({"op": "receive", "now": NOW, "max": 1, "visibility_ms": 43_200_001}, InvalidCommand),
    ({"op": "delete", "now": NOW, "receipts": [[0, 1]]}, InvalidReceipt),
    ({"op": "delete", "now": NOW, "receipts": [[1, 0]]}, InvalidReceipt),
    ({"op": "delete", "now": NOW, "receipts": [["x", 1]]}, InvalidReceipt),
    ({"op": "delete", "now": NOW, "receipts": [[1]]}, InvalidReceipt),
    ({"op": "delete", "now": NOW, "receipts": ["1:1"]}, InvalidReceipt),
    ({"op": "delete", "now": NOW, "receipts": [[1, 1], [2**64, 1]]}, InvalidReceipt),
    ({"op": "change_visibility", "now": NOW, "entries": [[1, 1]]}, InvalidCommand),
    ({"op": "change_visibility", "now": NOW, "entries": [[1, 1, -1]]}, InvalidCommand),
    ({"op": "change_visibility", "now": NOW, "entries": [[1, 1, 43_200_001]]}, InvalidCommand),
    ({"op": "change_visibility", "now": NOW, "entries": [[-1, 1, 5]]}, InvalidReceipt),
    ({"op": "configure", "now": NOW, "attrs": {"max_messages": 0}}, InvalidCommand),
    ({"op": "configure", "now": NOW, "attrs": {"max_messages": "10"}}, InvalidCommand),
    ({"op": "configure", "now": NOW, "attrs": {"visibility_timeout_ms": -1}}, InvalidCommand),
    ({"op": "configure", "now": NOW, "attrs": {"colour": "blue"}}, InvalidCommand),
    ({"op": "configure", "now": NOW, "attrs": {"fifo": 1}}, InvalidCommand),
    ({"op": "configure", "now": NOW, "attrs": None}, InvalidCommand),
    ({"op": "ack_dead_letters", "now": NOW, "upto": -1}, InvalidCommand),
]


def _populated(tmp_path) -> Driver:
    driver = Driver(str(tmp_path / "p"))
    driver.send(b"a", b"b")
    driver.send(b"c", dedup="d")
    driver.receive(1)
    return driver


def _state(driver: Driver) -> tuple[Any, ...]:
    stats = driver.store.stats(driver.now)
    stats.pop("applied_index")
    return stats, driver.store.peek(100), driver.store.config(), driver.store.receivable(driver.now + 60_000, 10)


@pytest.mark.parametrize("command,error", BAD_COMMANDS, ids=lambda value: repr(value)[:60])
def test_malformed_command_is_rejected_with_typed_error_and_changes_nothing(tmp_path, command, error) -> None:
    driver = _populated(tmp_path)
    try:
        before = _state(driver)
        with pytest.raises(error) as raised:
            driver.store.apply(driver.index + 1, command)
        assert raised.value.code == error.__name__ and str(raised.value)
        assert _state(driver) == before
        assert driver.store.applied_index == driver.index + 1  # recorded, so a replay skips it
        driver.index += 1
        assert driver.send(b"still serving")[0]["id"] == 4
    finally:
        driver.close()


values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-2**70, max_value=2**70) | st.floats() | st.text(max_size=8)
    | st.binary(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=12,
)
ops = st.sampled_from(["configure", "enqueue", "receive", "delete", "change_visibility", "purge", "tick",
                       "ack_dead_letters", "nope"])
fields = st.sampled_from(["now", "attrs", "messages", "max", "visibility_ms", "receipts", "entries", "upto",
                          "batches"])
commands = st.builds(lambda op, extra: {"op": op, **extra}, ops, st.dictionaries(fields, values, max_size=4))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(command=commands | values)
def test_no_input_breaks_apply(tmp_path_factory, command) -> None:
    driver = _populated(tmp_path_factory.mktemp("fuzz"))
    try:
        before = _state(driver)
        try:
            driver.store.apply(driver.index + 1, command)
        except CommandError:
            assert _state(driver) == before
        driver.index += 1
        assert driver.send(b"still serving")[0]["id"] == 4
    finally:
        driver.close()
