"""The orchestrator's HTTP application: routes, tokens, answers, the life of the process."""

from __future__ import annotations

import asyncio
import gc
import hmac
import json
import logging
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from onnxfleet.orchestrator.dispatcher import Dispatcher
from onnxfleet.orchestrator.errors import (
    BadRequest,
    HTTPError,
    NotFound,
    ShuttingDown,
    Unauthorized,
)
from onnxfleet.orchestrator.exchange import Exchange, Forwarder
from onnxfleet.orchestrator.forward import request_bytes, response_headers
from onnxfleet.orchestrator.health import HealthChecker
from onnxfleet.orchestrator.history import History
from onnxfleet.orchestrator.jobs import Job, JobStore, result_body
from onnxfleet.orchestrator.metrics import Metrics
from onnxfleet.orchestrator.roster import Container, Roster
from onnxfleet.orchestrator.router import Router
from onnxfleet.orchestrator.routes import HealthSpec, RoutesError, RoutingTable, load_table
from onnxfleet.orchestrator.server import Reply, Request, Route, error_reply, json_reply

access_log = logging.getLogger("onnxfleet.orchestrator.access")
log = logging.getLogger("onnxfleet.orchestrator")

DEADLINE_HEADER = "X-Request-Timeout-Ms"
_DEADLINE = DEADLINE_HEADER.lower().encode()
_METRICS_TYPE = CONTENT_TYPE_LATEST.encode()


@dataclass(frozen=True)
class Settings:
    routes_path: str
    admin_token: str | None = None
    api_token: str | None = None
    upstream_timeout_s: float = 60.0
    retries: int = 2
    job_ttl_s: float = 300.0
    max_jobs: int = 1000
    max_body_bytes: int = 8 * 1024 * 1024
    health_defaults: HealthSpec = field(default_factory=HealthSpec)
    access_log: bool = True


def _credentials(token: str | None) -> bytes | None:
    return f"Bearer {token}".encode() if token is not None else None


def _check_token(request: Request, expected: bytes | None) -> None:
    if expected is not None and not hmac.compare_digest(request.header(b"authorization") or b"", expected):
        raise Unauthorized()


def _deadline(request: Request) -> float | None:
    """The instant ``X-Request-Timeout-Ms`` sets, or None (400 for anything but 1 … 86400000)."""
    value = request.header(_DEADLINE)
    if value is None:
        return None
    text = value.strip()
    if not (0 < len(text) <= 8 and text.isdigit() and 0 < int(text) <= 86_400_000):
        shown = text[:40].decode("latin-1")
        raise BadRequest(
            f"{DEADLINE_HEADER}: expected a whole number of milliseconds between 1 and 86400000, "
            f"got '{shown}'"
        )
    return time.monotonic() + int(text) / 1000.0


