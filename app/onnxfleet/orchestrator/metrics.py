"""Prometheus metrics on the orchestrator's own registry, all built at scrape time.

Per-container and queue gauges are read from the models' pools; the histograms and the
status counter are plain counts kept by the event loop, the only thread that touches
them: prometheus_client's own Histogram takes a lock per bucket update and cost about
6 µs per observation here, two of them per request. With a version-2 routing table the
per-model series (queue depth, queue wait, durations, answers) carry a ``model`` label;
a version-1 table's have none, as before.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from onnxfleet.buckets import LATENCY_BUCKETS

if TYPE_CHECKING:
    from onnxfleet.orchestrator.pool import Models

PREFIX = "onnxfleet_orchestrator"


def model_labels(name: str, by_name: bool) -> dict[str, str]:
    """The labels of a model's series: none for a version-1 table (its names are kept)."""
    return {"model": name} if by_name else {}


class _FleetCollector(Collector):
    def __init__(self, models: Models) -> None:
        self.models = models

    def collect(self) -> Iterator[Metric]:
        pools = list(self.models)
        depth = Metric(f"{PREFIX}_queue_depth", "Requests waiting in the FIFO queue", "gauge")
        for pool in pools:
            depth.add_sample(
                f"{PREFIX}_queue_depth", model_labels(pool.name, pool.by_name), len(pool.dispatcher.queue)
            )
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
        for c in self.models.containers():
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
            rejected.add_metric([reason], sum(p.dispatcher.rejected.get(reason, 0) for p in pools))
        yield rejected
        retries = CounterMetricFamily(f"{PREFIX}_retries", "Requests re-sent to another container")
        retries.add_metric([], sum(p.forwarder.retried for p in pools))
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
        self.add_to(metric, {})
        return metric

    def add_to(self, metric: Metric, labels: dict[str, str]) -> None:
        """This histogram's samples, with ``labels``, into ``metric`` (one series of several)."""
        total = 0
        for bound, count in zip(self.bounds, self.counts, strict=True):
            total += count
            le: str = floatToGoString(bound)  # type: ignore[no-untyped-call]
            metric.add_sample(f"{self.name}_bucket", {**labels, "le": le}, total)
        metric.add_sample(f"{self.name}_count", labels, total)
        metric.add_sample(f"{self.name}_sum", labels, self.sum)
        metric.add_sample(f"{self.name}_created", labels, self.created)


class LabelledHistograms:
    """One LeanHistogram per label set (a model), collected as one metric."""

    def __init__(self, name: str, documentation: str, buckets: tuple[float, ...]) -> None:
        self.name = name
        self.documentation = documentation
        self.buckets = buckets
        self.series: dict[tuple[tuple[str, str], ...], LeanHistogram] = {}

    def of(self, labels: tuple[tuple[str, str], ...]) -> LeanHistogram:
        histogram = self.series.get(labels)
        if histogram is None:
            histogram = self.series[labels] = LeanHistogram(self.name, self.documentation, self.buckets)
        return histogram

    def collect(self) -> Metric:
        metric = Metric(self.name, self.documentation, "histogram")
        if not self.series:  # no answer yet: an empty series, as before (not kept: a label may come)
            LeanHistogram(self.name, self.documentation, self.buckets).add_to(metric, {})
        for labels, histogram in self.series.items():
            histogram.add_to(metric, dict(labels))
        return metric


class _AnswerCollector(Collector):
    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        m = self.metrics
        yield m.queue_wait.collect()
        yield m.duration.collect()
        requests = Metric(f"{PREFIX}_requests", "Inference answers sent, by HTTP status", "counter")
        for (labels, code), count in m.by_code.items():
            series = {**dict(labels), "code": str(code)}
            requests.add_sample(f"{PREFIX}_requests_total", series, count)
            requests.add_sample(f"{PREFIX}_requests_created", series, m.code_created[labels, code])
        yield requests


Labels = tuple[tuple[str, str], ...]  # a model's labels, hashable: () or (("model", name),)


class Metrics:
    def __init__(self, models: Models) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(_FleetCollector(models))
        self.queue_wait = LabelledHistograms(
            f"{PREFIX}_queue_wait_seconds", "Seconds requests waited for a slot", LATENCY_BUCKETS
        )
        self.duration = LabelledHistograms(
            f"{PREFIX}_request_duration_seconds",
            "Seconds from arrival to answer, forwarded requests",
            LATENCY_BUCKETS,
        )
        self.by_code: dict[tuple[Labels, int], int] = {}
        self.code_created: dict[tuple[Labels, int], float] = {}
        self.registry.register(_AnswerCollector(self))

    def answered(self, status: int, elapsed: float, labels: Labels = ()) -> None:
        self.duration.of(labels).observe(elapsed)
        by_code = self.by_code
        key = (labels, status)
        if key in by_code:
            by_code[key] += 1
        else:
            by_code[key] = 1
            self.code_created[key] = time.time()

    def totals(self) -> dict[int, int]:
        """Answers by status, all models."""
        totals: dict[int, int] = {}
        for (_labels, status), count in self.by_code.items():
            totals[status] = totals.get(status, 0) + count
        return totals
