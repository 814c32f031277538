"""The dispatcher and the roster alone: slots, FIFO, admission, expiry, reloads, health state."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from onnxfleet.orchestrator.dispatcher import Dispatcher
from onnxfleet.orchestrator.errors import HTTPError
from onnxfleet.orchestrator.exchange import Exchange
from onnxfleet.orchestrator.roster import Container, Roster
from onnxfleet.orchestrator.routes import ContainerSpec, QueueSpec
from onnxfleet.orchestrator.upstream import Response


def spec(name: str, host: str, slots: int = 1) -> ContainerSpec:
    return ContainerSpec(name, f"http://{host}:1", name.split("/", maxsplit=1)[0], host, 1, slots)


# two tables: b's slots change, c/0 leaves and x/0 takes its address (a rename), d joins
TABLES = [
    [spec("a/0", "a"), spec("b/0", "b", 2), spec("c/0", "c")],
    [spec("a/0", "a"), spec("b/0", "b", 2), spec("x/0", "c"), spec("d/0", "d")],
]
OK = Response(200, [(b"X-Model-Version", b"7")], b"{}", True)


class Harness:
    """A dispatcher whose starts are recorded instead of sent."""

    def __init__(self, queue: QueueSpec | None = None, table: list[ContainerSpec] | None = None) -> None:
        self.dispatcher = Dispatcher(queue or QueueSpec(max_length=20, timeout_s=60), Roster())
        self.running: list[tuple[Exchange, Container]] = []
        self.started: list[Exchange] = []
        self.finished: list[Exchange] = []
        self.dispatcher.start = self._start
        self.dispatcher.apply(table or TABLES[0], self.dispatcher.queue_spec)
        for c in self.dispatcher.containers:
            self.health(c, True)

    def _start(self, ex: Exchange, c: Container) -> None:
        self.running.append((ex, c))
        self.started.append(ex)

    def exchange(self, deadline: float | None = None) -> Exchange:
        return Exchange(b"x", deadline, self.finished.append)

    def submit(self, ex: Exchange | None = None) -> Exchange:
        ex = ex or self.exchange()
        self.dispatcher.submit(ex)
        return ex

    def answer(self, index: int = 0) -> Exchange:
        ex, c = self.running.pop(index)
        self.dispatcher.release(c)
        ex.finish(OK, None)
        return ex

    def health(self, c: Container, ok: bool) -> None:
        if c.record_check(ok, rise=1, fall=1, error=None if ok else "test"):
            self.dispatcher.changed()

    def check(self) -> None:
        d = self.dispatcher
        for c in d.containers:
            assert c.inflight == sum(1 for _, rc in self.running if rc is c)
        for endpoint in d.roster.endpoints.values():
            on_it = sum(1 for _, rc in self.running if rc.endpoint is endpoint)
            assert endpoint.inflight == on_it
            slots = {c.max_concurrency for c in d.containers if c.endpoint is endpoint}
            assert on_it <= max(slots, default=on_it)
        if d.queue:  # never an idle slot while someone waits
            assert not [c for c in d.containers if c.free]


def scenario(body: Callable[[], Any]) -> None:
    async def main() -> None:
        body()

    asyncio.run(main())


events = st.lists(
    st.tuples(
        st.sampled_from(
            ["submit"] * 4 + ["answer"] * 3 + ["leave", "down", "up", "drain", "ready", "reload"]
        ),
        st.integers(0, 50),
    ),
    max_size=60,
)


@settings(max_examples=200, deadline=None)
@given(events)
def test_slots_hold_and_the_queue_is_fifo(steps: list[tuple[str, int]]) -> None:
    """Any sequence of events: no address over its slots, no idle slot while a request waits,
    and queued requests start in the order they were queued. Every sequence begins with a
    burst (8 requests for 4 slots, then 3 answers), so LIFO is caught in every example."""

    def body() -> None:
        h = Harness()
        d = h.dispatcher
        queued: list[Exchange] = []
        submitted: list[Exchange] = []
        tables = 0
        for action, n in [("submit", 0)] * 8 + [("answer", 0)] * 3 + steps:
            if action == "submit":
                try:
                    ex = h.submit()
                except HTTPError:
                    pass
                else:
                    submitted.append(ex)
                    if ex.key is not None:
                        queued.append(ex)
            elif action == "answer" and h.running:
                h.answer(n % len(h.running))
            elif action == "leave" and submitted:
                ex = submitted[n % len(submitted)]
                d.withdraw(ex)
                ex.abandon()
            elif action in ("down", "up") and d.containers:
                h.health(d.containers[n % len(d.containers)], action == "up")
            elif action in ("drain", "ready") and d.containers:
                d.set_draining([d.containers[n % len(d.containers)]], action == "drain")
            elif action == "reload":
                tables += 1
                d.apply(TABLES[tables % 2], d.queue_spec)
                for c in d.containers:
                    if not c.checked:
                        h.health(c, True)
            h.check()
        started_queued = [ex for ex in h.started if ex in queued]
        assert started_queued == [ex for ex in queued if ex in started_queued]
        # nothing lost: each request ran, or is running, queued, refused, or its client left
        for ex in submitted:
            assert ex in h.started or ex.key is not None or ex.done

    scenario(body)


def test_queue_bound_positions_and_retry_after() -> None:
    def body() -> None:
        h = Harness(QueueSpec(max_length=3, timeout_s=60), [spec("a/0", "a")])
        first = h.submit()
        assert h.started == [first]
        waiting = [h.submit() for _ in range(3)]
        assert [h.dispatcher.position(ex) for ex in waiting] == [0, 1, 2]
        assert h.dispatcher.position(first) is None
        with pytest.raises(HTTPError) as refused:
            h.submit()
        assert (refused.value.status, refused.value.code) == (429, "queue_full")
        assert refused.value.retry_after is not None
        assert refused.value.retry_after >= 1
        h.dispatcher.withdraw(waiting[0])
        assert [h.dispatcher.position(ex) for ex in waiting[1:]] == [0, 1]
        h.answer()
        assert h.started == [first, waiting[1]]
        assert h.dispatcher.rejected == {"queue_full": 1}

    scenario(body)


def test_no_accepting_container_refuses_at_once_and_fails_the_queue() -> None:
    def body() -> None:
        h = Harness(table=[spec("a/0", "a")])
        h.submit()
        queued = h.submit()
        (c,) = h.dispatcher.containers
        h.health(c, False)  # the last accepting container goes: the queue is failed at once
        assert queued.done
        assert queued.error is not None
        assert queued.error.code == "no_ready_container"
        with pytest.raises(HTTPError) as refused:
            h.submit()
        assert (refused.value.status, refused.value.code) == (503, "no_ready_container")

    scenario(body)


def test_queue_timeout_and_deadline_expire_queued_requests() -> None:
    async def main() -> None:
        h = Harness(QueueSpec(max_length=10, timeout_s=0.05), [spec("a/0", "a")])
        h.submit()
        by_queue = h.submit()
        by_deadline = h.submit(h.exchange(deadline=time.monotonic() + 0.02))
        await asyncio.sleep(0.03)
        assert by_deadline.done
        assert not by_queue.done
        assert by_deadline.error is not None
        assert "deadline" in by_deadline.error.message
        await asyncio.sleep(0.05)
        assert by_queue.done
        assert by_queue.error is not None
        assert by_queue.error.code == "queue_timeout"
        assert not h.dispatcher.queue
        assert h.dispatcher.rejected == {"queue_timeout": 2}

    asyncio.run(main())


def test_a_burst_of_expired_requests_is_answered_without_recursion() -> None:
    """Thousands of queued requests whose deadline passed before a slot freed (their timers
    had no turn): the hand-over answers each one in a loop, then serves the next live one."""

    def body() -> None:
        h = Harness(QueueSpec(max_length=10_000, timeout_s=60), [spec("a/0", "a")])
        h.submit()
        soon = time.monotonic() + 0.3
        expired = [h.submit(h.exchange(deadline=soon)) for _ in range(5000)]
        alive = h.submit()
        time.sleep(max(0.0, soon - time.monotonic()) + 0.01)
        h.answer()
        assert all(ex.done and ex.error is not None for ex in expired)
        assert {ex.error.code for ex in expired if ex.error is not None} == {"queue_timeout"}
        assert h.started[-1] is alive
        assert len(h.finished) == 5001

    scenario(body)


def test_a_removed_container_drains_and_its_address_keeps_its_slots() -> None:
    """Reload: a removed container leaves only when its requests are done; a new name on
    the same host:port shares its slots meanwhile (never two requests at one address)."""

    def body() -> None:
        h = Harness(table=[spec("c/0", "c")])
        d = h.dispatcher
        h.submit()
        changes = d.apply([spec("x/0", "c")], d.queue_spec)
        assert changes == {"added": ["x/0"], "removed": ["c/0"], "updated": []}
        old = next(c for c in d.containers if c.name == "c/0")
        new = next(c for c in d.containers if c.name == "x/0")
        assert old.removed
        assert old.state == "draining"
        assert old.inflight == 1
        h.health(new, True)
        waiting = h.submit()
        assert waiting.key is not None, "the address is busy: the new name must wait"
        h.answer()
        assert old not in d.containers
        assert h.running == [(waiting, new)]
        h.check()

    scenario(body)


def test_drain_flags_survive_a_reload_and_updates_apply() -> None:
    def body() -> None:
        h = Harness(table=[spec("a/0", "a"), spec("b/0", "b")])
        d = h.dispatcher
        d.set_draining(d.roster.select(node="a"), True)
        changes = d.apply([spec("a/0", "a"), spec("b/0", "b", 3)], d.queue_spec)
        assert changes == {"added": [], "removed": [], "updated": ["b/0"]}
        assert d.roster.by_name["a/0"].draining
        assert d.roster.by_name["b/0"].max_concurrency == 3
        assert d.ready_slots() == 3

    scenario(body)


@pytest.mark.parametrize(("rise", "fall"), [(1, 1), (2, 3), (3, 2)])
def test_health_needs_rise_passes_and_fall_failures(rise: int, fall: int) -> None:
    c = Container(spec("a/0", "a"), Roster()._endpoint(spec("a/0", "a")))
    assert not c.healthy
    assert c.record_check(True, rise, fall)  # the very first check decides at once
    for _ in range(fall - 1):
        assert not c.record_check(False, rise, fall, "no")
        assert c.healthy
    assert c.record_check(False, rise, fall, "no")
    assert not c.healthy
    assert c.last_error == "no"
    assert not c.record_check(False, rise, fall, "no")
    for _ in range(rise - 1):
        assert not c.record_check(True, rise, fall)
        assert not c.healthy
    assert c.record_check(True, rise, fall)
    assert c.healthy
    assert c.last_error is None
    # a failure in the middle of a rise starts it again
    c.record_check(False, rise, fall, "no")
    if fall == 1:
        assert not c.healthy
        for _ in range(rise - 1):
            c.record_check(True, rise, fall)
        c.record_check(False, rise, fall, "again")
        for _ in range(rise - 1):
            assert not c.record_check(True, rise, fall)
        assert c.record_check(True, rise, fall)
