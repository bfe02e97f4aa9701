"""Prometheus metrics of one server (`GET /metrics`, text exposition format).

Names (all prefixed `nexusgen_`): `requests_total{endpoint,status}`, `request_latency_seconds{endpoint}`,
`queue_depth`, `queue_wait_seconds`, `batch_size{task}` (items per model call), `errors_total{kind}`
(every error response by its code), `rejected_total{reason}` (refused at the door: queue full),
`dropped_total{reason}` (queued work dropped: client gone, deadline passed), `images_total{task}`.
Each server has its own registry, so several apps in one process (tests) do not collide.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 32, 64)
CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    """The server's counters, gauges and histograms."""

    def __init__(self):
        self.registry = registry = CollectorRegistry()
        self.requests = Counter("nexusgen_requests", "HTTP requests by endpoint and status",
                                ["endpoint", "status"], registry=registry)
        self.latency = Histogram("nexusgen_request_latency_seconds", "request latency by endpoint", ["endpoint"],
                                 buckets=LATENCY_BUCKETS, registry=registry)
        self.depth = Gauge("nexusgen_queue_depth", "requests waiting for the model worker", registry=registry)
        self.wait = Histogram("nexusgen_queue_wait_seconds", "time from queueing to the start of the model call",
                              buckets=LATENCY_BUCKETS, registry=registry)
        self.batch_sizes = Histogram("nexusgen_batch_size", "items per batched model call", ["task"],
                                     buckets=BATCH_BUCKETS, registry=registry)
        self.errors = Counter("nexusgen_errors", "error responses by kind (their error code)", ["kind"],
                              registry=registry)
        self.rejections = Counter("nexusgen_rejected", "requests refused before queueing", ["reason"],
                                  registry=registry)
        self.drops = Counter("nexusgen_dropped", "queued requests dropped before running", ["reason"],
                             registry=registry)
        self.images = Counter("nexusgen_images", "images produced", ["task"], registry=registry)

    def request(self, endpoint: str, status: int, seconds: float) -> None:
        self.requests.labels(endpoint, str(status)).inc()
        self.latency.labels(endpoint).observe(seconds)

    def queue_depth(self, depth: int) -> None:
        self.depth.set(depth)

    def queue_wait(self, seconds: float) -> None:
        self.wait.observe(seconds)

    def batch(self, task: str, size: int) -> None:
        self.batch_sizes.labels(task).observe(size)

    def error(self, kind: str) -> None:
        self.errors.labels(kind).inc()

    def rejected(self, reason: str) -> None:
        self.rejections.labels(reason).inc()

    def dropped(self, reason: str) -> None:
        self.drops.labels(reason).inc()

    def produced(self, task: str, count: int) -> None:
        self.images.labels(task).inc(count)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
