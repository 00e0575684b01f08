"""The short form of the fault-tolerance suite (docs/RELIABILITY.md): about three minutes (160 s of faults, then the drain) of a recorded
workload on a 3-node cluster, standard and FIFO queues with several partitions, every fault kind at least twice
(kill -9 of a leader and of a random node, SIGSTOP pauses, majority/minority partitions, leader isolation,
full-cluster kill -9, lost unsynced writes on a minority), then a drain and the total-queue checker."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from dmq_server.chaos.faults import KINDS
from dmq_server.chaos.runner import run
from dmq_server.cli import main


@pytest.mark.timeout(600)
def test_short_chaos_run_loses_nothing_and_recovers(tmp_path: Path) -> None:
    lines: list[str] = []
    result = run(160, seed=20240602, out_dir=str(tmp_path), min_each=2, log=lines.append)
    text = result.text  # type: ignore[attr-defined]
    print("\n".join(lines))
    print(text)
    logs = "".join(f"\n--- {p.name}:\n" + "\n".join(p.read_text(errors="replace").splitlines()[-40:])
                   for p in sorted((tmp_path / "cluster").glob("node*.log")))
    assert len(result.lost) == 0, f"{text}{logs}"
    assert len(result.unexpected) == 0, f"{text}{logs}"
    for kind in KINDS:
        assert result.faults[kind] >= 2, f"{kind} ran {result.faults[kind]} time(s)\n{text}"
    assert result.payloads["acknowledged"] >= 1000, text
    assert result.ok, f"{text}{logs}"


def test_chaos_command_refuses_unknown_fault_kinds(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["chaos", "--kinds", "kill_all,meteor", "--out", str(tmp_path / "run")])
    assert result.exit_code == 2 and "unknown: meteor" in result.output, result.output
    assert not (tmp_path / "run").exists()  # refused before anything started
