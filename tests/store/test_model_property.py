"""Property test: the real PartitionStore against the in-memory reference model (tests/store/model.py).

A hypothesis state machine applies the same random command sequence (valid and malformed, with time moving
forwards in small and large steps and sometimes backwards) to both, requires every result / error class to be
equal, and after every step compares the queries (stats, peek, config, dead_letters, receivable, applied_index).
It also replays old indexes (must be no-ops) and reopens the store on the same path at random points.
A failing run prints each applied command as `apply(index, command)` notes: that list is the reproduction.
"""

from __future__ import annotations

import copy
import shutil
import tempfile

import pytest
from hypothesis import HealthCheck, note, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule, run_state_machine_as_test

from dmq_server.store import PartitionStore, StoreOptions

from .model import CommandError, QueueModel

T0 = 1_700_000_000_000
BIG = 10**9

# Small pools so that duplicates, shared groups, full queues and boundary hits are frequent.
DEDUP_IDS = ["a", "b", "c", "d", "é"]
BATCH_IDS = [b"a", b"b1", b"b2", b"\xff"]  # b"a" is also a dedup id; b"\xff" is the batch marker byte
GROUPS = ["g1", "g2", "g3"]
VISIBILITIES = [0, 1, 500, 1_000, 30_000, 120_000]
MESSAGE_DELAYS = [None, None, None, None, 0, 1, 1_000, 5_000, 900_000]
TIME_STEPS = [0, 1, 10, 499, 500, 999, 1_000, 1_000, 5_000, 30_000, 59_999, 60_000, 120_000, 300_000,
              345_600_000]

CONFIG_VALUES = {
    "max_messages": [1, 2, 3, 5, 8, 1_000],
    "max_message_bytes": [16, 64, 262_144, 262_144],
    "retention_ms": [60_000, 90_000, 300_000, 345_600_000],
    "visibility_timeout_ms": [0, 1, 1_000, 30_000],
    "delay_ms": [0, 0, 0, 1, 1_000, 5_000, 60_000],
    "max_receives": [0, 1, 2, 3],
    "dedup_window_ms": [1_000, 5_000, 300_000],
}

attr_values = st.one_of(
    st.text(max_size=4),
    st.binary(max_size=4),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=False),
    st.booleans(),
)
message_attrs = st.one_of(
    st.none(),
    st.just({}),
    st.dictionaries(st.sampled_from(["k", "key", "n" * 128, "ü"]), attr_values, max_size=3),
)
config_attrs = st.fixed_dictionaries({}, optional={k: st.sampled_from(v) for k, v in CONFIG_VALUES.items()})


def normalize(value):
    """Results must be msgpack-equal: tuples and lists are the same thing on the wire."""
    if isinstance(value, (list, tuple)):
        return [normalize(v) for v in value]
    if isinstance(value, dict):
        return {k: normalize(v) for k, v in value.items()}
    return value


def peek_view(messages, model):
    """The spec gives `deadline` a meaning only for in-flight messages: the store may report anything else."""
    out = normalize(messages)
    for msg in out:
        held = model.messages.get(msg["id"])
        if held is not None and held.state != "in_flight":
            msg.pop("deadline", None)
    return out


def outcome(fn):
    try:
        return ("ok", normalize(fn()))
    except CommandError as exc:
        return ("error", type(exc).__name__, exc.code)


