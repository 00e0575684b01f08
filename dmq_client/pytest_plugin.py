"""pytest plugin of dmq (entry point `pytest11: dmq`): the `dmq_cluster` fixture, real dmq nodes for a test.

    def test_send(dmq_cluster):                      # one node, defaults
        with Connection(dmq_cluster.addresses[0]) as node:
            node.call("create_queue", {"name": "q", "attributes": {}})

    @pytest.mark.dmq_cluster(nodes=3, limits={"max_queues": 10})
    def test_failover(dmq_cluster):
        dmq_cluster.kill(0)
        ...

The fixture (function scope) yields a started, ready dmq_client.testing.LocalCluster and stops its processes
after the test. The marker takes the arguments of dmq_client.testing.cluster() (nodes defaults to 1 here;
root defaults to a directory under the test's tmp_path, so configs, data and logs stay inspectable after a
failure).
When a test fails, the log tails of the nodes of every running cluster are added to its report.

Installed pytest plugins load in every pytest run, so this module imports only pytest at import time;
dmq_client.testing is imported when a test asks for the fixture.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from dmq_client.testing import LocalCluster

MARKER = "dmq_cluster"
_CLUSTER = pytest.StashKey["LocalCluster"]()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", f"{MARKER}(nodes=1, **options): options of the dmq_cluster fixture, as for "
                   "dmq_client.testing.cluster(); every keyword but nodes, root, keep, token, client_tls, "
                   "ready_timeout and env is a config table (node, cluster, raft, auth, tls, limits)")


@pytest.fixture
def dmq_cluster(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator["LocalCluster"]:
    """A started, ready dmq cluster (dmq_client.testing.LocalCluster); options: @pytest.mark.dmq_cluster."""
    from dmq_client.testing import cluster

    marker = request.node.get_closest_marker(MARKER)
    args: tuple[Any, ...] = marker.args if marker else ()
    kwargs: dict[str, Any] = dict(marker.kwargs) if marker else {}
    if len(args) > 1:
        raise TypeError(f"@pytest.mark.{MARKER} takes at most one positional argument (nodes), got {args!r}")
    if args:
        kwargs["nodes"] = args[0]
    kwargs.setdefault("nodes", 1)  # the cheapest cluster that answers; ask for 3 when a test needs replicas
    kwargs.setdefault("root", tmp_path / "dmq-cluster")
    with cluster(**kwargs) as local:
        request.node.stash[_CLUSTER] = local
        yield local


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    testing = sys.modules.get("dmq_client.testing")
    if not report.failed or testing is None:  # not imported: no cluster has run in this process
        return
    clusters = list(testing.ACTIVE)
    own = item.stash.get(_CLUSTER, None)
    if own is not None and own not in clusters and own.root.exists():  # already closed, logs still there
        clusters.insert(0, own)
    testing.add_log_sections(report, clusters)
