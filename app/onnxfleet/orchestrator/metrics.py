"""Prometheus metrics on the orchestrator's own registry, all built at scrape time.

Per-container and queue gauges are read from the dispatcher; the histograms and the
status counter are plain counts kept by the event loop, the only thread that touches
them: prometheus_client's own Histogram takes a lock per bucket update and cost about
6 µs per observation here, two of them per request.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from onnxfleet.orchestrator.dispatcher import Dispatcher
from onnxfleet.orchestrator.exchange import Forwarder

PREFIX = "onnxfleet_orchestrator"
_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class _FleetCollector(Collector):
    def __init__(self, dispatcher: Dispatcher, forwarder: Forwarder) -> None:
        self.dispatcher = dispatcher
        self.forwarder = forwarder

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
        retries.add_metric([], self.forwarder.retried)
        yield retries


class LeanHistogram:
    """A Prometheus histogram for one thread: a count per bucket, no lock."""

    def __init__(self, name: str, documentation: str, buckets: tuple[float, ...]) -> None:
        self.name = name
        self.documentation = documentation
        self.bounds = [*buckets, float("inf")]
        self.counts = [0] * len(self.bounds)
        self.sum = 0.0
        self.created = time.time()

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1  # le: value <= bound
        self.sum += value

    def collect(self) -> Metric:
        metric = Metric(self.name, self.documentation, "histogram")
        total = 0
        for bound, count in zip(self.bounds, self.counts, strict=True):
            total += count
            le: str = floatToGoString(bound)  # type: ignore[no-untyped-call]
            metric.add_sample(f"{self.name}_bucket", {"le": le}, total)
        metric.add_sample(f"{self.name}_count", {}, total)
        metric.add_sample(f"{self.name}_sum", {}, self.sum)
        metric.add_sample(f"{self.name}_created", {}, self.created)
        return metric


class _AnswerCollector(Collector):
    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        m = self.metrics
        yield m.queue_wait.collect()
        yield m.duration.collect()
        requests = CounterMetricFamily(
            f"{PREFIX}_requests", "Inference answers sent, by HTTP status", labels=["code"]
        )
        for code, count in m.by_code.items():
            requests.add_metric([str(code)], count, created=m.code_created[code])
        yield requests


class Metrics:
    def __init__(self, dispatcher: Dispatcher, forwarder: Forwarder) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(_FleetCollector(dispatcher, forwarder))
        self.queue_wait = LeanHistogram(
            f"{PREFIX}_queue_wait_seconds", "Time requests waited for a slot", _BUCKETS
        )
        self.duration = LeanHistogram(
            f"{PREFIX}_request_duration_seconds", "Time from arrival to answer, forwarded requests", _BUCKETS
        )
        self.by_code: dict[int, int] = {}
        self.code_created: dict[int, float] = {}
        self.registry.register(_AnswerCollector(self))

    def answered(self, status: int, elapsed: float) -> None:
        self.duration.observe(elapsed)
        by_code = self.by_code
        if status in by_code:
            by_code[status] += 1
        else:
            by_code[status] = 1
            self.code_created[status] = time.time()