class StoreVsModel(RuleBasedStateMachine):
    ADVANCE_LIMIT = BIG

    def __init__(self):
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="dmq-model-")
        self.path = self.dir + "/partition"
        self.options = StoreOptions(advance_limit=self.ADVANCE_LIMIT, scan_limit=BIG)
        self.store = PartitionStore(self.path, self.options)
        self.model = QueueModel(advance_limit=self.ADVANCE_LIMIT)
        self.index = 0
        self.now = T0
        self.receipts: list[list[int]] = []
        self.batched: list[dict] = []  # enqueue commands with batches, for retries

    def teardown(self):
        try:
            self.store.close()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

    # ------------------------------------------------------------------ plumbing

    def apply(self, command, index=None):
        if index is None:
            self.index += 1
            index = self.index
        note(f"apply({index}, {command!r})")
        expected = outcome(lambda: self.model.apply(index, copy.deepcopy(command)))
        actual = outcome(lambda: self.store.apply(index, copy.deepcopy(command)))
        assert actual == expected, f"apply({index}, {command!r}):\n store: {actual!r}\n model: {expected!r}"
        if expected[0] == "ok" and isinstance(command, dict) and command.get("op") == "receive":
            self.receipts.extend(m["receipt"] for m in expected[1])
        return expected

    def draw_receipt(self, data):
        """A receipt seen before (recent ones favoured, stale ones included) or a made-up one."""
        pick = data.draw(st.integers(0, 5)) if self.receipts else 0
        if pick >= 3:
            return list(data.draw(st.sampled_from(self.receipts[-4:])))
        if pick >= 1:
            return list(data.draw(st.sampled_from(self.receipts)))
        return [data.draw(st.integers(1, self.model.next_id + 1)), data.draw(st.integers(1, 4))]

    # ------------------------------------------------------------------ setup

    @initialize(fifo=st.booleans(), attrs=config_attrs)
    def configure_queue(self, fifo, attrs):
        self.apply({"op": "configure", "now": self.now, "attrs": {"fifo": fifo, **attrs}})

    # ------------------------------------------------------------------ valid commands
    # Hypothesis picks rules uniformly: the common operations have two rules each, the rare ones share one.

    @rule(data=st.data())
    def enqueue(self, data):
        fifo = self.model.cfg["fifo"]
        entries = []
        for _ in range(data.draw(st.integers(1, 4))):
            body = data.draw(st.binary(max_size=12))
            attrs = data.draw(message_attrs)
            delay = None if fifo else data.draw(st.sampled_from(MESSAGE_DELAYS))
            dedup = data.draw(st.one_of(st.none(), st.sampled_from(DEDUP_IDS)))
            group = data.draw(st.one_of(st.none(), st.sampled_from(GROUPS)))
            entries.append([body, attrs, delay, dedup, group])
        command = {"op": "enqueue", "now": self.now, "messages": entries}
        if data.draw(st.integers(0, 2)):  # two sends in three carry batch ids, like coalesced sends of an SDK
            segments = []
            position = 0
            while position < len(entries):
                position += data.draw(st.integers(0, 1))  # messages outside any segment
                count = data.draw(st.integers(1, 3))
                if position + count > len(entries):
                    break
                segments.append([data.draw(st.sampled_from(BATCH_IDS)), position, count])
                position += count
            if segments:
                command["batches"] = segments
                self.batched.append(command)
        self.apply(command)

    @rule(data=st.data())
    def retry_batched_send(self, data):
        """A send retried after a timeout: the same messages and batch ids, later."""
        if self.batched:
            command = data.draw(st.sampled_from(self.batched[-3:]))
            self.apply({**command, "now": self.now})

    @rule(data=st.data())
    def enqueue_again(self, data):
        self.enqueue(data)

    @rule(n=st.sampled_from([1, 1, 2, 3, 5, 1_000]), vis=st.sampled_from([None, None] + VISIBILITIES))
    def receive(self, n, vis):
        self.apply({"op": "receive", "now": self.now, "max": n, "visibility_ms": vis})

    @rule(n=st.sampled_from([1, 2, 1_000]), vis=st.sampled_from([None, 0, 1, 1_000]))
    def receive_again(self, n, vis):
        self.receive(n, vis)

    @rule(data=st.data())
    def delete(self, data):
        receipts = [self.draw_receipt(data) for _ in range(data.draw(st.integers(1, 3)))]
        self.apply({"op": "delete", "now": self.now, "receipts": receipts})

    @rule(data=st.data())
    def change_visibility(self, data):
        entries = [
            self.draw_receipt(data) + [data.draw(st.sampled_from(VISIBILITIES + [43_200_000]))]
            for _ in range(data.draw(st.integers(1, 3)))
        ]
        self.apply({"op": "change_visibility", "now": self.now, "entries": entries})

    @rule()
    def tick(self):
        self.apply({"op": "tick", "now": self.now})

    @rule(data=st.data())
    def time_passes(self, data):
        how = data.draw(st.sampled_from(["step", "step", "step", "interesting", "interesting", "back"]))
        if how == "step":
            self.now += data.draw(st.sampled_from(TIME_STEPS))
        elif how == "interesting":  # exactly at (or 1 ms around) a deadline, visible_at, retention or dedup end
            times = self.model.interesting_times()
            if times:
                instant = data.draw(st.sampled_from(times)) + data.draw(st.sampled_from([-1, 0, 0, 1]))
                self.now = max(self.now, instant)
        else:  # a new leader with a slower clock: the partition must not move back in time
            self.now -= data.draw(st.sampled_from([1, 1_000, 60_000, 1_000_000]))

    @rule(data=st.data())
    def something_rare(self, data):
        action = data.draw(st.sampled_from(
            ["purge", "ack", "ack", "configure", "configure", "malformed", "malformed", "malformed", "replay",
             "reopen", "reopen"]
        ))
        if action == "purge":
            purge_id = data.draw(st.sampled_from([None, "p1", "p2"]))  # repeated: a retry, inside its window or not
            self.apply({"op": "purge", "now": self.now} if purge_id is None
                       else {"op": "purge", "now": self.now, "purge_id": purge_id})
        elif action == "ack":
            upto = data.draw(st.integers(0, self.model.next_id))
            self.apply({"op": "ack_dead_letters", "now": self.now, "upto": upto})
        elif action == "configure":
            attrs = data.draw(config_attrs)
            if data.draw(st.integers(0, 4)) == 0:  # allowed only while the partition never held a message
                attrs["fifo"] = not self.model.cfg["fifo"]
            self.apply({"op": "configure", "now": self.now, "attrs": attrs})
        elif action == "malformed":
            builder = data.draw(st.sampled_from(MALFORMED))
            now = self.now + data.draw(st.sampled_from([0, 0, 10_000_000]))  # must not move last_now
            command = builder(now, self.model)
            if command is not None:
                result = self.apply(command)
                assert result[0] == "error", f"test bug: {command!r} is not malformed"
        elif action == "replay" and self.index > 0:
            index = data.draw(st.integers(1, self.index))
            command = data.draw(st.sampled_from([
                {"op": "tick", "now": self.now + 10**9},
                {"op": "purge", "now": self.now},
                {"op": "configure", "now": self.now, "attrs": {"max_messages": 1}},
                {"op": "frobnicate"},
            ]))
            assert self.apply(command, index=index) == ("ok", None)
        elif action == "reopen":
            note("reopen")
            self.store.close()
            self.store = PartitionStore(self.path, self.options)

    # ------------------------------------------------------------------ queries

    @invariant()
    def queries_agree(self):
        store, model, now = self.store, self.model, self.now
        same("applied_index", store.applied_index, model.applied_index)
        same(f"stats({now})", normalize(store.stats(now)), model.stats(now))
        same("config()", normalize(store.config()), model.config())
        for n in (2, 100):
            same(f"peek({n})", peek_view(store.peek(n), model), peek_view(model.peek(n), model))
        same("dead_letters(100)", normalize(store.dead_letters(100)), model.dead_letters(100))
        for n in (1, 3, 100):
            same(f"receivable({now}, {n})", normalize(store.receivable(now, n)), model.receivable(now, n))
        # ... and receivable is a pure query
        same(f"stats({now}) after receivable", normalize(store.stats(now)), model.stats(now))


