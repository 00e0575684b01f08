"""kill -9 at random instants: reopening gives exactly the state of replaying commands 1..applied_index."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from rocksdict import Options, Rdict

from dmq_server.store import PartitionStore

from .workload import run

REPO = Path(__file__).resolve().parents[2]
CHILD = Path(__file__).with_name("crash_child.py")


def _contents(path: str) -> list[tuple[bytes, bytes]]:
    db = Rdict(path, Options(raw_mode=True))
    try:
        return list(db.items())
    finally:
        db.close()


def _run_child_and_kill(path: str, seed: int, fifo: bool, run_for: float) -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    child = subprocess.Popen([sys.executable, str(CHILD), path, str(seed), "fifo" if fifo else "standard"],
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == b"ready", child.stderr.read() if child.stderr else b""
        time.sleep(run_for)
        assert child.poll() is None, f"child exited early: {child.stderr.read() if child.stderr else b''!r}"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)


@pytest.mark.parametrize("round_", range(6))
def test_kill_9_recovers_exactly_the_applied_prefix(tmp_path, round_) -> None:
    rng = random.Random(round_)
    seed, fifo = 1_000 + round_, round_ % 2 == 1
    crashed = str(tmp_path / "crashed")
    _run_child_and_kill(crashed, seed, fifo, run_for=rng.uniform(0.5, 2.5))

    reopened = PartitionStore(crashed)
    applied = reopened.applied_index
    reopened.close()
    assert applied > 10, "the child should have applied commands before the kill"

    replayed = str(tmp_path / "replayed")
    store = PartitionStore(replayed)
    assert run(store, seed, fifo, upto=applied) == applied
    store.close()
    assert _contents(crashed) == _contents(replayed)

    # The crashed partition carries on from where it stopped, like a restarted replica replaying its log.
    store = PartitionStore(crashed)
    try:
        assert store.apply(applied, {"op": "purge", "now": 0}) is None
        store.apply(applied + 1, {"op": "tick", "now": 1_800_000_000_000})
    finally:
        store.close()
