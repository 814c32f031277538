"""Slots and the one FIFO queue: admission, positions, hand-over of freed slots.

Every container address has ``max_concurrency`` slots. A request takes a free slot of an
accepting container at once, or waits in the single FIFO queue. When a slot frees (the
container answered, or its connection closed), the same event-loop callback hands it to
the head of the queue: no task wakes up between two requests to a container.

All state changes are plain (non-async) methods on the event loop thread, so "find a
free slot and take it" is atomic by construction: the races of the hand-written seeds
(two requests reserving one container, a queue nothing drains) cannot happen. Handing
over is a loop, never a recursion: a burst of expired requests is answered one by one.

One exception to "the head takes the first free slot": a request sent again after a
container closed on it without an answer (``Exchange.avoid``) waits for a slot of
another container while one is in service; the requests behind it take that address's
slots meanwhile.

Another: a request pinned to a model version (``Exchange.version``) goes only to a
container whose readiness checks said it serves that version; while it waits for one,
the requests behind it that may go elsewhere take the other containers' slots. So the
rule kept after every change is: no free container is left with a queued request that
may go to it.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from onnxfleet.orchestrator.errors import HTTPError, NoContainer, QueueFull, QueueTimeout
from onnxfleet.orchestrator.exchange import Exchange
from onnxfleet.orchestrator.roster import Container, Drained, Roster
from onnxfleet.orchestrator.routes import ContainerSpec, QueueSpec

if TYPE_CHECKING:
    from onnxfleet.orchestrator.batching import Batcher


class Dispatcher:
    """One model's slots and queue. Its two collaborators are given by its owner (the
    model's pool, pool.py): ``start``, which sends an exchange once it holds a slot (the
    forwarder's ``send``), and its batcher while batching is on (``use_batcher``)."""

    start: Callable[[Exchange, Container], None]

    def __init__(self, queue: QueueSpec, roster: Roster, max_queue_bytes: int = 64 * 1024 * 1024) -> None:
        self.queue_spec = queue
        self.max_queue_bytes = max_queue_bytes
        self.queue_bytes = 0  # request bytes held by the queue
        self.dispatching = True  # False in standby: another process holds the dispatch lease
        self.roster = roster
        self.containers = roster.containers  # the roster's list, in place
        self.queue: OrderedDict[int, Exchange] = OrderedDict()
        self._next_key = 0
        self._rr = 0
        self.service_ewma_s = 0.0  # recent service time, for Retry-After estimates
        self.rejected: dict[str, int] = {}
        self.batcher: Batcher | None = None  # while batching is on
        self.pinned = 0  # queued requests pinned to a version

    def use_batcher(self, batcher: Batcher | None) -> None:
        """Batching on (with ``batcher``) or off (None): what waited for company goes now."""
        previous, self.batcher = self.batcher, batcher
        if batcher is None and previous is not None:
            previous.flush()

    # -- choosing a slot ------------------------------------------------------------------
    def _pick(
        self, avoid: Container | None = None, advance: bool = True, version: str | None = None
    ) -> Container | None:
        """The least loaded accepting container with a free slot (round-robin among equals;
        ``advance=False`` only looks, and leaves the round-robin where it is)."""
        if not self.dispatching:
            return None
        if avoid is not None or version is not None:
            return self._pick_among(avoid, version)
        containers = self.containers
        n = len(containers)
        best: Container | None = None
        best_load = 2.0
        best_i = 0
        start = self._rr
        for i in range(n):
            c = containers[(start + i) % n]
            if c.free:
                load = c.endpoint.inflight / c.max_concurrency
                if load < best_load:
                    best, best_load, best_i = c, load, i
                    if load == 0.0:
                        break
        if best is not None and advance:
            self._rr = (start + best_i + 1) % n
        return best

    def _pick_among(self, avoid: Container | None, version: str | None) -> Container | None:
        """The least loaded free container serving ``version`` (any when None); for a
        request ``avoid`` closed on without an answer: one of another node first, then
        another container of its node, then its own address."""
        best: Container | None = None
        best_rank = (3, 2.0)
        for c in self.containers:
            if c.free and (version is None or c.model_version == version):
                if avoid is None:
                    where = 0  # pragma: no mutate (one tier for all: any constant ranks the same)
                else:
                    where = 2 if c.endpoint is avoid.endpoint else 1 if c.node == avoid.node else 0
                rank = (where, c.endpoint.inflight / c.max_concurrency)
                if rank < best_rank:
                    best, best_rank = c, rank
        return best

    def _shuns(self, ex: Exchange, c: Container) -> bool:
        """``ex`` must not go to ``c``: its address closed on it, and another container is in
        service (it waits for that one's slot; with none, it goes to the same one again)."""
        avoid = ex.avoid
        if avoid is None or c.endpoint is not avoid.endpoint:
            return False
        version = ex.version
        return any(
            o.accepting
            and o.endpoint is not avoid.endpoint
            and (version is None or o.model_version == version)
            for o in self.containers
        )

    def any_accepting(self, version: str | None = None) -> bool:
        """A container takes requests (of ``version``, when given)."""
        if version is None:
            return any(c.accepting for c in self.containers)
        return any(c.accepting and c.model_version == version for c in self.containers)

    def ready_slots(self) -> int:
        return sum(c.max_concurrency for c in self.containers if c.accepting)

    def retry_after(self) -> int:
        """Seconds until a newly queued request would likely be served (at least 1)."""
        slots = max(1, self.ready_slots())
        estimate = (len(self.queue) + 1) * self.service_ewma_s / slots
        return max(1, min(3600, int(estimate + 0.999)))

    def _count(self, exc: HTTPError) -> HTTPError:
        self.rejected[exc.code] = self.rejected.get(exc.code, 0) + 1
        return exc

    # -- admission ----------------------------------------------------------------------------
    def submit(self, ex: Exchange, priority: bool = False) -> None:
        """Start ``ex`` on a free slot or queue it; raises HTTPError when it may not wait.

        ``priority`` puts a re-sent request at the head of the queue (it waited its turn).
        """
        batcher = self.batcher if ex.part is not None else None
        version = ex.version
        # (with only pinned requests queued a free container may be left that this one may
        # take: no queued request may go to it)
        if not self.queue or self.pinned or version is not None:
            # (a request sent again after an empty answer goes through the queue:
            # dispatch() chooses where, avoiding the container that closed on it)
            holder = batcher if self.queue_spec.max_length != 0 and not self.queue else None
            # (a request held for company is placed later, by dispatch(): looking must not
            # move the round-robin, or every other container would be skipped)
            c = self._pick(advance=holder is None, version=version) if ex.avoid is None else None
            if c is not None:
                if holder is None:
                    self._start(ex, c)
                    return
                holder.hold()
            # checked only here: a queue implies an accepting container (changed()
            # fails the whole queue when the last one stops accepting, and the requests
            # pinned to a version when its last container stops)
            elif not self.any_accepting(version):
                raise self._count(NoContainer(_none_ready(version), retry_after=1))
        if not priority:
            if len(self.queue) >= self.queue_spec.max_length:
                full = f"the queue is full ({self.queue_spec.max_length} waiting): retry later"
                raise self._count(QueueFull(full, retry_after=self.retry_after()))
            if self.queue_bytes + ex.size > self.max_queue_bytes:
                full = f"the queue is full ({self.queue_bytes} bytes of requests waiting): retry later"
                raise self._count(QueueFull(full, retry_after=self.retry_after()))
        self._enqueue(ex, priority)
        if priority or next(iter(self.queue.values())).avoid is not None:
            # a re-send; or a re-sent request waits at the head while a slot it avoids
            # is free: this one may take it
            self.dispatch()
        elif batcher is not None:
            batcher.queued()

    def _enqueue(self, ex: Exchange, head: bool) -> None:
        """Into the queue (at its head for a re-send), with its timer: the queue timeout or
        its deadline, whichever comes first; raises QueueTimeout when that has passed."""
        now = time.monotonic()
        wait = self.queue_spec.timeout_s - ex.waited
        by_deadline = ex.deadline is not None and ex.deadline - now < wait
        if by_deadline:
            assert ex.deadline is not None
            wait = ex.deadline - now
        if wait <= 0:
            raise self._count(self._timeout(by_deadline))
        ex.key = key = self._next_key
        self._next_key += 1
        ex.queued_at = now
        ex.timer = asyncio.get_running_loop().call_later(wait, self._expire, ex, by_deadline)
        self.queue[key] = ex
        self.queue_bytes += ex.size
        if ex.version is not None:
            self.pinned += 1
        if head:
            self.queue.move_to_end(key, last=False)

    def holds_more(self, ex: Exchange, size: int) -> None:
        """A queued request now holds ``size`` more bytes (batching read its body)."""
        if ex.key is not None:
            ex.size += size
            self.queue_bytes += size

    def requeue(self, members: list[Exchange]) -> None:
        """Requests of a batch that must go again (its call reached no container, or they go
        one by one): back at the head of the queue, in their order, whatever its bounds."""
        self.put_back(members)
        self.changed()

    def put_back(self, members: list[Exchange]) -> None:
        """``requeue`` without handing out slots (for a hand-over under way)."""
        for ex in reversed(members):
            if ex.done:
                continue
            if ex.timer is not None:  # the deadline timer it had at the container
                ex.timer.cancel()
                ex.timer = None
            ex.container = None
            try:
                self._enqueue(ex, head=True)
            except HTTPError as exc:
                ex.finish(None, exc)

    def withdraw(self, ex: Exchange) -> None:
        """The client left: a queued request leaves the queue (one in flight runs on)."""
        if ex.key is not None:
            self._unqueue(ex)

    def _unqueue(self, ex: Exchange) -> None:
        """Out of the queue, its queue timer stopped (a queued request has a key and a timer)."""
        assert ex.key is not None
        assert ex.timer is not None
        del self.queue[ex.key]
        self.queue_bytes -= ex.size
        if ex.version is not None:
            self.pinned -= 1
        ex.key = None
        ex.timer.cancel()
        ex.timer = None

    def _timeout(self, by_deadline: bool) -> HTTPError:
        if by_deadline:
            reason = "the request deadline (X-Request-Timeout-Ms) passed while it was queued"
        else:
            reason = (
                f"waited {self.queue_spec.timeout_s:g}s in the queue (queue.timeout_s) without a free slot"
            )
        return QueueTimeout(reason, retry_after=self.retry_after())

    def _expire(self, ex: Exchange, by_deadline: bool) -> None:
        self._unqueue(ex)  # its own timer: it is still queued
        ex.waited += time.monotonic() - ex.queued_at
        ex.finish(None, self._count(self._timeout(by_deadline)))

    def position(self, ex: Exchange) -> int | None:
        """How many queued requests are ahead of ``ex`` (None when it is not queued)."""
        if ex.key is None:
            return None
        for ahead, key in enumerate(self.queue):
            if key == ex.key:
                return ahead
        return None

    # -- hand-over ------------------------------------------------------------------------------
    def dispatch(self) -> None:
        """Hand free slots to the head of the queue, in order."""
        while self.queue:
            head = next(iter(self.queue.values()))
            c = self._pick(head.avoid, version=head.version)
            ex = self._pop_head(c) if c is not None else None
            if ex is None:
                if self.pinned:
                    self._dispatch_around()
                return
            assert c is not None
            self._start(ex, c)

    def _dispatch_around(self) -> None:
        """The head waits for a container it may go to: every other free container takes
        the first queued request that may go to it."""
        for c in list(self.containers):
            while c.free and self.queue:
                ex = self._pop_head(c)
                if ex is None:
                    break
                self._start(ex, c)

    def _pop_head(self, c: Container) -> Exchange | None:
        """The first queued request still worth sending that may go to ``c``, out of the queue."""
        while self.queue:
            ex = self._first_for(c)
            if ex is None:
                return None
            if self.take(ex):
                return ex
        return None

    def _first_for(self, c: Container) -> Exchange | None:
        for ex in self.queue.values():
            if (ex.version is None or ex.version == c.model_version) and (
                ex.avoid is None or not self._shuns(ex, c)
            ):
                return ex
        return None

    def take(self, ex: Exchange) -> bool:
        """``ex`` out of the queue to be sent; False when its deadline passed meanwhile (its
        timer had no turn yet): it is answered instead."""
        self._unqueue(ex)
        now = time.monotonic()
        ex.waited += now - ex.queued_at
        if ex.deadline is not None and ex.deadline <= now:
            ex.finish(None, self._count(self._timeout(True)))
            return False
        return True

    def _start(self, ex: Exchange, c: Container) -> None:
        if ex.part is not None and self.batcher is not None:
            ex = self.batcher.gather(ex, c)
        c.inflight += 1
        c.endpoint.inflight += 1
        ex.container = c
        self.start(ex, c)

    def release(self, c: Container) -> None:
        """A slot of ``c`` is free again: hand it to the head of the queue."""
        c.inflight -= 1
        c.endpoint.inflight -= 1
        if c.inflight == 0:
            for fut in c.idle_waiters:
                if not fut.done():
                    fut.set_result(None)
            c.idle_waiters.clear()
            if c.removed:
                self.roster.forget_if_idle(c)
        if not self.queue:
            return
        if c.free:
            # No other free container has a queued request that may go to it (dispatch
            # runs after every change), so the slot just freed is the one to fill.
            ex = self._pop_head(c)
            if ex is not None:
                self._start(ex, c)
        else:
            self.dispatch()

    def served(self, took: float) -> None:
        ewma = self.service_ewma_s
        self.service_ewma_s = took if ewma == 0.0 else ewma + 0.05 * (took - ewma)

    # -- fleet changes ------------------------------------------------------------------------
    def changed(self) -> None:
        """Call after any health, admin or table change: serve the queue or fail it fast."""
        self.dispatch()
        if self.queue and not self.any_accepting():
            for ex in list(self.queue.values()):
                self._unqueue(ex)
                ex.finish(None, self._count(NoContainer(_none_ready(None), retry_after=1)))
        elif self.pinned:
            served = {c.model_version for c in self.containers if c.accepting}
            for ex in [ex for ex in self.queue.values() if ex.version is not None]:
                if ex.version not in served:
                    self._unqueue(ex)
                    ex.finish(None, self._count(NoContainer(_none_ready(ex.version), retry_after=1)))

    def apply(
        self, specs: Iterable[ContainerSpec], queue: QueueSpec, drained: Drained | None = None
    ) -> dict[str, list[str]]:
        self.queue_spec = queue
        changes = self.roster.apply(specs, drained)
        self.changed()
        return changes

    def set_draining(self, containers: Iterable[Container], draining: bool) -> None:
        for c in containers:
            c.draining = draining
        self.changed()


def _none_ready(version: str | None) -> str:
    if version is None:
        return "no container is ready to serve"
    return f"no container serving version {version!r} is ready"