def same(what, actual, expected):
    assert actual == expected, f"{what}:\n store: {actual!r}\n model: {expected!r}"


def _entry(body=b"x", attrs=None, delay=None, dedup=None, group=None):
    return [body, attrs, delay, dedup, group]


def _enqueue(now, *entries):
    return {"op": "enqueue", "now": now, "messages": list(entries)}


def _batched(now, count, batches):
    """An enqueue of `count` valid messages whose only defect is `batches`."""
    return {**_enqueue(now, *[_entry() for _ in range(count)]), "batches": batches}


# Each builder returns a command with exactly one defect (so the error class is unambiguous), or None.
MALFORMED = [
    lambda now, m: [],
    lambda now, m: "tick",
    lambda now, m: {"op": "frobnicate", "now": now},
    lambda now, m: {"op": "purge", "now": now, "purge_id": ""},
    lambda now, m: {"op": "purge", "now": now, "purge_id": b"p1"},
    lambda now, m: {"op": "tick"},
    lambda now, m: {"op": "tick", "now": "1"},
    lambda now, m: {"op": "tick", "now": float(now)},
    # enqueue
    lambda now, m: {"op": "enqueue", "now": now, "messages": []},
    lambda now, m: {"op": "enqueue", "now": now, "messages": "x"},
    lambda now, m: {"op": "enqueue", "now": now},
    lambda now, m: _enqueue(now, [b"x", None, None, None]),
    lambda now, m: _enqueue(now, _entry(body="x")),
    lambda now, m: _enqueue(now, _entry(attrs=[1])),
    lambda now, m: _enqueue(now, _entry(attrs={f"k{i}": i for i in range(17)})),
    lambda now, m: _enqueue(now, _entry(attrs={"": 1})),
    lambda now, m: _enqueue(now, _entry(attrs={"a" * 129: 1})),
    lambda now, m: _enqueue(now, _entry(attrs={"a": None})),
    lambda now, m: _enqueue(now, _entry(attrs={"a": [1]})),
    lambda now, m: _enqueue(now, _entry(delay=-1)),
    lambda now, m: _enqueue(now, _entry(delay=900_001)),
    lambda now, m: _enqueue(now, _entry(delay="5")),
    lambda now, m: _enqueue(now, _entry(dedup="")),
    lambda now, m: _enqueue(now, _entry(dedup="a" * 129)),
    lambda now, m: _enqueue(now, _entry(dedup=5)),
    lambda now, m: _enqueue(now, _entry(group="")),
    lambda now, m: _enqueue(now, _entry(group="é" * 65)),  # 65 characters, 130 UTF-8 bytes
    lambda now, m: _enqueue(now, _entry(dedup="\ud800")),  # a lone surrogate is not UTF-8
    lambda now, m: _enqueue(now, _entry(group="\ud800")),
    lambda now, m: _enqueue(now, _entry(attrs={"a": "\ud800"})),
    lambda now, m: _enqueue(now, _entry(attrs={"a": 2**64})),  # not msgpack-able
    lambda now, m: _enqueue(now, *[_entry(body=b"") for _ in range(1_001)]),
    lambda now, m: _enqueue(now, _entry(body=b"x" * (m.cfg["max_message_bytes"] + 1))),
    lambda now, m: _enqueue(now, _entry(body=b"", attrs={"k": b"x" * m.cfg["max_message_bytes"]})),
    lambda now, m: _enqueue(now, _entry(), _entry(dedup="a", group=7)),  # a good entry does not save the batch
    lambda now, m: _enqueue(now, _entry(), _entry(body=b"y" * (m.cfg["max_message_bytes"] + 1))),
    lambda now, m: _enqueue(now, _entry(delay=0)) if m.cfg["fifo"] else None,  # FIFO: no per-message delay
    # enqueue batches
    lambda now, m: _batched(now, 1, "x"),
    lambda now, m: _batched(now, 1, []),
    lambda now, m: _batched(now, 1, {"a": 1}),
    lambda now, m: _batched(now, 1, [[b"a", 0]]),
    lambda now, m: _batched(now, 1, [[b"a", 0, 1, 1]]),
    lambda now, m: _batched(now, 1, [b"a"]),
    lambda now, m: _batched(now, 1, [["a", 0, 1]]),  # a str batch id: the frontend sends bytes
    lambda now, m: _batched(now, 1, [[b"", 0, 1]]),
    lambda now, m: _batched(now, 1, [[b"x" * 129, 0, 1]]),
    lambda now, m: _batched(now, 1, [[None, 0, 1]]),
    lambda now, m: _batched(now, 1, [[b"a", -1, 1]]),
    lambda now, m: _batched(now, 1, [[b"a", 0, 0]]),
    lambda now, m: _batched(now, 1, [[b"a", 0, 2]]),
    lambda now, m: _batched(now, 1, [[b"a", 1, 1]]),
    lambda now, m: _batched(now, 2, [[b"a", True, 1]]),
    lambda now, m: _batched(now, 2, [[b"a", 0, 1.0]]),
    lambda now, m: _batched(now, 2, [[b"a", 0, 1]] * 3),  # more segments than messages
    lambda now, m: _batched(now, 3, [[b"a", 0, 2], [b"b1", 1, 2]]),  # overlapping
    lambda now, m: _batched(now, 3, [[b"a", 0, 1], [b"b1", 0, 1]]),  # the same range twice
    lambda now, m: _batched(now, 3, [[b"b1", 2, 1], [b"a", 0, 1]]),  # out of order
    # receive
    lambda now, m: {"op": "receive", "now": now, "max": 0, "visibility_ms": None},
    lambda now, m: {"op": "receive", "now": now, "max": 1_001, "visibility_ms": None},
    lambda now, m: {"op": "receive", "now": now, "max": "1", "visibility_ms": None},
    lambda now, m: {"op": "receive", "now": now, "visibility_ms": None},
    lambda now, m: {"op": "receive", "now": now, "max": 1, "visibility_ms": -1},
    lambda now, m: {"op": "receive", "now": now, "max": 1, "visibility_ms": 43_200_001},
    lambda now, m: {"op": "receive", "now": now, "max": 1, "visibility_ms": 1.0},
    # delete
    lambda now, m: {"op": "delete", "now": now, "receipts": []},
    lambda now, m: {"op": "delete", "now": now, "receipts": "x"},
    lambda now, m: {"op": "delete", "now": now, "receipts": [[0, 1]]},
    lambda now, m: {"op": "delete", "now": now, "receipts": [["x"]]},
    lambda now, m: {"op": "delete", "now": now, "receipts": [[1]]},
    lambda now, m: {"op": "delete", "now": now, "receipts": [[1, 0]]},
    lambda now, m: {"op": "delete", "now": now, "receipts": [[-1, 1]]},
    lambda now, m: {"op": "delete", "now": now, "receipts": [[1, "1"]]},
    lambda now, m: {"op": "delete", "now": now, "receipts": [[1, 1], [0, 1]]},
    lambda now, m: {"op": "delete", "now": now, "receipts": [[1, 1], [2, 1]] * 501},
    # change_visibility
    lambda now, m: {"op": "change_visibility", "now": now, "entries": []},
    lambda now, m: {"op": "change_visibility", "now": now, "entries": [[1, 1, -1]]},
    lambda now, m: {"op": "change_visibility", "now": now, "entries": [[1, 1, 43_200_001]]},
    lambda now, m: {"op": "change_visibility", "now": now, "entries": [[1, 1, "5"]]},
    lambda now, m: {"op": "change_visibility", "now": now, "entries": [[0, 1, 100]]},
    lambda now, m: {"op": "change_visibility", "now": now, "entries": [["x", 1, 100]]},
    # configure
    lambda now, m: {"op": "configure", "now": now, "attrs": [1]},
    lambda now, m: {"op": "configure", "now": now},
    lambda now, m: {"op": "configure", "now": now, "attrs": {"bogus": 1}},
    lambda now, m: {"op": "configure", "now": now, "attrs": {"max_messages": 0}},
    lambda now, m: {"op": "configure", "now": now, "attrs": {"max_messages": 100_000_001}},
    lambda now, m: {"op": "configure", "now": now, "attrs": {"max_messages": 1.5}},
    lambda now, m: {"op": "configure", "now": now, "attrs": {"max_message_bytes": 0}},
    lambda now, m: {"op": "configure", "now": now, "attrs": {"retention_ms": 59_999}},
    lambda now, m: {"op": "configure", "now": now, "attrs": {"visibility_timeout_ms": -1}},
    lambda now, m: {"op": "configure", "now": now, "attrs": {"delay_ms": 900_001}},
    lambda now, m: {"op": "configure", "now": now, "attrs": {"max_receives": 1_001}},
    lambda now, m: {"op": "configure", "now": now, "attrs": {"dedup_window_ms": 999}},
    lambda now, m: {"op": "configure", "now": now, "attrs": {"fifo": "yes"}},
    lambda now, m: {"op": "configure", "now": now, "attrs": {"max_receives": 2, "fifo": 1}},
    # ack_dead_letters
    lambda now, m: {"op": "ack_dead_letters", "now": now, "upto": "x"},
    lambda now, m: {"op": "ack_dead_letters", "now": now},
]


