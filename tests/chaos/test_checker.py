"""The checker: every check must fail on a history that breaks it and pass on valid ones (hand-made and modelled)."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dmq_server.chaos.checker import FAILING_CHECKS, check
from dmq_server.chaos.history import Delivery, History

from .builder import Builder, ModelQueue


def failing(history: History, **kwargs: float) -> set[str]:
    return {v.check for v in check(history, **kwargs).violations}


# ------------------------------------------------------------------ payload checks

def test_a_clean_history_passes_and_renders_a_table() -> None:
    b = Builder()
    b.send("a", 0, 5)
    b.send("b", 1, 6)
    b.delete(b.deliver("a", 10, 12), 13, 14)
    b.delete(b.deliver("b", 11, 13, consumer="c2"), 14, 15)
    result = check(b.history())
    assert result.ok, result.table()
    assert (result.deliveries, result.delivered_payloads, result.duplicates) == (2, 2, 0)
    table = result.table()
    assert "RESULT: PASS" in table and "lost" in table and "max unavailability" in table


def test_an_acknowledged_send_never_delivered_is_lost() -> None:
    b = Builder()
    b.send("a", 0, 5)
    b.send("b", 0, 5)
    b.delete(b.deliver("b", 10, 12), 13, 14)
    result = check(b.history())
    assert result.lost == ["a"] and failing(b.history()) == {"lost"}
    assert "RESULT: FAIL" in result.table() and "lost: a:" in result.table()


@pytest.mark.parametrize("outcome", ["unknown", "failed"])
def test_an_unacknowledged_send_may_be_missing(outcome: str) -> None:
    b = Builder()
    b.send("a", 0, 5, outcome, error="Timeout")
    assert check(b.history()).ok


def test_an_unknown_send_that_is_delivered_is_fine() -> None:
    b = Builder()
    b.send("a", 0, 5, "unknown")
    b.delete(b.deliver("a", 10, 12), 13, 14)
    assert check(b.history()).ok


def test_a_failed_send_that_is_delivered_fails() -> None:
    b = Builder()
    b.send("a", 0, 5, "failed", error="QueueFull")
    b.delete(b.deliver("a", 10, 12), 13, 14)
    assert failing(b.history()) == {"failed_delivered"}


def test_a_failed_then_acknowledged_retry_counts_as_acknowledged() -> None:
    b = Builder()
    b.send("a", 0, 5, "failed")
    b.send("a", 6, 8, "ok")
    b.delete(b.deliver("a", 10, 12), 13, 14)
    result = check(b.history())
    assert result.ok and result.payloads["acknowledged"] == 1


def test_a_delivery_nobody_sent_is_unexpected() -> None:
    b = Builder()
    b.send("a", 0, 5)
    b.delete(b.deliver("a", 10, 12), 13, 14)
    b.delete(b.deliver("ghost", 11, 13, mid="0.99"), 14, 15)
    result = check(b.history())
    assert result.unexpected == ["ghost"] and failing(b.history()) == {"unexpected"}


def test_a_delivery_before_its_send_was_invoked_fails() -> None:
    b = Builder()
    b.send("a", 100, 105)
    b.delete(b.deliver("a", 10, 20), 106, 107)
    assert failing(b.history()) == {"delivered_before_sent"}
    assert check(b.history(), slack_ms=90).ok  # within the clock allowance


# ------------------------------------------------------------------ leases

def test_a_redelivery_after_the_lease_expired_is_a_duplicate_not_a_violation() -> None:
    b = Builder(vt=1000)
    b.send("a", 0, 5)
    b.deliver("a", 10, 12, count=1, consumer="c1")  # never deleted: expires at >= 1010
    b.delete(b.deliver("a", 1020, 1022, count=2, consumer="c2"), 1023, 1024)
    result = check(b.history())
    assert result.ok, result.table()
    assert result.duplicates == 1


def test_two_consumers_holding_one_message_at_once_fail() -> None:
    b = Builder(vt=1000)
    b.send("a", 0, 5)
    first = b.deliver("a", 10, 12, count=1, consumer="c1")
    b.delete(b.deliver("a", 500, 502, count=2, consumer="c2"), 503, 504)  # c1's lease runs until >= 1010
    b.delete(first, 505, 506, "failed")
    assert failing(b.history()) == {"lease"}


def test_a_redelivery_within_the_clock_allowance_passes() -> None:
    b = Builder(vt=1000)
    b.send("a", 0, 5)
    b.deliver("a", 10, 12, count=1)
    b.delete(b.deliver("a", 1000, 1004, count=2, consumer="c2"), 1005, 1006)  # answered 6 ms before 1010
    assert failing(b.history(), slack_ms=0) == {"lease"}
    assert check(b.history(), slack_ms=10).ok


@pytest.mark.parametrize("outcome,ok", [("ok", True), ("unknown", True), ("failed", False)])
def test_a_release_ends_a_lease_early_unless_it_failed(outcome: str, ok: bool) -> None:
    b = Builder(vt=10_000)
    b.send("a", 0, 5)
    first = b.deliver("a", 10, 12, count=1)
    b.release(first, 20, 22, outcome)
    b.delete(b.deliver("a", 30, 32, count=2, consumer="c2"), 33, 34)
    assert check(b.history()).ok is ok


def test_a_receive_count_handed_out_twice_fails() -> None:
    b = Builder(vt=100)
    b.send("a", 0, 5)
    b.deliver("a", 10, 12, count=1, consumer="c1")
    b.delete(b.deliver("a", 500, 502, count=1, consumer="c2"), 503, 504)
    assert failing(b.history()) == {"lease"}


def test_receive_counts_must_follow_real_time() -> None:
    b = Builder(vt=100)
    b.send("a", 0, 5)
    b.deliver("a", 500, 502, count=1, consumer="c1")  # count 1 was received after count 2 had been answered
    b.delete(b.deliver("a", 10, 12, count=2, consumer="c2"), 13, 14)
    assert "lease" in failing(b.history())


def test_a_message_received_after_an_acknowledged_delete_fails() -> None:
    b = Builder(vt=100)
    b.send("a", 0, 5)
    b.delete(b.deliver("a", 10, 12, count=1), 13, 14)
    b.deliver("a", 500, 502, count=2, consumer="c2")
    assert failing(b.history()) == {"deleted_redelivered"}


def test_an_unknown_delete_does_not_make_a_redelivery_a_violation() -> None:
    b = Builder(vt=100)
    b.send("a", 0, 5)
    b.delete(b.deliver("a", 10, 12, count=1), 13, 14, "unknown")
    b.delete(b.deliver("a", 500, 502, count=2, consumer="c2"), 503, 504)
    assert check(b.history()).ok


# ------------------------------------------------------------------ message ids

def test_one_message_id_carrying_two_payloads_fails() -> None:
    b = Builder()
    b.send("a", 0, 5, mid="0.1")
    b.send("b", 0, 5, mid="0.2")
    b.delete(b.deliver("a", 10, 12, mid="0.1"), 13, 14)
    b.delete(b.deliver("b", 10, 12, mid="0.1", consumer="c2"), 13, 14)
    assert "message_id" in failing(b.history())


def test_an_acknowledged_message_id_that_never_shows_up_fails() -> None:
    b = Builder()
    b.send("a", 0, 5, mid="0.1")
    b.delete(b.deliver("a", 10, 12, mid="0.7"), 13, 14)  # the payload came back under another id
    assert failing(b.history()) == {"message_id"}


# ------------------------------------------------------------------ FIFO

def test_fifo_in_order_with_one_in_flight_passes() -> None:
    b = Builder(fifo=True)
    b.send("a", 0, 5, group="g")
    b.send("b", 50, 55, group="g")
    b.delete(b.deliver("a", 60, 62, group="g"), 63, 64)
    b.delete(b.deliver("b", 65, 67, group="g", consumer="c2"), 68, 69)
    assert check(b.history()).ok


def test_fifo_later_message_delivered_before_the_earlier_was_deleted_fails() -> None:
    b = Builder(fifo=True, vt=5)
    b.send("a", 0, 5, group="g")
    b.send("b", 50, 55, group="g")
    b.delete(b.deliver("b", 60, 62, group="g"), 63, 64)
    b.delete(b.deliver("a", 65, 67, group="g", consumer="c2"), 68, 69)
    assert failing(b.history()) == {"fifo_order"}


def test_fifo_earlier_message_never_delivered_is_an_order_violation_and_lost() -> None:
    b = Builder(fifo=True)
    b.send("a", 0, 5, group="g")
    b.send("b", 50, 55, group="g")
    b.delete(b.deliver("b", 60, 62, group="g"), 63, 64)
    assert failing(b.history()) == {"fifo_order", "lost"}


def test_fifo_concurrent_or_unknown_sends_have_no_order() -> None:
    b = Builder(fifo=True)
    b.send("a", 0, 10, group="g")
    b.send("b", 5, 9, group="g", producer="p2")  # invoked before a was acknowledged
    b.send("c", 11, 12, "unknown", group="g")
    b.send("d", 13, 14, group="g", producer="p2")  # after c invoked, but c's enqueue time is unknown
    b.delete(b.deliver("b", 20, 22, group="g"), 23, 24)
    b.delete(b.deliver("a", 25, 27, group="g"), 28, 29)
    b.delete(b.deliver("d", 30, 32, group="g"), 33, 34)
    b.delete(b.deliver("c", 35, 37, group="g"), 38, 39)
    assert check(b.history()).ok


def test_fifo_groups_are_independent() -> None:
    b = Builder(fifo=True)
    b.send("a", 0, 5, group="g1")
    b.send("b", 6, 9, group="g2")
    b.delete(b.deliver("b", 20, 22, group="g2"), 40, 41)
    b.delete(b.deliver("a", 25, 27, group="g1"), 42, 43)  # both in flight at once: different groups
    assert check(b.history()).ok


def test_fifo_two_messages_of_a_group_in_flight_at_once_fail() -> None:
    b = Builder(fifo=True, vt=1000)
    b.send("a", 0, 10, group="g")
    b.send("b", 5, 9, group="g", producer="p2")  # concurrent sends: either order is fine ...
    first = b.deliver("b", 20, 22, group="g")
    b.delete(b.deliver("a", 100, 102, group="g", consumer="c2"), 200, 201)  # ... but not both held at once
    b.delete(first, 300, 301)
    assert failing(b.history()) == {"fifo_in_flight"}


def test_fifo_next_message_after_the_lease_expired_passes() -> None:
    b = Builder(fifo=True, vt=100)
    b.send("a", 0, 10, group="g")
    b.send("b", 5, 9, group="g", producer="p2")
    b.deliver("b", 20, 22, group="g")  # expires at >= 120, then it is eligible again and comes first
    b.delete(b.deliver("b", 130, 132, group="g", count=2), 133, 134)
    b.delete(b.deliver("a", 140, 142, group="g", consumer="c2"), 143, 144)
    assert check(b.history()).ok


def test_standard_queues_have_no_fifo_checks() -> None:
    b = Builder(fifo=False)
    b.send("a", 0, 5, group=None)
    b.send("b", 6, 9, group=None)
    b.delete(b.deliver("b", 20, 22), 40, 41)
    b.delete(b.deliver("a", 25, 27, consumer="c2"), 42, 43)
    assert check(b.history()).ok


# ------------------------------------------------------------------ faults, liveness, availability

def test_liveness_bound_on_recovery() -> None:
    b = Builder()
    b.fault("kill", 100, 200, 1_200)
    assert check(b.history()).ok and check(b.history()).max_recovery_ms == 1_000
    b.fault("partition", 2_000, 3_000, 6_000)
    assert failing(b.history()) == {"liveness"}
    assert check(b.history(), recovery_bound_ms=5_000).ok


@pytest.mark.parametrize("end,recovered", [(None, None), (200, None)])
def test_a_fault_never_healed_or_never_recovered_fails(end: float | None, recovered: float | None) -> None:
    b = Builder()
    b.fault("pause", 100, end, recovered)
    assert failing(b.history()) == {"liveness"}


def test_max_unavailability_is_the_longest_gap_between_acknowledged_sends() -> None:
    b = Builder()
    for i, t in enumerate([0, 100, 200, 2_200, 2_300]):
        b.send(f"m{i}", t, t + 10, mid=f"0.{i}")
    b.send("late", 5_000, 9_000, "unknown")
    b.mark("drain", 2_400)
    result = check(b.history())
    assert result.max_unavailability_ms == 2_000  # 210 -> 2210
    assert "q partition 0" in result.unavailability_where


def test_every_failing_check_has_a_row_in_the_table() -> None:
    table = check(Builder().history()).table()
    for name in FAILING_CHECKS:
        assert name.replace("_", " ") in table


# ------------------------------------------------------------------ properties over a model server

_action = st.one_of(
    st.tuples(st.just("send"), st.sampled_from(["g1", "g2"]),
              st.sampled_from(["ok", "ok", "ok", "unknown_enqueued", "unknown_lost", "failed"])),
    st.tuples(st.just("receive"), st.sampled_from(["c1", "c2", "c3"]), st.sampled_from([0, 5, 50, 400])),
    st.tuples(st.just("end"), st.integers(0, 50), st.booleans()),
    st.tuples(st.just("tick"), st.sampled_from([1, 3, 20, 200, 600])),
)


def _run_model(fifo: bool, actions: list[tuple], jitter: list[int]) -> History:
    b = Builder(fifo=fifo)
    model = ModelQueue(b, fifo)
    # Each call takes effect at model.now; its client interval spans a few ms either side, so calls overlap.
    for i, action in enumerate(actions):
        before, after = jitter[i % len(jitter)], jitter[(i + 1) % len(jitter)]
        kind = action[0]
        if kind == "send":
            model.send(action[1], action[2], before, after)
        elif kind == "receive":
            model.receive(action[1], action[2], before, after)
        elif kind == "end":
            model.end_lease(action[1], action[2], before, after)
        else:
            model.tick(action[1])
        model.tick(1)
    model.drain()
    return b.history()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fifo=st.booleans(), actions=st.lists(_action, min_size=10, max_size=80),
       jitter=st.lists(st.integers(0, 8), min_size=1, max_size=5))
def test_histories_of_a_correct_queue_always_pass(fifo: bool, actions: list[tuple], jitter: list[int]) -> None:
    history = _run_model(fifo, actions, jitter)
    result = check(history, slack_ms=0)
    assert result.ok, result.table()


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fifo=st.booleans(), actions=st.lists(_action, min_size=1, max_size=60),
       jitter=st.lists(st.integers(0, 8), min_size=1, max_size=5), pick=st.integers(0, 1000))
def test_dropping_every_delivery_of_an_acknowledged_payload_is_caught(fifo: bool, actions: list[tuple],
                                                                    jitter: list[int], pick: int) -> None:
    history = _run_model(fifo, actions, jitter)
    acked = sorted({op.payload_id for op in history.sends if op.outcome == "ok"})
    if not acked:
        return
    victim = acked[pick % len(acked)]
    dropped = {d.delivery_id for d in history.deliveries if d.payload_id == victim}
    history.deliveries = [d for d in history.deliveries if d.payload_id != victim]
    history.lease_ends = [e for e in history.lease_ends if e.delivery_id not in dropped]
    assert victim in check(history, slack_ms=0).lost


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fifo=st.booleans(), actions=st.lists(_action, max_size=60),
       jitter=st.lists(st.integers(0, 8), min_size=1, max_size=5))
def test_an_injected_phantom_delivery_is_caught(fifo: bool, actions: list[tuple], jitter: list[int]) -> None:
    history = _run_model(fifo, actions, jitter)
    history.deliveries.append(Delivery("c9", "q", "phantom", "0.999999", "g1" if fifo else None, 1, 5, 6, 10,
                                       delivery_id=10**9))
    assert check(history, slack_ms=0).unexpected == ["phantom"]


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(actions=st.lists(_action, max_size=60), jitter=st.lists(st.integers(0, 8), min_size=1, max_size=5),
       pick=st.integers(0, 1000))
def test_a_delivery_copied_to_a_second_consumer_is_caught(actions: list[tuple], jitter: list[int],
                                                          pick: int) -> None:
    """Hand the same delivery (same receive_count) to another consumer: a lease violation, whatever else."""
    history = _run_model(False, actions, jitter)
    if not history.deliveries:
        return
    original = history.deliveries[pick % len(history.deliveries)]
    history.deliveries.append(dataclasses.replace(original, consumer="thief", delivery_id=10**9))
    assert "lease" in {v.check for v in check(history, slack_ms=0).violations}
