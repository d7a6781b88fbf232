"""Prometheus metrics of the node (``GET /metrics``), in a registry of its own.

Counters and the job-duration histogram are counted where the work happens (they start
at zero with the process, as Prometheus expects); the state of the index (series and
jobs by state, queue depth, unsent results and their age) and the free disk space are
read when scraped, so they are never stale.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

    from node.store.repository import Repository

REGISTRY = CollectorRegistry(auto_describe=True)

INSTANCES_RECEIVED = Counter(
    "lge_node_instances_received", "Instances stored and acknowledged (C-STORE, STOW-RS)",
    registry=REGISTRY,
)  # fmt: skip
BYTES_RECEIVED = Counter(
    "lge_node_received_bytes", "Bytes of instances stored and acknowledged", registry=REGISTRY
)
ASSOCIATIONS = Counter(
    "lge_node_associations", "DICOM associations by outcome", ["outcome"], registry=REGISTRY
)
REFUSED = Counter(
    "lge_node_instances_refused", "Instances refused, by DIMSE status", ["status"],
    registry=REGISTRY,
)  # fmt: skip
EVENTS = Counter(
    "lge_node_events", "Operator events (lge-node status) by kind", ["kind"], registry=REGISTRY
)
JOB_SECONDS = Histogram(
    "lge_node_job_duration_seconds", "Duration of finished jobs", ["kind"],
    buckets=(0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600), registry=REGISTRY,
)  # fmt: skip


class IndexCollector(Collector):
    """Gauges read from the index and the data folder at scrape time."""

    def __init__(self, repository: Repository, free_bytes: Callable[[], int]) -> None:
        self.repository = repository
        self.free_bytes = free_bytes

    def collect(self) -> Iterator[Metric]:
        counts = self.repository.counts()
        series = GaugeMetricFamily("lge_node_series", "Received series by state", labels=["state"])
        for state, n in sorted(counts.series.items()):
            series.add_metric([state], n)
        yield series
        jobs = GaugeMetricFamily("lge_node_jobs", "Jobs by state", labels=["state"])
        for state, n in sorted(counts.jobs.items()):
            jobs.add_metric([state], n)
        yield jobs
        yield GaugeMetricFamily(
            "lge_node_queue_depth", "Jobs waiting for a worker", value=counts.jobs.get("queued", 0)
        )
        yield GaugeMetricFamily(
            "lge_node_outbox_pending", "Result objects not yet delivered",
            value=counts.sends_pending,
        )  # fmt: skip
        yield GaugeMetricFamily(
            "lge_node_outbox_oldest_seconds", "Age of the oldest undelivered result object",
            value=counts.oldest_pending_s or 0.0,
        )  # fmt: skip
        yield GaugeMetricFamily(
            "lge_node_stored_instances", "Instances held (received and results)",
            value=counts.instances,
        )  # fmt: skip
        yield GaugeMetricFamily(
            "lge_node_disk_free_bytes", "Free space on the data folder's disk",
            value=self.free_bytes(),
        )  # fmt: skip


_watched: list[IndexCollector] = []


def watch_index(repository: Repository, free_bytes: Callable[[], int]) -> IndexCollector:
    """Register the index gauges (a node started again in the same process replaces them)."""
    while _watched:
        REGISTRY.unregister(_watched.pop())
    collector = IndexCollector(repository, free_bytes)
    REGISTRY.register(collector)
    _watched.append(collector)
    return collector
