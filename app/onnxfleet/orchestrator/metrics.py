"""Prometheus metrics on the orchestrator's own registry.

Per-container and queue gauges are read from the dispatcher at scrape time (a collector),
so the hot path only pays for the histograms and the status counter.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from onnxfleet.orchestrator.dispatch import Dispatcher

PREFIX = "onnxfleet_orchestrator"
_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class _FleetCollector(Collector):
    def __init__(self, dispatcher: Dispatcher) -> None:
        self.dispatcher = dispatcher

    def collect(self) -> Iterator[Metric]:
        d = self.dispatcher
        depth = GaugeMetricFamily(f"{PREFIX}_queue_depth", "Requests waiting in the FIFO queue")
        depth.add_metric([], len(d.queue))
        yield depth
        inflight = GaugeMetricFamily(
            f"{PREFIX}_container_in_flight", "Requests in flight per container", labels=["container"]
        )
        up = GaugeMetricFamily(
            f"{PREFIX}_container_up",
            "1 when the container passes its readiness checks",
            labels=["container"],
        )
        accepting = GaugeMetricFamily(
            f"{PREFIX}_container_accepting",
            "1 when the container gets new requests (healthy and not draining)",
            labels=["container"],
        )
        served = CounterMetricFamily(
            f"{PREFIX}_container_served", "Answers received per container", labels=["container"]
        )
        errors = CounterMetricFamily(
            f"{PREFIX}_container_errors", "Failed exchanges per container", labels=["container"]
        )
        for c in d.containers:
            inflight.add_metric([c.name], c.inflight)
            up.add_metric([c.name], 1 if c.healthy else 0)
            accepting.add_metric([c.name], 1 if c.accepting else 0)
            served.add_metric([c.name], c.served)
            errors.add_metric([c.name], c.errors)
        yield from (inflight, up, accepting, served, errors)
        rejected = CounterMetricFamily(
            f"{PREFIX}_rejected", "Requests refused a slot, by reason", labels=["reason"]
        )
        for reason in ("queue_full", "queue_timeout", "no_ready_container"):
            rejected.add_metric([reason], d.rejected.get(reason, 0))
        yield rejected
        retries = CounterMetricFamily(f"{PREFIX}_retries", "Requests re-sent to another container")
        retries.add_metric([], d.retried)
        yield retries


class Metrics:
    def __init__(self, dispatcher: Dispatcher) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(_FleetCollector(dispatcher))
        self.queue_wait = Histogram(
            f"{PREFIX}_queue_wait_seconds",
            "Time requests waited for a slot",
            buckets=_BUCKETS,
            registry=self.registry,
        )
        self.duration = Histogram(
            f"{PREFIX}_request_duration_seconds",
            "Time from arrival to answer, forwarded requests",
            buckets=_BUCKETS,
            registry=self.registry,
        )
        self.requests = Counter(
            f"{PREFIX}_requests",
            "Inference answers sent, by HTTP status",
            labelnames=["code"],
            registry=self.registry,
        )
        self._by_code: dict[int, Counter] = {}

    def answered(self, status: int) -> None:
        counter = self._by_code.get(status)
        if counter is None:
            counter = self._by_code[status] = self.requests.labels(code=str(status))
        counter.inc()
