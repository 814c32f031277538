"""One pool per model: its containers' slots, its FIFO queue, batching, checks and figures.

A ``ModelPool`` owns everything that serves one model of the routing table, so a flood on
one model fills that model's queue (429 for it) and never takes another model's slots or
queue room. ``Models`` is the registry of pools by name and the default one; a new
routing table is applied model by model: an unchanged model's containers are untouched,
a new model starts, a removed one has its queue answered 503 and its containers dropped
once their requests in flight end.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from onnxfleet.orchestrator.batching import Batcher
from onnxfleet.orchestrator.canary import Canary, CanarySpec
from onnxfleet.orchestrator.dispatcher import Dispatcher
from onnxfleet.orchestrator.errors import HTTPError
from onnxfleet.orchestrator.exchange import Exchange, Forwarder
from onnxfleet.orchestrator.health import HealthChecker
from onnxfleet.orchestrator.metrics import Labels
from onnxfleet.orchestrator.roster import Container, Drained, Roster
from onnxfleet.orchestrator.routes import BatchingSpec, ModelRoute, ModelSpec, RoutingTable
from onnxfleet.orchestrator.settings import HealthSpec


@dataclass(frozen=True)
class PoolLimits:
    upstream_timeout_s: float = 60.0
    retries: int = 2
    max_body_bytes: int = 8 * 1024 * 1024
    max_queue_bytes: int = 64 * 1024 * 1024


class AnswerObserver(Protocol):
    """Told the outcome of every inference answer of a model (the canary's ``record``)."""

    def record(self, version: str, ok: bool, seconds: float, now: float) -> None: ...


class Timing:
    """A count and a total in nanoseconds (Triton's ``{count, ns}``)."""

    __slots__ = ("count", "ns")

    def __init__(self) -> None:
        self.count = 0
        self.ns = 0

    def add(self, seconds: float) -> None:
        self.count += 1
        self.ns += int(seconds * 1e9)

    def view(self) -> dict[str, int]:
        return {"count": self.count, "ns": self.ns}


class VersionFigures:
    """What one model version did: Triton's per-model statistics."""

    def __init__(self) -> None:
        self.inference_count = 0  # requests answered (each a row or more)
        self.execution_count = 0  # container calls (a merged call: one for its requests)
        self.last_inference_ms = 0  # wall clock of the last answer, ms since the epoch
        self.success = Timing()
        self.fail = Timing()
        self.queue = Timing()
        self.compute = Timing()  # time at the container
        self.batches: dict[int, Timing] = {}  # by requests per container call


class Figures:
    """A model's figures by version ("" while its version is unknown)."""

    def __init__(self) -> None:
        self.versions: dict[str, VersionFigures] = {}

    def of(self, version: str) -> VersionFigures:
        figures = self.versions.get(version)
        if figures is None:
            figures = self.versions[version] = VersionFigures()
        return figures

    def executed(self, version: str, requests: int, seconds: float) -> None:
        """One container call carrying ``requests`` requests answered after ``seconds``."""
        figures = self.of(version)
        figures.execution_count += 1
        timing = figures.batches.get(requests)
        if timing is None:
            timing = figures.batches[requests] = Timing()
        timing.add(seconds)

    def inferred(
        self, version: str, ok: bool, total_s: float, queue_s: float, compute_s: float | None
    ) -> None:
        """One inference request's answer (``ok``: a 2xx or 3xx from a container)."""
        figures = self.of(version)
        figures.last_inference_ms = int(time.time() * 1000)
        if ok:
            figures.inference_count += 1
            figures.success.add(total_s)
        else:
            figures.fail.add(total_s)
        figures.queue.add(queue_s)
        if compute_s is not None:
            figures.compute.add(compute_s)


class ModelRemoved(HTTPError):
    status = 503
    code = "model_removed"


class ModelPool:
    """One model's serving parts, owned and wired here: no part sets another's."""

    def __init__(self, route: ModelRoute, health: HealthSpec, limits: PoolLimits) -> None:
        self.route = route
        self.name = route.name
        self.roster = Roster()
        self.dispatcher = Dispatcher(route.queue, self.roster, limits.max_queue_bytes)
        self.figures = Figures()
        self.forwarder = Forwarder(
            self.dispatcher, limits.upstream_timeout_s, limits.retries, figures=self.figures
        )
        self.dispatcher.start = self.forwarder.send
        self.batcher = Batcher(self.dispatcher, self.forwarder, limits.max_body_bytes)
        self.health = HealthChecker(self.dispatcher, self.forwarder, health)
        # the canary of this model, when one runs (canary.py): told every inference answer
        self.observer: AnswerObserver | None = None
        self.canary: Canary | None = None

    @property
    def by_name(self) -> bool:
        """Requests are routed by name and version (a version-2 table)."""
        return self.route.by_name

    @property
    def containers(self) -> list[Container]:
        return self.roster.containers

    @property
    def labels(self) -> Labels:
        """Its metrics' labels: none with a version-1 table (the series keep their names)."""
        return (("model", self.name),) if self.route.by_name else ()

    def apply(self, route: ModelRoute, health: HealthSpec, drained: Drained | None) -> dict[str, list[str]]:
        """Adopt this model's part of a routing table (its unchanged containers are untouched)."""
        self.route = route
        changes = self.dispatcher.apply(route.containers, route.queue, drained)
        self._batching(route.model, route.batching)
        self.health.sync(health)
        return changes

    def retire(self) -> list[str]:
        """Removed from the table: the queue is answered 503, the containers leave once idle."""
        d = self.dispatcher
        for ex in list(d.queue.values()):
            d.withdraw(ex)
            ex.finish(
                None, ModelRemoved(f"model {self.name!r} was removed from the routing table", retry_after=1)
            )
        removed = d.apply((), d.queue_spec)["removed"]
        self._batching(None, None)
        return removed

    def _batching(self, model: ModelSpec | None, spec: BatchingSpec | None) -> None:
        self.dispatcher.use_batcher(self.batcher if self.batcher.configure(model, spec) else None)

    def versions(self) -> dict[str, list[Container]]:
        """The versions its containers said they serve, and which containers serve each."""
        served: dict[str, list[Container]] = {}
        for c in self.roster.containers:
            if c.model_version is not None and not c.removed:
                served.setdefault(c.model_version, []).append(c)
        return dict(sorted(served.items()))

    def served_version(self, ex: Exchange) -> str:
        """The version that answered ``ex`` (or that it was for): for the figures."""
        response = ex.response
        version = response.header("X-Model-Version") if response is not None else None
        if version is None and ex.container is not None:
            version = ex.container.model_version
        if version is None:
            version = ex.version
        if version is None:
            versions = self.versions()
            version = next(iter(versions)) if len(versions) == 1 else ""
        return version

    def finished(self, ex: Exchange, status: int) -> None:
        """An inference request's answer: into the figures and to the observer."""
        now = time.monotonic()
        version = self.served_version(ex)
        total = now - ex.arrived
        compute = now - ex.sent_at if ex.sent_at and ex.response is not None else None
        self.figures.inferred(version, ex.response is not None and status < 400, total, ex.waited, compute)
        # A model that fails on an input its signature accepts is a 422 inference_failed
        # from the worker: an error of that version. A client's bad input gets 422 from
        # every version alike, and the canary is judged against the baseline.
        self.answered(version, ex.response is not None and status < 500 and status != 422, total, now)

    def answered(self, version: str, ok: bool, seconds: float, now: float) -> None:
        """The per-version outcome the canary judges on."""
        if self.observer is not None:
            self.observer.record(version, ok, seconds, now)

    # -- canary ---------------------------------------------------------------------------
    def start_canary(self, spec: CanarySpec, now: float) -> Canary:
        self.canary = self.observer = Canary(spec, now)
        return self.canary

    def end_canary(self) -> Canary | None:
        canary, self.canary, self.observer = self.canary, None, None
        return canary

    def baseline_version(self, canary: str) -> str | None:
        """The version other than the canary's that most accepting containers serve."""
        counts: dict[str, int] = {}
        for c in self.roster.containers:
            if c.accepting and c.model_version is not None and c.model_version != canary:
                counts[c.model_version] = counts.get(c.model_version, 0) + 1
        return max(counts, key=lambda v: (counts[v], v)) if counts else None

    def route_version(self, asked: str | None) -> str | None:
        """The version a request goes to: the one it names; during a canary, the canary's
        version for its share of the others (while it has an accepting container), else
        the baseline's, so the canary gets its share and no more; else any (None)."""
        canary = self.canary
        if asked is not None or canary is None:
            return asked
        version = canary.spec.version
        if canary.routes_to_canary(time.monotonic()) and self.dispatcher.any_accepting(version):
            return version
        return self.baseline_version(version)

    def idle(self) -> bool:
        return not self.dispatcher.queue and all(c.inflight == 0 for c in self.roster.containers)

    async def close(self) -> None:
        await self.health.close()
        self.roster.close()


class Models:
    """The pools by model name, the default first."""

    def __init__(self, table: RoutingTable, limits: PoolLimits) -> None:
        self.limits = limits
        self.table = table  # in force: the last one applied
        self.health = table.health
        self.pools: dict[str, ModelPool] = {
            route.name: ModelPool(route, table.health, limits) for route in table.routes()
        }
        self.default = self.pools[table.routes()[0].name]
        self.retired: list[ModelPool] = []  # removed, with requests still in flight
        self.dispatching = True

    def __iter__(self) -> Iterator[ModelPool]:
        return iter(self.pools.values())

    def get(self, name: str) -> ModelPool | None:
        """The pool serving model ``name`` (a version-1 table's one pool serves any name)."""
        pool = self.pools.get(name)
        if pool is None and not self.default.by_name and not self.default.name:
            return self.default
        return pool

    def apply(self, table: RoutingTable, drained: Drained | None) -> dict[str, Any]:
        """Adopt a routing table model by model."""
        self.table = table
        self.health = table.health
        added: list[str] = []
        removed: list[str] = []
        updated: list[str] = []
        models_added: list[str] = []
        models_removed: list[str] = []
        wanted = {route.name: route for route in table.routes()}
        for name in list(self.pools):
            if name not in wanted:
                pool = self.pools.pop(name)
                removed += pool.retire()
                self.retired.append(pool)
                models_removed.append(name)
        pools: dict[str, ModelPool] = {}
        for name, route in wanted.items():
            current = self.pools.get(name)
            if current is None:
                current = ModelPool(route, table.health, self.limits)
                current.dispatcher.dispatching = self.dispatching
                models_added.append(name)
            changes = current.apply(route, table.health, drained)
            added += changes["added"]
            removed += changes["removed"]
            updated += changes["updated"]
            pools[name] = current
        self.pools = pools
        self.default = pools[table.routes()[0].name]
        self.retired = [p for p in self.retired if p.roster.containers]
        return {
            "added": added,
            "removed": removed,
            "updated": updated,
            "models_added": models_added,
            "models_removed": models_removed,
        }

    def everyone(self) -> Iterator[ModelPool]:
        """The pools, the removed ones still finishing included."""
        yield from self.pools.values()
        yield from self.retired

    def containers(self) -> Iterator[Container]:
        for pool in self.everyone():
            yield from pool.roster.containers

    def select(self, node: str | None = None, container: str | None = None) -> list[Container]:
        return [c for pool in self.pools.values() for c in pool.roster.select(node, container)]

    def changed(self) -> None:
        for pool in self.everyone():
            pool.dispatcher.changed()

    def set_dispatching(self, dispatching: bool) -> None:
        self.dispatching = dispatching
        for pool in self.everyone():
            pool.dispatcher.dispatching = dispatching
            if dispatching:
                pool.dispatcher.changed()

    def any_accepting(self) -> bool:
        return any(pool.dispatcher.any_accepting() for pool in self.pools.values())

    def idle(self) -> bool:
        return all(pool.idle() for pool in self.everyone())

    def served(self) -> list[dict[str, Any]]:
        """The models and their versions, for 404 answers."""
        return [{"name": pool.name, "versions": list(pool.versions())} for pool in self.pools.values()]

    async def close(self) -> None:
        for pool in list(self.everyone()):
            await pool.close()


async def wait_idle(containers: Iterable[Container]) -> None:
    """Until nothing sent to ``containers`` is in flight."""
    loop = asyncio.get_running_loop()
    for c in containers:
        while c.inflight > 0:
            fut: asyncio.Future[None] = loop.create_future()
            c.idle_waiters.append(fut)
            await fut
