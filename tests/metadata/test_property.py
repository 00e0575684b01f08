"""Property test: random, often malformed, commands only ever raise CommandError subclasses, a rejected command
changes nothing, and the store stays consistent in memory and on disk."""

from __future__ import annotations

import tempfile
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from dmq_server.metadata import MetadataStore
from dmq_server.store import CommandError

from .harness import T0

REOPEN = "reopen"

values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-2**70, max_value=2**70) | st.floats() | st.text(max_size=6)
    | st.binary(max_size=6),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=4), children, max_size=3),
    max_leaves=8,
)
nows = st.integers(T0 - 10, T0 + 10)
names = st.sampled_from(["a", "b", "c"])
node_ids = st.sampled_from(["n1", "n2", "n3"])

create = st.fixed_dictionaries({
    "op": st.just("create_queue"), "now": nows, "name": names, "attrs": st.sampled_from([{}, {"fifo": True}]),
    "partitions": st.lists(st.lists(node_ids, min_size=1, max_size=3), min_size=1, max_size=3),
    "max_queues": st.integers(1, 3),
})
delete = st.fixed_dictionaries({"op": st.just("delete_queue"), "now": nows, "name": names})
heartbeat = st.fixed_dictionaries({"op": st.just("heartbeat"), "now": nows, "node": node_ids,
                                   "leading": st.lists(st.sampled_from(["q1.p0", "q1.p1", "q2.p0"]), max_size=4)})
attrs = st.sampled_from([{}, {"fifo": True}, {"a": 1}])
update = st.fixed_dictionaries({"op": st.just("update_queue"), "now": nows, "name": names, "id": st.integers(1, 4),
                                "attrs": attrs, "previous": attrs})
valid = create | update | delete | heartbeat
# A valid command with one field replaced, dropped or added: malformed in the ways a sender gets wrong.
mutated = st.builds(lambda command, field, value: {**command, field: value}, valid,
                    st.sampled_from(["op", "now", "name", "attrs", "partitions", "max_queues", "node", "leading",
                                     "id", "previous"]),
                    values)
garbage = values | st.builds(lambda command, field: {k: v for k, v in command.items() if k != field}, valid,
                             st.sampled_from(["op", "now", "name", "node"]))
steps = st.lists(valid | mutated | garbage | st.just(REOPEN), max_size=40)


def check_consistent(store: MetadataStore, names: set[str]) -> None:
    snapshot = store.snapshot()
    queues = snapshot["queues"]
    assert {q["name"] for q in queues} == names
    assert len({q["id"] for q in queues}) == len(queues)
    assert all(q["id"] < snapshot["next_queue_id"] for q in queues)
    assert all(q["version"] <= store.version <= store.applied_index for q in queues)
    assert store.leaders_version <= store.applied_index
    nodes = snapshot["nodes"]
    assert all(group in nodes[node]["leading"] for group, node in snapshot["leaders"].items())
    assert all(n["started_at"] <= n["seen"] and n["leading"] == sorted(set(n["leading"])) for n in nodes.values())


@settings(max_examples=300, deadline=None)
@given(commands=steps)
def test_random_commands_keep_the_store_consistent(commands: list[Any]) -> None:
    with tempfile.TemporaryDirectory() as directory:
        store = MetadataStore(directory + "/metadata")
        names: set[str] = set()  # the model: which queues exist
        highest_id = 0
        try:
            for index, command in enumerate(commands, start=1):
                if command == REOPEN:
                    before = store.snapshot()
                    store.close()
                    store = MetadataStore(directory + "/metadata")
                    assert store.snapshot() == before
                    continue
                before = store.snapshot()
                try:
                    result = store.apply(index, command)
                except CommandError:
                    assert store.snapshot() == {**before, "applied_index": index}
                else:
                    op = command["op"]
                    if op == "create_queue" and command["name"] not in names:
                        assert result["id"] > highest_id
                        highest_id = result["id"]
                        names.add(command["name"])
                    elif op == "update_queue":  # only the queue it names, only its attrs, from `previous`
                        old = next(q for q in before["queues"] if q["name"] == command["name"])
                        assert old["id"] == command["id"] and old["attrs"] == command["previous"]
                        assert result == store.get_queue(command["name"])
                        assert result["attrs"] == command["attrs"]
                        assert result["initial_attrs"] == old.get("initial_attrs", old["attrs"])
                        assert [q for q in store.snapshot()["queues"] if q["name"] != command["name"]] == [
                            q for q in before["queues"] if q["name"] != command["name"]]
                    elif op == "delete_queue":
                        names.remove(command["name"])
                assert store.applied_index == index
                check_consistent(store, names)
        finally:
            store.close()
