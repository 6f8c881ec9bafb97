"""Prometheus metrics of one app (its own registry, so apps never share counters) and the
batcher figures that /stats shows.

    peakknn_http_requests_total{method, route, status}        requests answered (route: the template)
    peakknn_http_errors_total{method, route, status}          those answered 4xx / 5xx
    peakknn_http_request_duration_seconds{method, route}      latency histogram
    peakknn_search_latency_seconds                            a search request, queued to answered
    peakknn_search_batch_queries                              queries per index search (histogram)
    peakknn_search_batch_duration_seconds                     time of one batched index search
    peakknn_search_queue_depth{collection}                    searches waiting
    peakknn_points{collection}                                points stored
    peakknn_memory_bytes{collection}                          the index's memory_bytes
    peakknn_wal_bytes{collection}, peakknn_wal_seq{collection}, peakknn_wal_fsyncs_total{collection}
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
RECENT = 2048  # search latencies behind the p50 / p99 of /stats


def size_bucket(n: int) -> str:
    """The /stats batch-size bucket of n queries: "1", "2-3", "4-7", ..."""
    low = 1 << (n.bit_length() - 1)
    return "1" if low == 1 else f"{low}-{2 * low - 1}"


class Metrics:
    """state() -> [(name, collection, batcher or None)] is read at each scrape."""

    def __init__(self, state: Callable[[], list], max_batch: int):
        self.registry = CollectorRegistry()
        self.requests = Counter("peakknn_http_requests", "HTTP requests answered", ["method", "route", "status"], registry=self.registry)
        self.errors = Counter("peakknn_http_errors", "HTTP requests answered with a 4xx or 5xx status", ["method", "route", "status"], registry=self.registry)
        self.latency = Histogram("peakknn_http_request_duration_seconds", "HTTP request latency", ["method", "route"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.search_latency = Histogram("peakknn_search_latency_seconds", "search requests, queued to answered", buckets=LATENCY_BUCKETS, registry=self.registry)
        batch_buckets = sorted({1 << i for i in range(max(1, max_batch).bit_length() + 1)} | {max_batch})
        self.batch_queries = Histogram("peakknn_search_batch_queries", "queries per batched index search", buckets=batch_buckets, registry=self.registry)
        self.batch_seconds = Histogram("peakknn_search_batch_duration_seconds", "time of one batched index search", buckets=LATENCY_BUCKETS, registry=self.registry)
        self.registry.register(_LiveState(state))
        self._lock = threading.Lock()
        self._sizes = {size_bucket(1 << i): 0 for i in range(max(1, max_batch).bit_length())}
        self._recent = collections.deque(maxlen=RECENT)  # search latencies, ms
        self.batches = 0
        self.searches = 0

    def http(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests.labels(method, route, str(status)).inc()
        if status >= 400:
            self.errors.labels(method, route, str(status)).inc()
        self.latency.labels(method, route).observe(seconds)

    def batch(self, queries: int, requests: int, seconds: float) -> None:
        self.batch_queries.observe(queries)
        self.batch_seconds.observe(seconds)
        with self._lock:
            bucket = size_bucket(queries)
            self._sizes[bucket] = self._sizes.get(bucket, 0) + 1
            self.batches += 1

    def search(self, seconds: float) -> None:
        self.search_latency.observe(seconds)
        with self._lock:
            self._recent.append(seconds * 1000.0)
            self.searches += 1

    def batcher_stats(self) -> dict:
        """The "batcher" part of /stats, without queue_depth."""
        with self._lock:
            recent = np.array(self._recent, dtype=np.float64)
            sizes = dict(self._sizes)
            batches, searches = self.batches, self.searches
        latency = {"p50": float(np.percentile(recent, 50)), "p99": float(np.percentile(recent, 99))} if recent.size else {"p50": None, "p99": None}
        return {"batch_sizes": sizes, "latency_ms": latency, "batches": batches, "requests": searches}

    def text(self) -> bytes:
        return generate_latest(self.registry)


class _LiveState:
    """Gauges read from the collections at scrape time (no stale series after a delete)."""

    def __init__(self, state: Callable[[], list]):
        self.state = state

    def describe(self):
        return []

    def collect(self):
        families = {
            "points": GaugeMetricFamily("peakknn_points", "points stored", labels=["collection"]),
            "memory": GaugeMetricFamily("peakknn_memory_bytes", "bytes held by the index", labels=["collection"]),
            "queue": GaugeMetricFamily("peakknn_search_queue_depth", "searches waiting", labels=["collection"]),
            "wal_bytes": GaugeMetricFamily("peakknn_wal_bytes", "bytes in the write-ahead log", labels=["collection"]),
            "wal_seq": GaugeMetricFamily("peakknn_wal_seq", "last write-ahead log seq", labels=["collection"]),
            "fsyncs": CounterMetricFamily("peakknn_wal_fsyncs", "write-ahead log fsyncs", labels=["collection"]),
        }
        for name, c, batcher in self.state():
            f = c.figures()
            families["points"].add_metric([name], f["count"])
            families["memory"].add_metric([name], f["memory_bytes"])
            families["queue"].add_metric([name], batcher.queue_depth if batcher is not None else 0)
            families["wal_bytes"].add_metric([name], f["wal_bytes"])
            families["wal_seq"].add_metric([name], f["seq"])
            families["fsyncs"].add_metric([name], f["fsyncs"])
        yield from families.values()
