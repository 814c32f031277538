"""What the orchestrator tells about itself: health, readiness, /status, /metrics, the dashboard."""

from __future__ import annotations

import base64
import functools
import hashlib
import os
import re
import time
from importlib import resources
from typing import TYPE_CHECKING, Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from onnxfleet.orchestrator.messages import Reply, Request, json_reply

if TYPE_CHECKING:
    from onnxfleet.orchestrator.autoscaler import AutoscalerRecord
    from onnxfleet.orchestrator.dispatcher import Dispatcher
    from onnxfleet.orchestrator.history import History
    from onnxfleet.orchestrator.jobs import JobStore
    from onnxfleet.orchestrator.limits import BodyBudget
    from onnxfleet.orchestrator.metrics import Metrics
    from onnxfleet.orchestrator.pool import ModelPool, Models

_METRICS_TYPE = CONTENT_TYPE_LATEST.encode()


class Observe:
    """The handlers that tell about the fleet: they read the parts, and change none."""

    def __init__(
        self,
        models: Models,
        metrics: Metrics,
        jobs: JobStore,
        history: History,
        body_budget: BodyBudget | None = None,
        *,
        autoscaler: AutoscalerRecord | None = None,
    ) -> None:
        self.models = models
        self.metrics = metrics
        self.jobs = jobs
        self.history = history
        self.body_budget = body_budget  # the HTTP servers' (None: no server, as in unit tests)
        self.autoscaler = autoscaler
        self.started = time.time()

    def status(self) -> dict[str, Any]:
        """The fleet: every model (its versions, queue, containers), and the totals. The
        top-level ``queue``, ``service_time_ms`` and ``batching`` are the default model's."""
        models = self.models
        d = models.default.dispatcher
        pools = list(models)
        containers = [(pool, c) for pool in pools for c in pool.containers]
        by_code = self.metrics.totals()
        rejected: dict[str, int] = {}
        for pool in pools:
            for code, count in pool.dispatcher.rejected.items():
                rejected[code] = rejected.get(code, 0) + count
        return {
            "ready": models.any_accepting(),
            "dispatching": d.dispatching,
            "pid": os.getpid(),
            "default_model": models.default.name,
            "models": [_model_status(pool, pool is models.default) for pool in pools],
            "containers": [{**c.as_dict(), "model": pool.name} for pool, c in containers],
            "queue": _queue_status(d),
            "service_time_ms": round(d.service_ewma_s * 1000.0, 3),
            "batching": models.default.batcher.status(),
            "totals": {
                "answered": sum(by_code.values()),
                "by_status": {str(k): v for k, v in sorted(by_code.items())},
                "in_flight": sum(c.inflight for _, c in containers),
                "served": sum(c.served for _, c in containers),
                "errors": sum(c.errors for _, c in containers),
                "retries": sum(pool.forwarder.retried for pool in pools),
                "rejected": rejected,
            },
            "jobs": {
                "stored": len(self.jobs.jobs),
                "max": self.jobs.max_jobs,
                "bytes": self.jobs.bytes,
                "max_bytes": self.jobs.max_bytes,
            },
            "request_bodies": None
            if self.body_budget is None
            else {
                "held": self.body_budget.held,
                "drawn": self.body_budget.used,
                "max": self.body_budget.capacity,
            },
            "history": self.history.view(),
            "autoscaler": None if self.autoscaler is None else self.autoscaler.view(),
            "uptime_s": round(time.time() - self.started, 1),
        }

    def get_status(self, _request: Request) -> Reply:
        return json_reply(self.status())

    def get_metrics(self, _request: Request) -> Reply:
        return Reply(200, generate_latest(self.metrics.registry), [(b"Content-Type", _METRICS_TYPE)])

    def healthz(self, _request: Request) -> Reply:
        return json_reply({"status": "alive"})

    def readyz(self, _request: Request) -> Reply:
        ready = self.models.any_accepting()
        return json_reply(
            {
                "status": "ready" if ready else "no ready container",
                "ready_containers": sum(c.accepting for pool in self.models for c in pool.containers),
                "dispatching": self.models.default.dispatcher.dispatching,
            },
            status=200 if ready else 503,
        )

    def dashboard(self, _request: Request) -> Reply:
        page, headers = _dashboard()
        return Reply(200, page, headers)


@functools.cache
def _dashboard() -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """The page and its headers. The Content-Security-Policy allows the page's own inline
    script and style (by hash) and fetches to its origin, nothing else: no other script,
    no frame around it, no form sent anywhere."""
    page = resources.files("onnxfleet.orchestrator").joinpath("dashboard.html").read_bytes()

    def hashes(tag: bytes) -> str:
        bodies = re.findall(rb"<" + tag + rb">(.*?)</" + tag + rb">", page, re.DOTALL)
        return " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(b).digest()).decode()}'" for b in bodies)

    policy = (
        f"default-src 'none'; script-src {hashes(b'script')}; style-src {hashes(b'style')}; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )
    return page, [
        (b"Content-Type", b"text/html; charset=utf-8"),
        (b"Content-Security-Policy", policy.encode()),
        (b"X-Content-Type-Options", b"nosniff"),
        (b"Referrer-Policy", b"no-referrer"),
        (b"Cache-Control", b"no-store"),
    ]


def _queue_status(d: Dispatcher) -> dict[str, Any]:
    return {
        "depth": len(d.queue),
        "bytes": d.queue_bytes,
        "max_length": d.queue_spec.max_length,
        "timeout_s": d.queue_spec.timeout_s,
    }


def _model_status(pool: ModelPool, default: bool) -> dict[str, Any]:
    d = pool.dispatcher
    return {
        "name": pool.name,
        "default": default,
        "versions": {v: [c.name for c in cs] for v, cs in pool.versions().items()},
        "containers": [c.name for c in pool.containers],
        "ready_containers": sum(c.accepting for c in pool.containers),
        "queue": _queue_status(d),
        "service_time_ms": round(d.service_ewma_s * 1000.0, 3),
        "batching": pool.batcher.status(),
        "canary": None if pool.canary is None else pool.canary.view(time.monotonic()),
    }