class StoreVsModelSmallAdvanceLimit(StoreVsModel):
    """The same, with advance_limit hit all the time (each advance step handles at most 2 items)."""

    ADVANCE_LIMIT = 2


SETTINGS = dict(
    deadline=None,
    stateful_step_count=60,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)


@pytest.fixture
def bounded_shrinking(monkeypatch):
    """Hypothesis may shrink for up to 300 s, the test's whole timeout: cap it so a failure gets reported."""
    from hypothesis.internal.conjecture import engine

    if hasattr(engine, "MAX_SHRINKING_SECONDS"):
        monkeypatch.setattr(engine, "MAX_SHRINKING_SECONDS", 90)


@pytest.mark.timeout(300)
def test_store_matches_model(bounded_shrinking):
    run_state_machine_as_test(StoreVsModel, settings=settings(max_examples=150, **SETTINGS))


@pytest.mark.timeout(300)
def test_store_matches_model_small_advance_limit(bounded_shrinking):
    run_state_machine_as_test(StoreVsModelSmallAdvanceLimit, settings=settings(max_examples=60, **SETTINGS))


# ---------------------------------------------------------------------- fixed sequences found by the machine


def check_sequence(tmp_path, commands, advance_limit=BIG):
    """Apply `commands` (indexes 1, 2, ...) to both and compare every result and the queries after each."""
    store = PartitionStore(str(tmp_path / "partition"), StoreOptions(advance_limit=advance_limit, scan_limit=BIG))
    model = QueueModel(advance_limit=advance_limit)
    try:
        for index, command in enumerate(commands, 1):
            now = command["now"]
            expected = outcome(lambda: model.apply(index, copy.deepcopy(command)))
            actual = outcome(lambda: store.apply(index, copy.deepcopy(command)))
            same(f"apply({index}, {command!r})", actual, expected)
            same(f"stats after {index}", normalize(store.stats(now)), model.stats(now))
            same(f"dead_letters after {index}", normalize(store.dead_letters(100)), model.dead_letters(100))
            same(f"receivable after {index}", normalize(store.receivable(now, 100)), model.receivable(now, 100))
    finally:
        store.close()


