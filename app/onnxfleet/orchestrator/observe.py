"""What the orchestrator tells about itself: health, readiness, /status, /metrics, the dashboard."""

from __future__ import annotations

import os
import time
from importlib import resources
from typing import TYPE_CHECKING, Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from onnxfleet.orchestrator.server import Reply, Request, json_reply

if TYPE_CHECKING:
    from onnxfleet.orchestrator.app import Orchestrator

_METRICS_TYPE = CONTENT_TYPE_LATEST.encode()


class Observe:
    def __init__(self, orchestrator: Orchestrator) -> None:
        self.o = orchestrator

    def status(self) -> dict[str, Any]:
        o = self.o
        d = o.dispatcher
        containers = o.roster.containers
        by_code = o.metrics.by_code
        return {
            "ready": d.any_accepting(),
            "dispatching": d.dispatching,
            "pid": os.getpid(),
            "containers": [c.as_dict() for c in containers],
            "queue": {
                "depth": len(d.queue),
                "bytes": d.queue_bytes,
                "max_length": d.queue_spec.max_length,
                "timeout_s": d.queue_spec.timeout_s,
            },
            "service_time_ms": round(d.service_ewma_s * 1000.0, 3),
            "batching": o.batcher.status(),
            "totals": {
                "answered": sum(by_code.values()),
                "by_status": {str(k): v for k, v in sorted(by_code.items())},
                "in_flight": sum(c.inflight for c in containers),
                "served": sum(c.served for c in containers),
                "errors": sum(c.errors for c in containers),
                "retries": o.forwarder.retried,
                "rejected": dict(d.rejected),
            },
            "jobs": {
                "stored": len(o.jobs.jobs),
                "max": o.jobs.max_jobs,
                "bytes": o.jobs.bytes,
                "max_bytes": o.jobs.max_bytes,
            },
            "request_bodies": None
            if o.body_budget is None
            else {
                "held": o.body_budget.held,
                "drawn": o.body_budget.used,
                "max": o.body_budget.capacity,
            },
            "history": o.history.view(),
            "uptime_s": round(time.time() - o.started, 1),
        }

    def get_status(self, _request: Request) -> Reply:
        return json_reply(self.status())

    def get_metrics(self, _request: Request) -> Reply:
        return Reply(200, generate_latest(self.o.metrics.registry), [(b"Content-Type", _METRICS_TYPE)])

    def healthz(self, _request: Request) -> Reply:
        return json_reply({"status": "alive"})

    def readyz(self, _request: Request) -> Reply:
        ready = self.o.dispatcher.any_accepting()
        return json_reply(
            {
                "status": "ready" if ready else "no ready container",
                "ready_containers": sum(c.accepting for c in self.o.roster.containers),
                "dispatching": self.o.dispatcher.dispatching,
            },
            status=200 if ready else 503,
        )

    def dashboard(self, _request: Request) -> Reply:
        page = resources.files("onnxfleet.orchestrator").joinpath("dashboard.html").read_bytes()
        return Reply(200, page, [(b"Content-Type", b"text/html; charset=utf-8")])
