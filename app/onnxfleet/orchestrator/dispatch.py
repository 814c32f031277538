"""Slots, the one FIFO queue, and the exchanges with the containers.

Every container has ``max_concurrency`` slots. A request takes a free slot of a ready
container at once, or waits in the single FIFO queue. When a container answers, the
event loop callback that parsed the answer frees the slot and, in the same callback,
writes the next queued request on the same keep-alive connection: no task wakes up
between two requests, so a container stays idle only for a loop turn (the way HAProxy
hands a server's connection to its queue).

All state changes happen in plain (non-async) methods on the event loop thread, so "find
a free slot and take it" is atomic by construction: the races of the hand-written seeds
(two requests reserving the same container, a queue nothing drains) cannot happen.

Retry policy: a request is re-queued at the head, for another container (at most
``retries`` times), only when no answer byte came back: the connection was refused,
timed out while connecting, or closed before the status line. Such a request may have
started on a worker that then died; inference has no side effects, so running it again
is safe and the worst case is wasted compute. A request whose answer had begun, or that
hit the upstream timeout, is never re-sent: a slow fleet would only get its load doubled.
A pooled keep-alive connection that the container had closed meanwhile is retried once
on a fresh connection to the same container (that is not a failure of the container).
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Iterable

from onnxfleet.orchestrator.routes import ContainerSpec, QueueSpec
from onnxfleet.orchestrator.upstream import (
    ClosedBeforeResponse,
    Connection,
    Pool,
    Response,
    UpstreamError,
    UpstreamTimeout,
)


class Rejected(Exception):
    """A request that got no answer from a container: the code and machine-readable reason."""

    status = 503
    error = "unavailable"

    def __init__(self, reason: str, retry_after: int | None = None, container: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after
        self.container = container


class QueueFull(Rejected):
    status = 429
    error = "queue_full"


class QueueTimeout(Rejected):
    error = "queue_timeout"


class NoContainer(Rejected):
    error = "no_ready_container"


class Unreachable(Rejected):
    status = 502
    error = "upstream_unreachable"


class BadGateway(Rejected):
    status = 502
    error = "upstream_error"


class GatewayTimeout(Rejected):
    status = 504
    error = "upstream_timeout"


class Container:
    """One model container: its slots, health and counters."""

    def __init__(self, spec: ContainerSpec) -> None:
        self.spec = spec
        self.name = spec.name
        self.node = spec.node
        self.max_concurrency = spec.max_concurrency
        self.pool = Pool(spec.host, spec.port, max_idle=spec.max_concurrency + 1)
        self.inflight = 0
        self.served = 0
        self.errors = 0
        self.healthy = False  # until its first successful readiness check
        self.checked = False
        self.draining = False  # by the admin API (kept across reloads)
        self.removed = False  # gone from the routing table: drains, then disappears
        self.ok_streak = 0
        self.fail_streak = 0
        self.last_error: str | None = None
        self.model_version: str | None = None
        self.idle_waiters: list[asyncio.Future[None]] = []
        self.sending: set[Connection] = set()  # connections carrying one of its requests

    @property
    def accepting(self) -> bool:
        return self.healthy and not self.draining and not self.removed

    @property
    def state(self) -> str:
        if self.draining or self.removed:
            return "draining"
        if not self.healthy:
            return "down"
        return "busy" if self.inflight >= self.max_concurrency else "ready"

    def as_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "node": self.node,
            "url": self.spec.url,
            "state": self.state,
            "healthy": self.healthy,
            "max_concurrency": self.max_concurrency,
            "in_flight": self.inflight,
            "served": self.served,
            "errors": self.errors,
            "model_version": self.model_version,
            "last_error": self.last_error,
        }


class Exchange:
    """One request: its bytes, its place in the queue, and the future of its answer."""

    __slots__ = (
        "arrived",
        "attempts",
        "container",
        "data",
        "deadline",
        "fresh_retry",
        "future",
        "key",
        "started",
        "timer",
        "waited",
    )

    def __init__(self, data: bytes, deadline: float | None, loop: asyncio.AbstractEventLoop) -> None:
        self.data = data
        self.deadline = deadline  # time.monotonic() instant bounding queue wait + service
        self.future: asyncio.Future[Response] = loop.create_future()
        self.arrived = time.monotonic()
        self.key: int | None = None  # set while queued
        self.timer: asyncio.TimerHandle | None = None
        self.started = 0.0
        self.waited = 0.0  # seconds spent in the queue (all attempts)
        self.attempts = 0
        self.fresh_retry = False
        self.container: Container | None = None

    def resolve(self, response: Response | None, error: Exception | None) -> None:
        if self.future.done():
            return  # its client left
        if response is not None:
            self.future.set_result(response)
        else:
            self.future.set_exception(error or Rejected("no answer"))


class Dispatcher:
    def __init__(self, queue: QueueSpec, upstream_timeout: float = 60.0, retries: int = 2) -> None:
        self.queue_spec = queue
        self.upstream_timeout = upstream_timeout
        self.retries = retries
        self.containers: list[Container] = []
        self.by_name: dict[str, Container] = {}
        self.queue: OrderedDict[int, Exchange] = OrderedDict()
        self._next_key = 0
        self._rr = 0
        self.service_ewma_s = 0.0  # recent service time, for Retry-After estimates
        self.rejected: dict[str, int] = {}
        self.retried = 0

    # -- choosing a slot ------------------------------------------------------------
    def _pick(self) -> Container | None:
        """The least loaded ready container with a free slot (round-robin among equals)."""
        containers = self.containers
        n = len(containers)
        best: Container | None = None
        best_load = 2.0
        best_i = 0
        start = self._rr
        for i in range(n):
            c = containers[(start + i) % n]
            if c.inflight < c.max_concurrency and c.healthy and not c.draining and not c.removed:
                load = c.inflight / c.max_concurrency
                if load < best_load:
                    best, best_load, best_i = c, load, i
                    if load == 0.0:
                        break
        if best is not None:
            self._rr = (start + best_i + 1) % n
        return best

    def any_accepting(self) -> bool:
        return any(c.accepting for c in self.containers)

    def ready_slots(self) -> int:
        return sum(c.max_concurrency for c in self.containers if c.accepting)

    def retry_after(self) -> int:
        """Seconds until a newly queued request would likely be served (at least 1)."""
        slots = max(1, self.ready_slots())
        estimate = (len(self.queue) + 1) * self.service_ewma_s / slots
        return max(1, min(3600, int(estimate + 0.999)))

    def _count(self, exc: Rejected) -> Rejected:
        self.rejected[exc.error] = self.rejected.get(exc.error, 0) + 1
        return exc

    # -- the life of an exchange -------------------------------------------------------
    def submit(self, ex: Exchange, priority: bool = False) -> None:
        """Start ``ex`` on a free slot or queue it; raises Rejected when it may not wait.

        ``priority`` puts a retried request at the head of the queue (it waited its turn).
        """
        if not self.queue:
            c = self._pick()
            if c is not None:
                self._start(ex, c)
                return
            # checked only here: a queue implies an accepting container (changed()
            # fails the whole queue when the last one stops accepting)
            if not self.any_accepting():
                raise self._count(NoContainer("no container is ready to serve", retry_after=1))
        if len(self.queue) >= self.queue_spec.max_length and not priority:
            raise self._count(
                QueueFull(
                    f"the queue is full ({self.queue_spec.max_length} waiting)",
                    retry_after=self.retry_after(),
                )
            )
        now = time.monotonic()
        wait = self.queue_spec.timeout_s - ex.waited
        by_deadline = ex.deadline is not None and ex.deadline - now < wait
        if by_deadline:
            assert ex.deadline is not None
            wait = ex.deadline - now
        if wait <= 0:
            raise self._count(QueueTimeout(self._timeout_reason(by_deadline), retry_after=self.retry_after()))
        ex.key = key = self._next_key
        self._next_key += 1
        ex.started = now
        ex.timer = asyncio.get_running_loop().call_later(wait, self._expire, ex, by_deadline)
        self.queue[key] = ex
        if priority:
            self.queue.move_to_end(key, last=False)

    def withdraw(self, ex: Exchange) -> None:
        """The client left: a queued request leaves the queue (one in flight completes)."""
        if ex.key is not None and self.queue.pop(ex.key, None) is not None:
            ex.key = None
            if ex.timer is not None:
                ex.timer.cancel()

    def _timeout_reason(self, by_deadline: bool) -> str:
        if by_deadline:
            return "the request deadline passed while it was queued"
        return f"waited {self.queue_spec.timeout_s:g}s in the queue (queue.timeout_s)"

    def _expire(self, ex: Exchange, by_deadline: bool) -> None:
        if ex.key is not None and self.queue.pop(ex.key, None) is not None:
            ex.key = None
            ex.waited += time.monotonic() - ex.started
            reason = self._timeout_reason(by_deadline)
            ex.resolve(None, self._count(QueueTimeout(reason, retry_after=self.retry_after())))

    def position(self, ex: Exchange) -> int | None:
        """How many queued requests are ahead of ``ex`` (None when it is not queued)."""
        if ex.key is None or ex.key not in self.queue:
            return None
        ahead = 0
        for key, other in self.queue.items():
            if key == ex.key:
                return ahead
            if not other.future.done():
                ahead += 1
        return None

    def dispatch(self) -> None:
        """Hand free slots to the head of the queue, in order."""
        while self.queue:
            c = self._pick()
            if c is None:
                return
            ex = self._pop_head()
            if ex is None:
                return
            self._start(ex, c)

    def _pop_head(self) -> Exchange | None:
        """The first queued request, out of the queue (skipping those whose client left)."""
        queue = self.queue
        while queue:
            _, ex = queue.popitem(last=False)
            ex.key = None
            if ex.timer is not None:
                ex.timer.cancel()
                ex.timer = None
            ex.waited += time.monotonic() - ex.started
            if not ex.future.done():
                return ex
        return None

    def _start(self, ex: Exchange, c: Container) -> None:
        c.inflight += 1
        ex.container = c
        ex.started = now = time.monotonic()
        timeout = self.upstream_timeout
        if ex.deadline is not None:
            timeout = ex.deadline - now
            if timeout <= 0:
                self._finish(c, ex, None, GatewayTimeout("the request deadline passed", container=c.name))
                return
            timeout = min(timeout, self.upstream_timeout)
        conn = c.pool.take_idle()
        if conn is not None:
            c.sending.add(conn)
            conn.send(ex.data, timeout, self._on_answer, ex)
        else:
            asyncio.get_running_loop().create_task(self._connect_and_send(c, ex, timeout))

    async def _connect_and_send(self, c: Container, ex: Exchange, timeout: float) -> None:
        try:
            conn = await c.pool.connect(timeout)
        except UpstreamError as exc:
            self._on_answer(ex, None, None, exc)
            return
        c.sending.add(conn)
        conn.send(ex.data, timeout, self._on_answer, ex)

    def _on_answer(
        self, ex: Exchange, conn: Connection | None, response: Response | None, error: UpstreamError | None
    ) -> None:
        """The end of one exchange (called from the connection's callback)."""
        c = ex.container
        assert c is not None
        if conn is not None:
            c.sending.discard(conn)
        if response is not None:
            assert conn is not None
            c.pool.put(conn, response.keep_alive)
            c.served += 1
            if response.status >= 500:
                c.errors += 1
            version = response.header("X-Model-Version")
            if version is not None:
                c.model_version = version
            took = time.monotonic() - ex.started
            ewma = self.service_ewma_s
            self.service_ewma_s = took if ewma == 0.0 else ewma + 0.05 * (took - ewma)
            self._finish(c, ex, response, None)
            return
        if (
            isinstance(error, ClosedBeforeResponse)
            and conn is not None
            and conn.reused
            and not ex.fresh_retry
            and not ex.future.done()
        ):
            # the keep-alive race: the container closed an idle connection we reused
            ex.fresh_retry = True
            remaining = self.upstream_timeout if ex.deadline is None else ex.deadline - time.monotonic()
            asyncio.get_running_loop().create_task(self._connect_and_send(c, ex, max(remaining, 0.001)))
            return
        c.errors += 1
        c.last_error = str(error)
        if isinstance(error, UpstreamTimeout):
            self._finish(c, ex, None, GatewayTimeout(f"{c.name} gave no answer in time", container=c.name))
            return
        if error is None or not error.retryable:
            self._finish(c, ex, None, BadGateway(f"{c.name}: {error}", container=c.name))
            return
        self.eject(c, str(error))
        self._release(c)
        if ex.future.done():
            self.dispatch()
            return
        if ex.attempts < self.retries:
            ex.attempts += 1
            ex.fresh_retry = False
            self.retried += 1
            try:
                self.submit(ex, priority=True)
            except Rejected as exc:
                ex.resolve(None, exc)
            self.dispatch()
            return
        ex.resolve(None, Unreachable(f"{c.name}: {error} (after {ex.attempts} retries)", container=c.name))
        self.dispatch()

    def _finish(self, c: Container, ex: Exchange, response: Response | None, error: Rejected | None) -> None:
        self._release(c)
        ex.resolve(response, error)
        if not self.queue:
            return
        if c.inflight < c.max_concurrency and c.accepting:
            # A queue means every other container is full (dispatch runs after every
            # change), so the slot just freed is the one to fill: no need to look for it.
            head = self._pop_head()
            if head is not None:
                self._start(head, c)
        else:
            self.dispatch()

    def _release(self, c: Container) -> None:
        c.inflight -= 1
        if c.inflight == 0:
            for fut in c.idle_waiters:
                if not fut.done():
                    fut.set_result(None)
            c.idle_waiters.clear()
            if c.removed:
                self._forget(c)

    # -- fleet changes ----------------------------------------------------------------
    def _fail_queue_if_dead(self) -> None:
        if self.queue and not self.any_accepting():
            waiting = list(self.queue.values())
            self.queue.clear()
            for ex in waiting:
                ex.key = None
                if ex.timer is not None:
                    ex.timer.cancel()
                ex.resolve(None, self._count(NoContainer("no container is ready to serve", retry_after=1)))

    def changed(self) -> None:
        """Call after any health or admin change: serve the queue or fail it fast."""
        self.dispatch()
        self._fail_queue_if_dead()

    def _forget(self, c: Container) -> None:
        if c in self.containers:
            self.containers.remove(c)
        if self.by_name.get(c.name) is c:
            del self.by_name[c.name]
        c.pool.close()

    def apply(self, specs: Iterable[ContainerSpec], queue: QueueSpec) -> dict[str, list[str]]:
        """Adopt a new routing table: new containers join, removed ones drain first."""
        self.queue_spec = queue
        wanted = {spec.name: spec for spec in specs}
        added: list[str] = []
        removed: list[str] = []
        updated: list[str] = []
        for c in list(self.containers):
            if c.removed:
                continue
            spec = wanted.get(c.name)
            if spec is not None and (spec.host, spec.port) == (c.spec.host, c.spec.port):
                if spec != c.spec:
                    c.spec, c.node, c.max_concurrency = spec, spec.node, spec.max_concurrency
                    c.pool.max_idle = spec.max_concurrency + 1
                    updated.append(c.name)
                continue
            c.removed = True
            removed.append(c.name)
            if c.inflight == 0:
                self._forget(c)
        for spec in wanted.values():
            current = self.by_name.get(spec.name)
            if current is None or current.removed:
                c = Container(spec)
                if current is not None:
                    c.draining = current.draining
                self.containers.append(c)
                self.by_name[spec.name] = c
                added.append(spec.name)
        self.changed()
        return {"added": added, "removed": removed, "updated": updated}

    def select(self, node: str | None = None, container: str | None = None) -> list[Container]:
        return [
            c
            for c in self.containers
            if not c.removed and (c.node == node if node is not None else c.name == container)
        ]

    def set_draining(self, containers: Iterable[Container], draining: bool) -> None:
        for c in containers:
            c.draining = draining
        self.changed()

    async def wait_idle(self, containers: Iterable[Container]) -> None:
        loop = asyncio.get_running_loop()
        for c in containers:
            while c.inflight > 0:
                fut: asyncio.Future[None] = loop.create_future()
                c.idle_waiters.append(fut)
                await fut

    def mark_health(self, c: Container, ok: bool, rise: int, fall: int, error: str | None = None) -> None:
        """Record a check result; state flips after ``rise`` successes / ``fall`` failures."""
        first = not c.checked
        c.checked = True
        if ok:
            c.fail_streak = 0
            c.ok_streak += 1
            if not c.healthy and (first or c.ok_streak >= rise):
                c.healthy = True
                c.last_error = None
                self.changed()
        else:
            c.ok_streak = 0
            c.fail_streak += 1
            c.last_error = error
            if c.healthy and c.fail_streak >= fall:
                c.healthy = False
                # its requests still waiting for a first byte go to other containers now
                for conn in list(c.sending):
                    conn.abandon(f"{c.name} failed its health checks before answering ({error})")
                self.changed()

    def eject(self, c: Container, error: str) -> None:
        """Passive ejection: the container failed a real request at the connection level."""
        c.ok_streak = 0
        c.last_error = error
        if c.healthy:
            c.healthy = False
            self.changed()
