"""Prometheus metrics of one worker process (a registry of its own, no globals)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.exposition import generate_latest

from onnxfleet.buckets import LATENCY_BUCKETS
from onnxfleet.worker.gate import InferenceGate

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)


class WorkerMetrics:
    def __init__(self, gate: InferenceGate, is_ready: Callable[[], bool]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "onnxfleet_worker_requests",
            "HTTP requests answered, by endpoint (route), method and status code",
            ["endpoint", "method", "code"],
            registry=r,
        )
        self.request_seconds = Histogram(
            "onnxfleet_worker_request_duration_seconds",
            "Seconds from request start to response, by endpoint (route)",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.inference_seconds = Histogram(
            "onnxfleet_worker_inference_duration_seconds",
            "Seconds inside onnxruntime per inference (excludes waiting for a slot and JSON)",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_seconds = Histogram(
            "onnxfleet_worker_slot_wait_seconds",
            "Seconds an admitted inference request waited for a free slot",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "onnxfleet_worker_batch_size",
            "Rows (first dimension) per inference",
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        in_flight = Gauge(
            "onnxfleet_worker_inference_requests_in_flight",
            "Inference requests being handled now (waiting for a slot or running)",
            registry=r,
        )
        in_flight.set_function(lambda: gate.admitted)
        running = Gauge(
            "onnxfleet_worker_inferences_running",
            "Inferences inside onnxruntime now (at most --max-concurrency)",
            registry=r,
        )
        running.set_function(lambda: gate.running)
        Gauge("onnxfleet_worker_max_concurrency", "Inference slots (--max-concurrency)", registry=r).set(
            gate.slots
        )
        ready = Gauge("onnxfleet_worker_ready", "1 once the model is loaded and warmed up", registry=r)
        ready.set_function(lambda: 1.0 if is_ready() else 0.0)
        self.warm_up_seconds = Gauge(
            "onnxfleet_worker_warm_up_seconds", "Seconds the warm-up inference took", registry=r
        )
        self.model = Info("onnxfleet_worker_model", "The model served and where", registry=r)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
