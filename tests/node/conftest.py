"""On a failing test, add the tail of every running test cluster node's log to the report (tests/node/nodes.py)."""

from __future__ import annotations

import pytest

from . import nodes


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):  # type: ignore[no-untyped-def]
    outcome = yield
    report = outcome.get_result()
    if report.failed and nodes.ACTIVE:
        for cluster in nodes.ACTIVE:
            report.sections.append((f"dmq node logs ({cluster.root.name})", cluster.logs()))
