"""docs/CLIENT.md's examples run, in order, in one namespace, against a real 3-node cluster."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from dmq_client.testing import cluster

pytestmark = pytest.mark.timeout(180)

DOC = Path(__file__).resolve().parents[2] / "docs" / "CLIENT.md"
BLOCK = re.compile(r"^```python\n(.*?)^```", re.MULTILINE | re.DOTALL)  # "```python no-run" does not match
NODES_LINE = 'NODES = ["127.0.0.1:7400"]'


def examples() -> list[str]:
    blocks = BLOCK.findall(DOC.read_text())
    assert blocks, "no python examples in docs/CLIENT.md"
    assert NODES_LINE in blocks[0], "the first example must define NODES as the guide shows it"
    return blocks


def test_client_guide_examples_run() -> None:
    blocks = examples()
    with cluster(3) as local:
        namespace: dict[str, Any] = {"__name__": "client_guide"}
        for number, block in enumerate(blocks, 1):
            code = block.replace(NODES_LINE, f"NODES = {local.addresses!r}")
            try:
                exec(compile(code, f"docs/CLIENT.md example {number}", "exec"), namespace)
            except Exception as exc:
                raise AssertionError(f"docs/CLIENT.md example {number} failed:\n{block}") from exc
        assert namespace["client"]._closed, "the guide's last example closes the client"