T = T0


def test_dedup_expired_counts_only_forgotten_ids(tmp_path):
    # The second enqueue replaces the memory of "d" (the first window had ended): at T+1500 the remembered "d"
    # (window until T+2000) is not forgotten, so dedup_expired is 0.
    check_sequence(tmp_path, [
        {"op": "configure", "now": T, "attrs": {"dedup_window_ms": 1000}},
        {"op": "enqueue", "now": T, "messages": [[b"a", None, None, "d", None]]},
        {"op": "enqueue", "now": T + 1000, "messages": [[b"b", None, None, "d", None]]},
        {"op": "tick", "now": T + 1500},
        {"op": "enqueue", "now": T + 1500, "messages": [[b"c", None, None, "d", None]]},
        {"op": "tick", "now": T + 2500},
    ])


def test_dead_letter_with_id_below_an_earlier_ack(tmp_path):
    # ack_dead_letters(upto=1) while message 1 is still in flight must not hide its later dead-letter record.
    check_sequence(tmp_path, [
        {"op": "configure", "now": T, "attrs": {"max_receives": 1, "visibility_timeout_ms": 1000}},
        {"op": "enqueue", "now": T, "messages": [[b"a", None, None, None, None]]},
        {"op": "receive", "now": T, "max": 1, "visibility_ms": None},
        {"op": "ack_dead_letters", "now": T, "upto": 1},
        {"op": "tick", "now": T + 1000},
        {"op": "ack_dead_letters", "now": T + 1000, "upto": 1},
    ])


