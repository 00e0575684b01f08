"""On a failing test, add the tail of every running test cluster node's log to the report (tests/node/nodes.py
runs its clusters on dmq_client.testing, which lists the running ones in ACTIVE)."""

from __future__ import annotations

import pytest

from dmq_client.testing import ACTIVE, add_log_sections


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):  # type: ignore[no-untyped-def]
    outcome = yield
    report = outcome.get_result()
    if report.failed and ACTIVE:
        add_log_sections(report, ACTIVE)
