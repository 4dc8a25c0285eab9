"""Prometheus metrics, one registry per app so several apps (tests) never share counters."""

from __future__ import annotations

import os
import socket
import time
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import generate_latest
from prometheus_client.gc_collector import GCCollector

from gateway.heap import HeapCollector

MAX_CACHED_LABELS = 1024


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        # Collections by generation and what start-up froze: see gateway/heap.py.
        GCCollector(registry=self.registry)
        self.registry.register(HeapCollector())
        self.requests = Counter(
            "gateway_http_requests",
            "HTTP requests answered, by route and status",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "gateway_http_request_duration_seconds",
            "Time to answer an HTTP request",
            ["method", "route"],
            registry=self.registry,
        )

        self.deliveries = Counter(
            "gateway_deliveries",
            "Delivery attempts by outcome (delivered, retry, dead, disabled, skipped)",
            ["outcome"],
            registry=self.registry,
        )
        # Leased at fan-out: sent the moment they were stored. By a claim: they waited in the
        # queue (for room, behind older messages, or while the worker was busy claiming). A
        # growing share by claim says the worker is not keeping up.
        self.leased = Counter(
            "gateway_deliveries_leased",
            "Messages leased to the delivery worker, by how (fan-out: sent as stored; claim: queued)",
            ["by"],
            registry=self.registry,
        )
        self.attempt_latency = Histogram(
            "gateway_delivery_attempt_duration_seconds",
            "Time from sending a delivery to its answer",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 15),
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "gateway_delivery_queue_depth",
            "Deliveries waiting to be sent (pending or in flight)",
            registry=self.registry,
        )
        self.oldest_pending = Gauge(
            "gateway_delivery_oldest_pending_seconds",
            "Age of the oldest delivery still waiting",
            registry=self.registry,
        )
        self.log_bytes = Gauge(
            "gateway_storage_log_bytes",
            "Size of the SQLite write-ahead log file (kept to about 512 MB; 0 on PostgreSQL)",
            registry=self.registry,
        )
        self.pushes = Counter(
            "gateway_pushes",
            "Pushes received, by source and result (stored, duplicate, rejected, unauthorized)",
            ["source", "result"],
            registry=self.registry,
        )
        self._push_counters: dict[tuple[str, str], Any] = {}
        # Each process keeps its own counters; this says which process answered the scrape.
        self.process = process_name()
        Gauge(
            "gateway_process_info",
            "The gateway process these metrics belong to (host:pid, and worker name)",
            ["process"],
            registry=self.registry,
        ).labels(self.process).set(1)

    def count_push(self, source: str, result: str) -> None:
        """One more push of ``source`` with ``result``. The counter's child is kept: ``labels``
        looks it up under a lock and checks the values on every call (3 µs of every push)."""
        child = self._push_counters.get((source, result))
        if child is None:
            child = self.pushes.labels(source, result)
            if len(self._push_counters) < MAX_CACHED_LABELS:  # sources are configured, few
                self._push_counters[(source, result)] = child
        child.inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


def route_label(request: web.Request) -> str:
    """The route pattern, not the path, so ids don't explode label cardinality."""
    info = request.match_info
    if info.http_exception is not None:
        return "unmatched"
    resource = info.route.resource
    return resource.canonical if resource is not None else "unmatched"


class RequestMetrics:
    """Counts each answered request and its latency by method, route and status."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        # labels() looks the child up (and checks the values) on every call: keep them.
        self._cached: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    def record(self, request: web.Request, status: int, started: float) -> None:
        """``started``: the request's ``time.perf_counter()`` when it reached the app."""
        method = request.method
        route = route_label(request)
        key = (method, route, status)
        found = self._cached.get(key)
        if found is None:
            found = (
                self.metrics.requests.labels(method, route, str(status)),
                self.metrics.latency.labels(method, route),
            )
            if len(self._cached) < MAX_CACHED_LABELS:  # routes are patterns, methods are free
                self._cached[key] = found
        counter, histogram = found
        counter.inc()
        histogram.observe(time.perf_counter() - started)


def process_name() -> str:
    """This process in metrics: host and pid, and its worker name under ``serve --workers``."""
    name = f"{socket.gethostname()}:{os.getpid()}"
    worker = os.environ.get("GATEWAY_PROCESS_NAME")
    return f"{name}:{worker}" if worker else name