def test_advance_limit_keeps_deadline_id_order(tmp_path):
    # advance_limit=2: the receive at T+1000 returns 1 and 2 (3 waits) then re-receives 1 with deadline T+1000;
    # the next advance must handle (T+1000, 1) and (T+1000, 3), in (deadline, id) order.
    check_sequence(tmp_path, [
        {"op": "enqueue", "now": T, "messages": [[b"a", None, None, None, None]] * 3},
        {"op": "receive", "now": T, "max": 3, "visibility_ms": 1000},
        {"op": "receive", "now": T + 1000, "max": 1, "visibility_ms": 0},
        {"op": "tick", "now": T + 1000},
    ], advance_limit=2)


@pytest.mark.parametrize("field", [3, 4])
def test_non_utf8_dedup_id_or_group_is_invalid(tmp_path, field):
    entry = [b"x", None, None, None, None]
    entry[field] = "\ud800"  # a lone surrogate: no UTF-8 encoding
    check_sequence(tmp_path, [{"op": "enqueue", "now": T, "messages": [entry]}])


def test_batch_ids_forgotten_after_dedup_ids_of_the_same_window_end(tmp_path):
    # advance_limit=1: the tick at T+1000 forgets the dedup id "a" first (E end "a" < E end 0xFF "a"), so the
    # batch "a" is still remembered and the retry is a duplicate; the next tick forgets it.
    retry = {"op": "enqueue", "now": T + 1000, "messages": [[b"x", None, None, None, None]],
             "batches": [[b"a", 0, 1]]}
    check_sequence(tmp_path, [
        {"op": "configure", "now": T, "attrs": {"dedup_window_ms": 1000}},
        {"op": "enqueue", "now": T, "messages": [[b"x", None, None, "a", None], [b"y", None, None, None, None]],
         "batches": [[b"a", 1, 1]]},
        {"op": "tick", "now": T + 1000},
        {"op": "tick", "now": T + 1000},
        retry,
        {"op": "tick", "now": T + 2000},
    ], advance_limit=1)


def test_batch_memory_replaced_after_its_window(tmp_path):
    # The retry at T+1000 comes after the window: enqueued again and remembered anew (the old memory is replaced,
    # not counted as dedup_expired later); a retry of the retry is a duplicate.
    send = {"op": "enqueue", "now": T, "messages": [[b"x", None, None, None, None]] * 2, "batches": [[b"b", 0, 2]]}
    check_sequence(tmp_path, [
        {"op": "configure", "now": T, "attrs": {"dedup_window_ms": 1000, "max_messages": 3}},
        send,
        {**send, "now": T + 999},
        {**send, "now": T + 1000},
        {**send, "now": T + 1500},
        {"op": "tick", "now": T + 1999},
        {"op": "tick", "now": T + 2000},
    ])