class Orchestrator:
    def __init__(self, settings: Settings, table: RoutingTable) -> None:
        self.settings = settings
        self.table = table
        self.roster = Roster()
        self.dispatcher = Dispatcher(table.queue, self.roster)
        self.forwarder = Forwarder(self.dispatcher, settings.upstream_timeout_s, settings.retries)
        self.health = HealthChecker(self.dispatcher, self.forwarder, table.health)
        self.metrics = Metrics(self.dispatcher, self.forwarder)
        self.jobs = JobStore(settings.job_ttl_s, settings.max_jobs)
        self.history = History(lambda: len(self.dispatcher.queue))
        self.api_credentials = _credentials(settings.api_token)
        self.admin_credentials = _credentials(settings.admin_token)
        self.started = time.time()
        self.tasks: set[asyncio.Task[Any]] = set()
        self.router = self._routes()

    def _routes(self) -> Router:
        router = Router()
        infer_guard, api_guard, admin_guard = self._infer_guard, self._api_guard, self._admin_guard
        router.add("POST", "/run_model", self.infer, infer_guard)
        router.add("POST", "/v2/models/{name}/infer", self.infer, infer_guard)
        router.add("POST", "/jobs", self.submit_job, self._job_guard)
        router.add("GET", "/jobs/{id}", self.get_job, api_guard)
        router.add("POST", "/admin/reload", self.admin_reload, admin_guard)
        router.add("POST", "/admin/drain", self.admin_drain, admin_guard)
        router.add("POST", "/admin/ready", self.admin_ready, admin_guard)
        router.add("GET", "/status", self.get_status)
        router.add("GET", "/metrics", self.get_metrics)
        router.add("GET", "/healthz", self.healthz)
        router.add("GET", "/readyz", self.readyz)
        router.add("GET", "/", self.dashboard)
        return router

    def route(self, request: Request) -> Route:
        return self.router.route(request)

    # -- lifecycle ----------------------------------------------------------------------------
    async def start(self) -> None:
        # Each request allocates a few hundred short-lived objects: with the default
        # thresholds the cyclic GC runs every few requests and its full passes walk every
        # long-lived object too. Freezing what exists after start and collecting the
        # young generation less often cut the CPU time per request by about 15 % in
        # bench/orchestrator_vs_haproxy.py (1 ms service time).
        gc.freeze()
        gc.set_threshold(50_000, 50, 100)
        self.dispatcher.apply(self.table.containers, self.table.queue)
        self.health.sync(self.table.health)
        self.history.start()

    def idle(self) -> bool:
        """Nothing queued and nothing waiting for a container."""
        return not self.dispatcher.queue and all(c.inflight == 0 for c in self.roster.containers)

    def fail_queue(self) -> None:
        """Stopping: whatever still waits in the queue gets 503 ``shutting_down``."""
        d = self.dispatcher
        for ex in list(d.queue.values()):
            d.withdraw(ex)
            ex.finish(None, ShuttingDown("the orchestrator is stopping: retry", retry_after=1))

    async def stop(self) -> None:
        self.history.stop()
        for task in list(self.tasks):
            task.cancel()
        await self.health.close()
        self.roster.close()

    def reload(self) -> dict[str, Any]:
        """Re-read the routing table (raises RoutesError and keeps the current one)."""
        table = load_table(self.settings.routes_path, self.settings.health_defaults)
        changes = self.dispatcher.apply(table.containers, table.queue)
        self.health.sync(table.health)
        self.table = table
        log.info("routing table reloaded", extra=changes)
        return {**changes, "containers": len(table.containers)}

    def _later(self, request: Request, work: Coroutine[Any, Any, Reply]) -> None:
        """Answer ``request`` when ``work`` is done (the few handlers that wait)."""
        task = asyncio.get_running_loop().create_task(work)
        self.tasks.add(task)

        def done(task: asyncio.Task[Reply]) -> None:
            self.tasks.discard(task)
            if task.cancelled():
                return
            exc = task.exception()
            if exc is None:
                request.respond(task.result())
            elif isinstance(exc, HTTPError):
                request.respond(error_reply(exc))
            else:
                log.error("%s %s failed", request.method, request.path, exc_info=exc)
                request.respond(
                    error_reply(HTTPError("the orchestrator failed on this request (see its log)"))
                )

        task.add_done_callback(done)

    # -- guards: checks on the request head, before its body is read ----------------------------
    def _api_guard(self, request: Request) -> None:
        _check_token(request, self.api_credentials)

    def _admin_guard(self, request: Request) -> None:
        _check_token(request, self.admin_credentials)

    def _infer_guard(self, request: Request) -> None:
        _check_token(request, self.api_credentials)
        request.state = _deadline(request)

    def _job_guard(self, request: Request) -> None:
        self._infer_guard(request)
        if self.jobs.full():
            raise HTTPError(
                f"{self.jobs.max_jobs} jobs are stored (--max-jobs): retry later",
                status=429,
                code="too_many_jobs",
                retry_after=1,
            )

    # -- outcomes: one path for direct answers and jobs -----------------------------------------
    def answer(self, ex: Exchange, method: str, path: str, remote: str | None) -> Reply:
        """The reply for a finished exchange, counted in the metrics and the access log."""
        container = ex.container.name if ex.container is not None else None
        wait_ms = b"%.3f" % (ex.waited * 1000.0)
        response = ex.response
        if response is not None:
            self.metrics.queue_wait.observe(ex.waited)
            headers = response_headers(response)
            headers.append((b"X-Container", (container or "").encode()))
            headers.append((b"X-Queue-Wait-Ms", wait_ms))
            reply = Reply(response.status, response.body, headers)
        else:
            error = ex.error or HTTPError("the request ended without an answer")
            reply = error_reply(error)
            if container is not None:
                reply.headers.append((b"X-Container", container.encode()))
            reply.headers.append((b"X-Queue-Wait-Ms", wait_ms))
        elapsed = time.monotonic() - ex.arrived
        self.metrics.answered(reply.status, elapsed)
        self.history.answered(reply.status, elapsed)
        if self.settings.access_log:
            access_log.info(
                "%s %s %d",
                method,
                path,
                reply.status,
                extra={
                    "status": reply.status,
                    "path": path,
                    "container": container,
                    "queue_wait_ms": round(ex.waited * 1000.0, 3),
                    "duration_ms": round(elapsed * 1000.0, 3),
                    "retries": ex.attempts,
                    "error": ex.error.code if ex.error is not None else None,
                    "remote": remote,
                },
            )
        return reply

    # -- inference ----------------------------------------------------------------------------
    def infer(self, request: Request) -> None:
        def done(ex: Exchange) -> None:
            request.respond(self.answer(ex, request.method, request.path, request.remote))

        ex = Exchange(request_bytes(request.raw_path, request.headers, request.body), request.state, done)
        try:
            self.dispatcher.submit(ex)
        except HTTPError as exc:
            ex.finish(None, exc)
            return

        def client_left() -> None:
            self.dispatcher.withdraw(ex)  # a queued request leaves the queue
            ex.abandon()

        request.on_abort = client_left

    def submit_job(self, request: Request) -> Reply:
        job = Job()
        remote = request.remote  # the job outlives the request: keep none of its bytes
        ex = Exchange(
            request_bytes(b"/run_model", request.headers, request.body),
            request.state,
            lambda ex: self._job_done(job, ex, remote),
        )
        self.dispatcher.submit(ex)  # refusals (queue full, no container) are the answer
        job.exchange = ex
        position = self.dispatcher.position(ex)
        job.status = "running" if position is None else "queued"
        self.jobs.add(job)
        status_url = f"/jobs/{job.id}"
        return json_reply(
            {"id": job.id, "status": job.status, "position": position or 0, "status_url": status_url},
            status=202,
            headers=[(b"Location", status_url.encode())],
        )

    def _job_done(self, job: Job, ex: Exchange, remote: str | None) -> None:
        reply = self.answer(ex, "POST", "/jobs", remote)
        result = {
            "status_code": reply.status,
            "container": ex.container.name if ex.container is not None else None,
            "model_version": ex.response.header("X-Model-Version") if ex.response is not None else None,
            "queue_wait_ms": round(ex.waited * 1000.0, 3),
            "body": result_body(reply.body, _content_type(reply)),
        }
        self.jobs.finish(job, "done" if ex.response is not None else "failed", result)

    def get_job(self, request: Request) -> Reply:
        job = self.jobs.get(request.params["id"])
        if job is None:
            raise NotFound("no such job: unknown id, or its result expired (--job-ttl)")
        view: dict[str, Any] = {"id": job.id, "status": job.status, "created": job.created}
        if job.status == "queued" and job.exchange is not None:
            position = self.dispatcher.position(job.exchange)
            if position is None:  # it got its slot since
                job.status = view["status"] = "running"
            else:
                view["position"] = position
        if job.finished is not None:
            view["finished"] = job.finished
            view["result"] = job.result
        return json_reply(view)

    # -- admin ------------------------------------------------------------------------------------
    def admin_reload(self, _request: Request) -> Reply:
        try:
            changes = self.reload()
        except RoutesError as exc:
            raise HTTPError(
                f"{exc}; the current table is kept", status=400, code="bad_routing_table"
            ) from None
        return json_reply(changes)

    def _selection(self, request: Request) -> tuple[dict[str, Any], list[Container]]:
        expected = 'expected a JSON object {"node": NAME} or {"container": NAME}'
        try:
            body = json.loads(request.body) if request.body else {}
        except ValueError:
            body = None
        if not isinstance(body, dict) or len({"node", "container"} & set(body)) != 1:
            raise BadRequest(expected)
        key = "node" if "node" in body else "container"
        if not isinstance(body[key], str):
            raise BadRequest(f"{key}: expected a string")
        selected = self.roster.select(**{key: body[key]})
        if not selected:
            raise NotFound(f"no {key} named '{body[key]}' in the routing table")
        return body, selected

    def admin_drain(self, request: Request) -> Reply | None:
        body, selected = self._selection(request)
        wait = body.get("wait", False)
        timeout = body.get("timeout_s", 60)
        if not isinstance(wait, bool):
            raise BadRequest("wait: expected true or false")
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not 0 < timeout <= 86400:
            raise BadRequest("timeout_s: expected a number of seconds in (0, 86400]")
        self.dispatcher.set_draining(selected, True)
        names = [c.name for c in selected]
        log.info("draining %s", names, extra={"containers": names})
        if not wait:
            return self._drained(selected)
        self._later(request, self._wait_drained(selected, timeout))
        return None

    async def _wait_drained(self, selected: list[Container], timeout: float) -> Reply:
        try:
            await asyncio.wait_for(self.dispatcher.wait_idle(selected), timeout)
        except TimeoutError:
            in_flight = sum(c.inflight for c in selected)
            raise HTTPError(
                f"{in_flight} request(s) still in flight after {timeout}s",
                status=504,
                code="drain_timeout",
                containers=[c.name for c in selected],
                in_flight=in_flight,
            ) from None
        return self._drained(selected)

    def _drained(self, selected: list[Container]) -> Reply:
        return json_reply(
            {
                "containers": [c.name for c in selected],
                "state": "draining",
                "in_flight": sum(c.inflight for c in selected),
            }
        )

    def admin_ready(self, request: Request) -> Reply:
        _, selected = self._selection(request)
        self.dispatcher.set_draining(selected, False)
        names = [c.name for c in selected]
        log.info("back in service: %s", names, extra={"containers": names})
        return json_reply({"containers": names, "states": {c.name: c.state for c in selected}})

    # -- observation ------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        d = self.dispatcher
        containers = self.roster.containers
        by_code = self.metrics.by_code
        return {
            "ready": d.any_accepting(),
            "containers": [c.as_dict() for c in containers],
            "queue": {
                "depth": len(d.queue),
                "max_length": d.queue_spec.max_length,
                "timeout_s": d.queue_spec.timeout_s,
            },
            "service_time_ms": round(d.service_ewma_s * 1000.0, 3),
            "totals": {
                "answered": sum(by_code.values()),
                "by_status": {str(k): v for k, v in sorted(by_code.items())},
                "in_flight": sum(c.inflight for c in containers),
                "served": sum(c.served for c in containers),
                "errors": sum(c.errors for c in containers),
                "retries": self.forwarder.retried,
                "rejected": dict(d.rejected),
            },
            "jobs": {"stored": len(self.jobs.jobs), "max": self.jobs.max_jobs},
            "history": self.history.view(),
            "uptime_s": round(time.time() - self.started, 1),
        }

    def get_status(self, _request: Request) -> Reply:
        return json_reply(self.status())

    def get_metrics(self, _request: Request) -> Reply:
        return Reply(200, generate_latest(self.metrics.registry), [(b"Content-Type", _METRICS_TYPE)])

    def healthz(self, _request: Request) -> Reply:
        return json_reply({"status": "alive"})

    def readyz(self, _request: Request) -> Reply:
        ready = self.dispatcher.any_accepting()
        return json_reply(
            {
                "status": "ready" if ready else "no ready container",
                "ready_containers": sum(c.accepting for c in self.roster.containers),
            },
            status=200 if ready else 503,
        )

    def dashboard(self, _request: Request) -> Reply:
        page = resources.files("onnxfleet.orchestrator").joinpath("dashboard.html").read_bytes()
        return Reply(200, page, [(b"Content-Type", b"text/html; charset=utf-8")])


def _content_type(reply: Reply) -> str | None:
    for name, value in reply.headers:
        if name.lower() == b"content-type":
            return value.decode("latin-1")
    return None
