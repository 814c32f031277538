"""The orchestrator's HTTP application: its listeners' routes, callers, inference and jobs."""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

from onnxfleet.oip import jsonio
from onnxfleet.orchestrator import requestid
from onnxfleet.orchestrator.admin import Admin
from onnxfleet.orchestrator.batching import BatchCollector, Batcher
from onnxfleet.orchestrator.dispatcher import Dispatcher
from onnxfleet.orchestrator.errors import (
    JSON_TYPE,
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
from onnxfleet.orchestrator.jobs import Job, JobStore, Refused, result_json, with_field
from onnxfleet.orchestrator.metrics import Labels, Metrics
from onnxfleet.orchestrator.observe import DASHBOARD_HINT, Observe, named_by_address
from onnxfleet.orchestrator.pool import ModelPool, Models, PoolLimits
from onnxfleet.orchestrator.repository import Repository
from onnxfleet.orchestrator.roster import Roster
from onnxfleet.orchestrator.router import Router
from onnxfleet.orchestrator.routes import HealthSpec, RoutingTable
from onnxfleet.orchestrator.server import BodyBudget, Reply, Request, error_reply, json_reply
from onnxfleet.orchestrator.state import DrainState, Lease
from onnxfleet.orchestrator.tokens import Tokens

access_log = logging.getLogger("onnxfleet.orchestrator.access")
log = logging.getLogger("onnxfleet.orchestrator")

DEADLINE_HEADER = "X-Request-Timeout-Ms"
_DEADLINE = DEADLINE_HEADER.lower().encode()


@dataclass(frozen=True)
class Settings:
    routes_path: str
    admin_token: str | None = None
    api_token: str | None = None  # raw, from $ONNXFLEET_API_TOKEN (development)
    api_tokens_path: str | None = None  # hashed, re-read on reload
    state_dir: Path | None = None
    admin_listener: bool = False  # /admin/* has its own listener (--admin-bind)
    upstream_timeout_s: float = 60.0
    retries: int = 2
    job_ttl_s: float = 300.0
    max_jobs: int = 1000
    max_job_bytes: int = 256 * 1024 * 1024
    max_body_bytes: int = 8 * 1024 * 1024
    max_queue_bytes: int = 64 * 1024 * 1024
    health_defaults: HealthSpec = field(default_factory=HealthSpec)
    access_log: bool = True


class Caller:
    """What the head of a request said about its caller and its model (set by the guards)."""

    __slots__ = ("deadline", "pool", "request_id", "version", "who")

    def __init__(
        self,
        deadline: float | None,
        who: tuple[str | None, ...],
        request_id: bytes,
        pool: ModelPool,
        version: str | None = None,
    ) -> None:
        self.deadline = deadline
        self.who = who  # (peer address, X-Forwarded-For, token name): for the access log
        self.request_id = request_id  # in the access log, the container's request, the answer
        self.pool = pool  # the model's pool it goes to
        self.version = version  # only to containers serving this version (None: any)


def _query(request: Request) -> dict[str, str]:
    """``model`` and ``version`` from the query string of /run_model and /jobs (400 when
    repeated or empty); other parameters are ignored, as before they were read."""
    _, _, query = request.url.partition(b"?")
    found: dict[str, str] = {}
    for key, value in parse_qsl(query.decode("latin-1"), keep_blank_values=True):
        if key not in ("model", "version"):
            continue
        if key in found:
            raise BadRequest(f"?{key}= is given twice: expected it once")
        if not value:
            raise BadRequest(f"?{key}= is empty: expected a model {'name' if key == 'model' else 'version'}")
        found[key] = value
    return found


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
    def __init__(self, settings: Settings, table: RoutingTable, tokens: Tokens | None = None) -> None:
        self.settings = settings
        self.table = table
        self.tokens = tokens or Tokens(raw=settings.api_token)
        self.admin_tokens = Tokens(raw=settings.admin_token)
        limits = PoolLimits(
            settings.upstream_timeout_s, settings.retries, settings.max_body_bytes, settings.max_queue_bytes
        )
        self.models = Models(table, limits)
        self.metrics = Metrics(self.models)
        self.metrics.registry.register(BatchCollector(self._batchers))
        self.jobs = JobStore(
            settings.job_ttl_s,
            settings.max_jobs,
            settings.max_job_bytes,
            self._retry_after,
        )
        self.history = History(lambda: sum(len(p.dispatcher.queue) for p in self.models))
        self.repository = Repository(self.models)
        self.drains = DrainState(settings.state_dir)
        self.lease = Lease(settings.state_dir) if settings.state_dir is not None else None
        self.admin = Admin(self)
        self.observe = Observe(self)
        self.started = time.time()
        self.body_budget: BodyBudget | None = None  # the HTTP servers' (set by the service)
        self.tasks: set[asyncio.Task[Any]] = set()
        self._second: asyncio.TimerHandle | None = None
        self.api_router, self.admin_router = self._routes()

    # the default model's parts (the only model's with a version-1 table)
    @property
    def dispatcher(self) -> Dispatcher:
        return self.models.default.dispatcher

    @property
    def roster(self) -> Roster:
        return self.models.default.roster

    @property
    def batcher(self) -> Batcher:
        return self.models.default.batcher

    @property
    def forwarder(self) -> Forwarder:
        return self.models.default.forwarder

    @property
    def health(self) -> HealthChecker:
        return self.models.default.health

    def _retry_after(self) -> int:
        return self.models.default.dispatcher.retry_after()  # (the default changes on reloads)

    def _batchers(self) -> list[tuple[Labels, Batcher]]:
        return [(pool.labels, pool.batcher) for pool in self.models]

    def _routes(self) -> tuple[Router, Router]:
        """The API listener's routes and the admin listener's (one router without --admin-bind)."""
        api = Router()
        infer, guard = self.infer, self._infer_guard
        for prefix in ("/v2/models/{name}", "/v2/models/{name}/versions/{version}"):
            api.add("POST", prefix + "/infer", infer, guard)
            api.add("GET", prefix, infer, guard)  # model metadata: the workers answer it
            api.add("GET", prefix + "/ready", infer, guard)
        api.add("POST", "/run_model", infer, guard)
        api.add("GET", "/v2", infer, guard)
        # Triton's extensions that its tools read: answered here, from what the pools know
        repo, api_guard = self.repository, self._api_guard
        for method in ("GET", "POST"):
            api.add(method, "/v2/repository/index", repo.index, api_guard)
        api.add("GET", "/v2/models/stats", repo.stats, api_guard)
        for prefix in ("/v2/models/{name}", "/v2/models/{name}/versions/{version}"):
            api.add("GET", prefix + "/config", repo.config, api_guard)
            api.add("GET", prefix + "/stats", repo.stats, api_guard)
        api.add("POST", "/jobs", self.submit_job, self._job_guard)
        api.add("GET", "/jobs/{id}", self.get_job, self._api_guard)
        for path in ("/healthz", "/v2/health/live"):
            api.add("GET", path, self.observe.healthz)
        for path in ("/readyz", "/v2/health/ready"):
            api.add("GET", path, self.observe.readyz)
        # on the API listener, what tells about the fleet needs a token (any: API or admin)
        api.add("GET", "/status", self.observe.get_status, self._view_guard)
        api.add("GET", "/metrics", self.observe.get_metrics, self._view_guard)
        api.add("GET", "/", self.observe.dashboard, self._dashboard_guard)
        admin = api
        if self.settings.admin_listener:
            admin = Router()
            admin.add("GET", "/status", self.observe.get_status, named_by_address)
            admin.add("GET", "/metrics", self.observe.get_metrics, named_by_address)
            admin.add("GET", "/", self.observe.dashboard, named_by_address)
        admin.add("POST", "/admin/reload", self.admin.reload, self._admin_guard)
        admin.add("POST", "/admin/drain", self.admin.drain, self._admin_guard)
        admin.add("POST", "/admin/ready", self.admin.ready, self._admin_guard)
        admin.add("POST", "/admin/canary", self.admin.start_canary, self._admin_guard)
        admin.add("GET", "/admin/canary", self.admin.get_canary, self._admin_guard)
        admin.add("DELETE", "/admin/canary", self.admin.end_canary, self._admin_guard)
        if admin is not api:
            admin.add("GET", "/healthz", self.observe.healthz)
            admin.add("GET", "/readyz", self.observe.readyz)
        return api, admin

    # -- lifecycle ------------------------------------------------------------------------------
    async def start(self) -> None:
        # Each request allocates a few hundred short-lived objects: with the default
        # thresholds the cyclic GC runs every few requests and its full passes walk every
        # long-lived object too. Freezing what exists after start and collecting the
        # young generation less often cut the CPU time per request by about 15 % in
        # bench/orchestrator_vs_haproxy.py (1 ms service time).
        gc.freeze()
        gc.set_threshold(50_000, 50, 100)
        self.drains.refresh()
        self.models.apply(self.table, self.drains.drained)
        # the first round of checks before accepting requests: a process that starts (or
        # replaces another) must not refuse them as "no ready container" meanwhile
        deadline = time.monotonic() + self.table.health.timeout_s + 0.5
        while not all(c.checked for c in self.models.containers()) and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        self.history.start()
        self._second = asyncio.get_running_loop().call_later(1.0, self._every_second)
        if self.lease is not None and not self.lease.try_acquire():
            log.info("standby: another process holds the dispatch lease; requests queue until it ends")
            self.models.set_dispatching(False)
            self.spawn(self._take_over(self.lease))

    def _every_second(self) -> None:
        self.admin.refresh()
        self._second = asyncio.get_running_loop().call_later(1.0, self._every_second)

    async def _take_over(self, lease: Lease) -> None:
        await lease.acquire()
        log.info("dispatch lease acquired: sending to the containers")
        self.admin.refresh()  # the previous holder's last drain flags
        self.models.set_dispatching(True)

    def spawn(
        self, work: Coroutine[Any, Any, Any], done: Callable[[asyncio.Task[Any]], None] | None = None
    ) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        if done is not None:
            task.add_done_callback(done)

    def idle(self) -> bool:
        """Nothing queued and nothing waiting for a container."""
        return self.models.idle()

    def fail_queue(self) -> None:
        """Stopping: whatever still waits in the queues gets 503 ``shutting_down``."""
        for pool in list(self.models.everyone()):
            d = pool.dispatcher
            for ex in list(d.queue.values()):
                d.withdraw(ex)
                ex.finish(None, ShuttingDown("the orchestrator is stopping: retry", retry_after=1))

    async def stop(self) -> None:
        self.history.stop()
        if self._second is not None:
            self._second.cancel()
        for task in list(self.tasks):
            task.cancel()
        await self.models.close()
        if self.lease is not None:
            self.lease.release()

    def later(self, request: Request, work: Coroutine[Any, Any, Reply]) -> None:
        """Answer ``request`` when ``work`` is done (the few handlers that wait)."""

        def done(task: asyncio.Task[Reply]) -> None:
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

        self.spawn(work, done)

    # -- guards: checks on the request head, before its body is read ----------------------------
    def _caller(self, request: Request) -> str | None:
        """The name of the caller's API token (None: the API is open); 401 without a valid one."""
        if self.tokens.open:
            return None
        name = self.tokens.check(request.header(b"authorization"))
        if name is None:
            raise Unauthorized()
        return name

    def _api_guard(self, request: Request) -> None:
        self._caller(request)

    def _admin_guard(self, request: Request) -> None:
        if not self.admin_tokens.open and self.admin_tokens.check(request.header(b"authorization")) is None:
            raise Unauthorized()

    def _view_guard(self, request: Request) -> None:
        """/status, /metrics and the dashboard on the API listener: as open as the API itself
        (with client tokens configured, any valid client or admin token)."""
        if self.tokens.open:
            return
        authorization = request.header(b"authorization")
        if self.tokens.check(authorization) is None and self.admin_tokens.check(authorization) is None:
            raise Unauthorized()

    def _dashboard_guard(self, request: Request) -> None:
        try:
            self._view_guard(request)
        except Unauthorized:
            raise Unauthorized(f"expected Authorization: Bearer <token>; {DASHBOARD_HINT}") from None

    def _infer_guard(self, request: Request) -> None:
        name = self._caller(request)
        forwarded = request.header(b"x-forwarded-for")
        who = (request.remote, forwarded.decode("latin-1") if forwarded is not None else None, name)
        request_id, request.headers = requestid.assign(request.headers)
        deadline = _deadline(request)
        pool, version = self._target(request)
        request.state = Caller(deadline, who, request_id, pool, version)

    def _target(self, request: Request) -> tuple[ModelPool, str | None]:
        """The model's pool a request goes to, and the version it is pinned to (or None).

        ``/v2/models/{name}[/versions/{v}]/...`` by its path; ``/run_model`` and ``/jobs``
        the default model, or ``?model=NAME&version=V``. A version-1 table's one model takes
        any name and path version (its containers judge them); ``?version=`` pins there too.
        """
        models = self.models
        default = models.default
        name = request.params.get("name")
        version = request.params.get("version")
        if name is None and request.path != "/v2":
            asked = _query(request)
            name, version = asked.get("model"), asked.get("version")
            if name is not None and not default.by_name and default.name and name != default.name:
                raise self._model_not_found(name)
        elif not default.by_name:
            return default, None
        pool = default if name is None else models.get(name)
        if pool is None:
            raise self._model_not_found(name)
        if version is not None:
            served = pool.versions()
            if version not in served:
                raise NotFound(
                    f"model {pool.name!r} has no container serving version {version!r}: "
                    f"expected one of {list(served)}",
                    code="version_not_found",
                    model=pool.name,
                    versions=list(served),
                )
        return pool, version

    def _model_not_found(self, name: str | None) -> HTTPError:
        served = self.models.served()
        return NotFound(
            f"no model {name!r} is served here: expected one of {[m['name'] for m in served]}",
            code="model_not_found",
            models=served,
        )

    def _job_guard(self, request: Request) -> None:
        self._infer_guard(request)
        self._job_room(request, 0)

    def _job_room(self, request: Request, size: int) -> None:
        """429 ``too_many_jobs`` unless the store has room for the caller's job."""
        caller: Caller = request.state
        try:
            self.jobs.check(caller.who[2], size)
        except Refused as refused:
            raise HTTPError(
                refused.message, status=429, code="too_many_jobs", retry_after=refused.retry_after
            ) from None

    # -- outcomes: one path for direct answers and jobs -----------------------------------------
    def answer(self, ex: Exchange, method: str, path: str, caller: Caller) -> Reply:
        """The reply for a finished exchange, counted in the metrics and the access log."""
        who = caller.who
        container = ex.container.name if ex.container is not None else None
        wait_ms = b"%.3f" % (ex.waited * 1000.0)
        response = ex.response
        pool = caller.pool
        labels = pool.labels
        if response is not None:
            self.metrics.queue_wait.of(labels).observe(ex.waited)
            headers = response_headers(response)
            headers.append((b"X-Container", (container or "").encode()))
            headers.append((b"X-Queue-Wait-Ms", wait_ms))
            headers.append((b"X-Request-Id", caller.request_id))
            reply = Reply(response.status, response.body, headers)
        else:
            error = ex.error or HTTPError("the request ended without an answer")
            reply = error_reply(error)
            if container is not None:
                reply.headers.append((b"X-Container", container.encode()))
            reply.headers.append((b"X-Queue-Wait-Ms", wait_ms))
            reply.headers.append((b"X-Request-Id", caller.request_id))
        elapsed = time.monotonic() - ex.arrived
        self.metrics.answered(reply.status, elapsed, labels)
        self.history.answered(reply.status, elapsed)
        if method == "POST":  # an inference (not metadata): the model's figures
            pool.finished(ex, reply.status)
        if self.settings.access_log:
            access_log.info(
                "%s %s %d",
                method,
                path,
                reply.status,
                extra={
                    "request_id": caller.request_id.decode("ascii"),
                    "method": method,
                    "status": reply.status,
                    "path": path,
                    "model": caller.pool.name,
                    "model_version": None if response is None else response.header("X-Model-Version"),
                    "container": container,
                    "queue_wait_ms": round(ex.waited * 1000.0, 3),
                    "duration_ms": round(elapsed * 1000.0, 3),
                    "retries": ex.attempts,
                    "error": ex.error.code if ex.error is not None else None,
                    "remote": who[0],
                    "forwarded_for": who[1],
                    "client": who[2],
                },
            )
        return reply

    # -- inference ----------------------------------------------------------------------------
    def infer(self, request: Request) -> None:
        """Inference and model metadata: forwarded to a container with a free slot."""
        caller: Caller = request.state

        def done(ex: Exchange) -> None:
            request.respond(self.answer(ex, request.method, request.path, caller))

        # a HEAD is sent as a GET: the server drops the body (the client parser could not)
        method = "GET" if request.method == "HEAD" else request.method
        data = request_bytes(method, request.raw_path, request.headers, request.body)
        ex = Exchange(data, caller.deadline, done)
        pool = caller.pool
        ex.version = pool.route_version(caller.version)
        dispatcher = pool.dispatcher
        if dispatcher.batcher is not None:
            ex.part = pool.batcher.part(request)
        request.body = b""  # its bytes are in the exchange's: the queue holds them once
        try:
            dispatcher.submit(ex)
        except HTTPError as exc:
            ex.finish(None, exc)
            return

        def client_left() -> None:
            dispatcher.withdraw(ex)  # a queued request leaves the queue
            ex.abandon()

        request.on_abort = client_left

    def submit_job(self, request: Request) -> Reply:
        caller: Caller = request.state  # the job outlives the request: keep none of its bytes
        data = request_bytes("POST", b"/run_model", request.headers, request.body)
        self._job_room(request, len(data))
        job = Job(owner=caller.who[2])
        ex = Exchange(data, caller.deadline, lambda ex: self._job_done(job, ex, caller))
        pool = caller.pool
        ex.version = pool.route_version(caller.version)
        dispatcher = pool.dispatcher
        if dispatcher.batcher is not None:
            ex.part = pool.batcher.part(request, job=True)
        dispatcher.submit(ex)  # refusals (queue full, no container) are the answer
        job.exchange, job.dispatcher = ex, dispatcher
        position = dispatcher.position(ex)
        job.status = "running" if position is None else "queued"
        self.jobs.add(job, len(data))
        status_url = f"/jobs/{job.id}"
        return json_reply(
            {"id": job.id, "status": job.status, "position": position or 0, "status_url": status_url},
            status=202,
            headers=[(b"Location", status_url.encode()), (b"X-Request-Id", caller.request_id)],
        )

    def _job_done(self, job: Job, ex: Exchange, caller: Caller) -> None:
        reply = self.answer(ex, "POST", "/jobs", caller)
        meta = {
            "status_code": reply.status,
            "container": ex.container.name if ex.container is not None else None,
            "model_version": ex.response.header("X-Model-Version") if ex.response is not None else None,
            "queue_wait_ms": round(ex.waited * 1000.0, 3),
        }
        result = result_json(meta, reply.body, _content_type(reply))
        status = "done" if ex.response is not None else "failed"
        if not self.jobs.fits(job, len(result)):
            status, too_large = (
                "failed",
                HTTPError(
                    f"the result ({len(result)} bytes) does not fit in the job store "
                    f"({self.jobs.max_bytes} bytes, --max-job-bytes)",
                    status=507,
                    code="result_too_large",
                ),
            )
            meta["status_code"] = too_large.status
            result = result_json(meta, too_large.body(), "application/json")
        self.jobs.finish(job, status, result)

    def get_job(self, request: Request) -> Reply:
        job = self.jobs.get(request.params["id"])
        if job is None:
            raise NotFound("no such job: unknown id, or its result expired (--job-ttl)")
        view: dict[str, Any] = {"id": job.id, "status": job.status, "created": job.created}
        if job.status == "queued" and job.exchange is not None and job.dispatcher is not None:
            position = job.dispatcher.position(job.exchange)
            if position is None:  # it got its slot since
                job.status = view["status"] = "running"
            else:
                view["position"] = position
        if job.finished is None or job.result is None:
            return json_reply(view)
        view["finished"] = job.finished
        # the result as stored: encoded once, when the job ended
        body = with_field(jsonio.dumps(view), "result", job.result)
        return Reply(200, body, [(b"Content-Type", JSON_TYPE)])


def _content_type(reply: Reply) -> str | None:
    for name, value in reply.headers:
        if name.lower() == b"content-type":
            return value.decode("latin-1")
    return None
