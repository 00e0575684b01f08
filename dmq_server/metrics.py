"""Prometheus metrics of one node (prometheus-client, its own registry, served at /metrics).

Counters and histograms are updated as requests run; queue and partition gauges are read at scrape time from the
partitions this node hosts (a collector), so a scrape costs a few store queries and nothing is kept twice. Queue
gauges cover the partitions led here: summing a gauge over the nodes gives the queue's total. Label values are
bounded: operations are the protocol's (others count as "unknown"), queues and principals come from the
metadata and the config.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

MESSAGE_EVENTS = ("sent", "received", "redelivered", "deleted", "empty_receives", "dead_lettered")
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0)

# What the collector reads: (queue name, partition, group id, role, term, commit index, applied index,
# follower lag in entries or None when not leader, store stats or None when not leader)
PartitionSample = tuple[str, int, str, str, int, int, int, int | None, dict[str, int] | None]


class NodeMetrics:
    def __init__(self, node_id: str, operations: Iterable[str]) -> None:
        self.registry = CollectorRegistry()
        self._operations = frozenset(operations)
        self._messages = Counter("dmq_messages", "Messages by event, queue and principal",
                                 ["event", "queue", "principal"], registry=self.registry)
        self._requests = Histogram("dmq_request_seconds", "Request latency by operation, as the node served it",
                                   ["op"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self._errors = Counter("dmq_errors", "Errors returned to clients, by code", ["code"], registry=self.registry)
        self._forwarded = Counter("dmq_forwarded_requests", "Requests, or a partition's part of one, forwarded to "
                                  "the partition's leader on another node, by operation", ["op"],
                                  registry=self.registry)
        self._fsync = Histogram("dmq_raft_fsync_seconds", "Raft log fsync latency",
                                buckets=LATENCY_BUCKETS, registry=self.registry)
        self._samples: Callable[[], list[PartitionSample]] = list
        self.registry.register(_PartitionCollector(self))
        ProcessCollector(registry=self.registry)  # process_*: CPU, memory, open files of the node

    def sample_partitions_with(self, sampler: Callable[[], list[PartitionSample]]) -> None:
        self._samples = sampler

    def messages(self, event: str, queue: str, principal: str, count: int) -> None:
        assert event in MESSAGE_EVENTS, event
        if count:
            self._messages.labels(event, queue, principal).inc(count)

    def request(self, op: str, seconds: float, error_code: str | None) -> None:
        self._requests.labels(op if op in self._operations else "unknown").observe(seconds)
        if error_code is not None:
            self.error(error_code)

    def error(self, code: str) -> None:
        self._errors.labels(code).inc()

    def forwarded(self, op: str) -> None:
        self._forwarded.labels(op).inc()

    def fsync(self, seconds: float) -> None:
        self._fsync.observe(seconds)

    def serve(self, host: str, port: int) -> Any:
        """Serve /metrics over HTTP from a daemon thread; returns (server, thread)."""
        return start_http_server(port, addr=host, registry=self.registry)


class _PartitionCollector(Collector):
    def __init__(self, metrics: NodeMetrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterable[GaugeMetricFamily]:
        samples = self._metrics._samples()
        queue_gauges = {
            "visible": GaugeMetricFamily("dmq_queue_visible_messages", "Messages ready to receive",
                                         labels=["queue"]),
            "in_flight": GaugeMetricFamily("dmq_queue_in_flight_messages", "Messages received and not yet deleted",
                                           labels=["queue"]),
            "delayed": GaugeMetricFamily("dmq_queue_delayed_messages", "Messages waiting for their delay",
                                         labels=["queue"]),
            "oldest": GaugeMetricFamily("dmq_queue_oldest_message_age_seconds", "Age of the oldest message",
                                        labels=["queue"]),
            "dead": GaugeMetricFamily("dmq_queue_dead_letters_pending", "Dead letters not yet moved to the "
                                      "dead-letter queue", labels=["queue"]),
        }
        totals: dict[str, dict[str, float]] = {}
        role = GaugeMetricFamily("dmq_partition_leader", "1 when this node leads the partition",
                                 labels=["queue", "partition"])
        term = GaugeMetricFamily("dmq_partition_term", "Raft term", labels=["queue", "partition"])
        commit = GaugeMetricFamily("dmq_partition_commit_index", "Raft commit index", labels=["queue", "partition"])
        applied = GaugeMetricFamily("dmq_partition_applied_index", "Last index applied to the store",
                                    labels=["queue", "partition"])
        lag = GaugeMetricFamily("dmq_partition_follower_lag_entries", "Entries the slowest follower is behind "
                                "(reported by the leader)", labels=["queue", "partition"])
        for queue, partition, _group, state, raft_term, commit_index, applied_index, follower_lag, stats in samples:
            labels = [queue, str(partition)]
            role.add_metric(labels, 1.0 if state == "leader" else 0.0)
            term.add_metric(labels, raft_term)
            commit.add_metric(labels, commit_index)
            applied.add_metric(labels, applied_index)
            if follower_lag is not None:
                lag.add_metric(labels, follower_lag)
            if stats is not None:
                total = totals.setdefault(queue, {"visible": 0, "in_flight": 0, "delayed": 0, "oldest": 0, "dead": 0})
                total["visible"] += stats["ready"]
                total["in_flight"] += stats["in_flight"]
                total["delayed"] += stats["delayed"]
                total["dead"] += stats["dead_letters"]
                total["oldest"] = max(total["oldest"], stats["oldest_age_ms"] / 1000)
        for queue, total in totals.items():
            for name, gauge in queue_gauges.items():
                gauge.add_metric([queue], total[name])
        yield from queue_gauges.values()
        yield from (role, term, commit, applied, lag)
