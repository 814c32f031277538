"""The orchestrator's composition root: it builds the parts, names each route's handler
and guard, and runs their life (start, the every-second refresh, the dispatch lease, stop).

Who owns what: ``Models`` (pool.py) the pools, one per model (dispatcher, queue, batcher,
forwarder, health checks, figures); ``Guards`` (guards.py) the tokens and the checks on a
request's head; ``Inference`` (inference.py) the inference and job handlers and the
accounting of each answer; ``Admin`` (admin.py) the admin API; ``Observe`` (observe.py)
health, /status, /metrics and the dashboard; ``Repository`` (repository.py) Triton's
repository and statistics routes.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

from onnxfleet.orchestrator.admin import Admin
from onnxfleet.orchestrator.autoscaler import AutoscalerRecord
from onnxfleet.orchestrator.batching import BatchCollector, Batcher
from onnxfleet.orchestrator.dispatcher import Dispatcher
from onnxfleet.orchestrator.errors import HTTPError, ShuttingDown
from onnxfleet.orchestrator.exchange import Forwarder
from onnxfleet.orchestrator.guards import Guards, named_by_address
from onnxfleet.orchestrator.health import HealthChecker
from onnxfleet.orchestrator.history import History
from onnxfleet.orchestrator.inference import Inference
from onnxfleet.orchestrator.jobs import JobStore
from onnxfleet.orchestrator.limits import BodyBudget
from onnxfleet.orchestrator.messages import Reply, Request, error_reply
from onnxfleet.orchestrator.metrics import Labels, Metrics
from onnxfleet.orchestrator.observe import Observe
from onnxfleet.orchestrator.pool import Models, PoolLimits
from onnxfleet.orchestrator.repository import Repository
from onnxfleet.orchestrator.roster import Roster
from onnxfleet.orchestrator.router import Router
from onnxfleet.orchestrator.routes import RoutingTable
from onnxfleet.orchestrator.settings import Settings
from onnxfleet.orchestrator.state import DrainState, Lease
from onnxfleet.orchestrator.tokens import Tokens

log = logging.getLogger("onnxfleet.orchestrator")


class Orchestrator:
    """Builds the parts from the settings and the first routing table, and wires them:
    each part is given what it reads or changes, and nothing else."""

    def __init__(
        self,
        settings: Settings,
        table: RoutingTable,
        tokens: Tokens | None = None,
        body_budget: BodyBudget | None = None,
    ) -> None:
        self.settings = settings
        limits = PoolLimits(
            settings.upstream_timeout_s, settings.retries, settings.max_body_bytes, settings.max_queue_bytes
        )
        self.models = Models(table, limits)
        self.metrics = Metrics(self.models)
        self.metrics.registry.register(BatchCollector(self._batchers))
        self.autoscaler = AutoscalerRecord()
        self.metrics.registry.register(self.autoscaler)
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
        self.guards = Guards(
            tokens or Tokens(raw=settings.api_token), Tokens(raw=settings.admin_token), self.models, self.jobs
        )
        self.inference = Inference(self.guards, self.jobs, self.metrics, self.history, settings.access_log)
        self.admin = Admin(settings, self.models, self.drains, self.guards, self.later)
        self.observe = Observe(
            self.models, self.metrics, self.jobs, self.history, body_budget, autoscaler=self.autoscaler
        )
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
        guards, inference = self.guards, self.inference
        infer, guard = inference.infer, guards.infer
        for prefix in ("/v2/models/{name}", "/v2/models/{name}/versions/{version}"):
            api.add("POST", prefix + "/infer", infer, guard)
            api.add("GET", prefix, infer, guard)  # model metadata: the workers answer it
            api.add("GET", prefix + "/ready", infer, guard)
        api.add("POST", "/run_model", infer, guard)
        api.add("GET", "/v2", infer, guard)
        # Triton's extensions that its tools read: answered here, from what the pools know
        repo, api_guard = self.repository, guards.api
        for method in ("GET", "POST"):
            api.add(method, "/v2/repository/index", repo.index, api_guard)
        api.add("GET", "/v2/models/stats", repo.stats, api_guard)
        for prefix in ("/v2/models/{name}", "/v2/models/{name}/versions/{version}"):
            api.add("GET", prefix + "/config", repo.config, api_guard)
            api.add("GET", prefix + "/stats", repo.stats, api_guard)
        api.add("POST", "/jobs", inference.submit_job, guards.job)
        api.add("GET", "/jobs/{id}", inference.get_job, api_guard)
        for path in ("/healthz", "/v2/health/live"):
            api.add("GET", path, self.observe.healthz)
        for path in ("/readyz", "/v2/health/ready"):
            api.add("GET", path, self.observe.readyz)
        # on the API listener, what tells about the fleet needs a token (any: API or admin)
        api.add("GET", "/status", self.observe.get_status, guards.view)
        api.add("GET", "/metrics", self.observe.get_metrics, guards.view)
        api.add("GET", "/", self.observe.dashboard, guards.dashboard)
        admin = api
        if self.settings.admin_listener:
            admin = Router()
            admin.add("GET", "/status", self.observe.get_status, named_by_address)
            admin.add("GET", "/metrics", self.observe.get_metrics, named_by_address)
            admin.add("GET", "/", self.observe.dashboard, named_by_address)
        admin.add("POST", "/admin/reload", self.admin.reload, guards.admin)
        admin.add("POST", "/admin/drain", self.admin.drain, guards.admin)
        admin.add("POST", "/admin/ready", self.admin.ready, guards.admin)
        admin.add("POST", "/admin/canary", self.admin.start_canary, guards.admin)
        admin.add("GET", "/admin/canary", self.admin.get_canary, guards.admin)
        admin.add("DELETE", "/admin/canary", self.admin.end_canary, guards.admin)
        admin.add("PUT", "/admin/autoscaler", self.autoscaler.put, guards.admin)
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
        self.models.apply(self.models.table, self.drains.drained)
        # the first round of checks before accepting requests: a process that starts (or
        # replaces another) must not refuse them as "no ready container" meanwhile
        deadline = time.monotonic() + self.models.table.health.timeout_s + 0.5
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
