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
from onnxfleet.orchestrator.pool import wait_idle
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
        assert not ex.done, "an answered request, or one whose client left, was started"
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
                assert ex.key is None
                assert d.position(ex) is None
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
        assert queued.error.message == "no container is ready to serve"
        assert queued.error.retry_after == 1
        with pytest.raises(HTTPError) as refused:
            h.submit()
        assert (refused.value.status, refused.value.code) == (503, "no_ready_container")

    scenario(body)


def test_queue_timeout_and_deadline_expire_queued_requests() -> None:
    async def main() -> None:
        h = Harness(QueueSpec(max_length=10, timeout_s=0.5), [spec("a/0", "a")])
        h.submit()
        by_queue = h.submit()
        by_deadline = h.submit(h.exchange(deadline=time.monotonic() + 0.02))
        await asyncio.sleep(0.1)
        assert by_deadline.done
        assert not by_queue.done
        assert by_deadline.error is not None
        assert "deadline" in by_deadline.error.message
        await asyncio.sleep(0.5)
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
        expired = [h.submit(h.exchange(deadline=time.monotonic() + 60)) for _ in range(5000)]
        alive = h.submit()
        for ex in expired:
            ex.deadline = time.monotonic()  # passed, and their timers have had no turn
        h.answer()
        assert all(ex.done and ex.error is not None for ex in expired)
        assert {ex.error.message for ex in expired if ex.error is not None} == {
            "the request deadline (X-Request-Timeout-Ms) passed while it was queued"
        }
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


def test_round_robin_among_free_containers_then_the_least_loaded() -> None:
    def body() -> None:
        h = Harness()  # a (1 slot), b (2 slots), c (1 slot)
        for _ in range(4):
            h.submit()
        assert [c.name for _, c in h.running] == ["a/0", "b/0", "c/0", "b/0"]
        waiting = h.submit()
        assert waiting.key is not None
        h.answer(0)  # a's slot goes to the head of the queue
        assert h.running[-1] == (waiting, h.dispatcher.roster.by_name["a/0"])
        h.answer(0)  # b has one of two taken: b (load 1/2) is picked before a and c (full)
        nxt = h.submit()
        assert h.running[-1] == (nxt, h.dispatcher.roster.by_name["b/0"])
        for _ in range(len(h.running)):
            h.answer(0)
        # all free again: the rotation goes on where it stopped, then wraps
        for _ in range(3):
            h.submit()
        assert [c.name for _, c in h.running] == ["c/0", "a/0", "b/0"]

    scenario(body)


def test_retry_after_estimates_the_wait_from_the_service_time() -> None:
    def body() -> None:
        h = Harness(QueueSpec(max_length=100_000, timeout_s=60), [spec("a/0", "a"), spec("b/0", "b")])
        d = h.dispatcher
        assert d.retry_after() == 1  # nothing known yet
        d.served(1.0)
        assert d.service_ewma_s == 1.0  # the first measure is taken as is
        d.served(3.0)
        assert d.service_ewma_s == pytest.approx(1.1)  # then a moving average (weight 0.05)
        for _ in range(2 + 9):
            h.submit()
        assert len(d.queue) == 9
        assert d.ready_slots() == 2
        assert d.retry_after() == 6  # (9 queued + 1) * 1.1 s / 2 slots = 5.5, rounded up
        d.set_draining([d.containers[1]], True)
        assert d.retry_after() == 11  # one slot left: 10 * 1.1 s
        for _ in range(10_000):
            h.submit()
        assert d.retry_after() == 3600  # capped at an hour

    scenario(body)


def test_a_resent_request_goes_to_the_head_of_the_queue() -> None:
    def body() -> None:
        h = Harness(table=[spec("a/0", "a")])
        h.submit()
        first, second = h.submit(), h.submit()
        again = h.exchange()
        h.dispatcher.submit(again, priority=True)
        assert [h.dispatcher.position(ex) for ex in (again, first, second)] == [0, 1, 2]
        h.answer()
        assert h.started[-1] is again

    scenario(body)


def test_refusals_say_what_happened() -> None:
    async def main() -> None:
        h = Harness(QueueSpec(max_length=1, timeout_s=0.05), [spec("a/0", "a")])
        d = h.dispatcher
        h.submit()
        queued = h.submit()
        with pytest.raises(HTTPError) as full:
            h.submit()
        assert full.value.message == "the queue is full (1 waiting): retry later"
        await asyncio.sleep(0.1)
        assert queued.error is not None
        assert queued.error.message == "waited 0.05s in the queue (queue.timeout_s) without a free slot"
        assert 0.04 <= queued.waited < 1.0  # (its 0.05 s, late on a loaded machine)
        assert queued.error.retry_after == 1
        late = h.submit(h.exchange(deadline=time.monotonic() + 0.01))
        await asyncio.sleep(0.05)
        assert late.error is not None
        assert late.error.message == "the request deadline (X-Request-Timeout-Ms) passed while it was queued"
        with pytest.raises(HTTPError) as already:
            h.submit(h.exchange(deadline=time.monotonic() - 1))
        assert already.value.code == "queue_timeout"
        (c,) = d.containers
        h.health(c, False)
        with pytest.raises(HTTPError) as none:
            h.submit()
        assert none.value.message == "no container is ready to serve"
        assert none.value.retry_after == 1
        assert d.rejected == {"queue_full": 1, "queue_timeout": 3, "no_ready_container": 1}

    asyncio.run(main())


def test_the_time_waited_in_the_queue_is_counted() -> None:
    def body() -> None:
        h = Harness(table=[spec("a/0", "a")])
        h.submit()
        queued = h.submit()
        time.sleep(0.05)
        h.answer()
        assert h.started[-1] is queued
        assert queued.waited >= 0.05
        assert queued.key is None
        assert queued.timer is None

    scenario(body)


def test_wait_idle_returns_when_the_last_request_there_ends() -> None:
    async def main() -> None:
        h = Harness(table=[spec("a/0", "a")])
        h.submit()
        (c,) = h.dispatcher.containers
        waiter = asyncio.ensure_future(wait_idle([c]))
        await asyncio.sleep(0.01)
        assert not waiter.done()
        h.answer()
        await asyncio.wait_for(waiter, 1)
        assert c.idle_waiters == []

    asyncio.run(main())


def test_status_view_of_a_container() -> None:
    def body() -> None:
        h = Harness(table=[spec("a/0", "a")])
        (c,) = h.dispatcher.containers
        view = c.as_dict()
        assert view == {
            "name": "a/0",
            "node": "a",
            "url": "http://a:1",
            "state": "ready",
            "healthy": True,
            "max_concurrency": 1,
            "in_flight": 0,
            "served": 0,
            "errors": 0,
            "model_version": None,
            "last_error": None,
        }
        h.submit()
        assert (c.state, c.as_dict()["in_flight"]) == ("busy", 1)
        assert c.eject("refused")
        assert (c.state, c.last_error, c.ok_streak) == ("down", "refused", 0)
        assert not c.eject("again")
        h.dispatcher.set_draining([c], True)
        assert c.state == "draining"

    scenario(body)


def test_selection_and_the_end_of_a_removed_address() -> None:
    def body() -> None:
        h = Harness(table=[spec("a/0", "a"), spec("a/1", "b"), spec("c/0", "c")])
        d = h.dispatcher
        assert [c.name for c in d.roster.select(node="a")] == ["a/0", "a/1"]
        assert [c.name for c in d.roster.select(container="c/0")] == ["c/0"]
        assert d.roster.select(container="a") == []
        h.submit()  # on a/0
        endpoint = d.roster.by_name["a/0"].endpoint
        d.apply([spec("a/1", "b", 3), spec("c/0", "c")], d.queue_spec)
        assert [c.name for c in d.roster.select(node="a")] == ["a/1"]  # a/0 drains, not selectable
        assert d.roster.endpoints[("b", 1)].pool.max_idle == 4  # 3 slots + 1 idle connection
        assert d.roster.endpoints[("c", 1)].pool.max_idle == 2
        assert ("a", 1) in d.roster.endpoints
        h.answer()
        assert ("a", 1) not in d.roster.endpoints  # its last record left: connections closed
        assert endpoint.users == 0
        assert "a/0" not in d.roster.by_name

    scenario(body)


def test_equal_loads_take_turns() -> None:
    def body() -> None:
        h = Harness(table=[spec("a/0", "a", 2), spec("b/0", "b", 2)])
        h.submit()
        h.submit()  # a and b each at 1/2
        h.submit()
        h.submit()
        assert [c.name for _, c in h.running] == ["a/0", "b/0", "a/0", "b/0"]
        h.answer(0)
        h.answer(0)  # a and b at 1/2 again: the turn goes on from where it was
        h.submit()
        h.submit()
        assert [c.name for _, c in h.running[-2:]] == ["a/0", "b/0"]

    scenario(body)


def test_a_queue_bounded_in_bytes_and_a_standby_that_dispatches_nothing() -> None:
    def body() -> None:
        d = Dispatcher(QueueSpec(max_length=100, timeout_s=60), Roster(), max_queue_bytes=10)
        h = Harness.__new__(Harness)
        h.dispatcher, h.running, h.started, h.finished = d, [], [], []
        d.start = h._start
        d.apply([spec("a/0", "a")], d.queue_spec)
        h.health(d.containers[0], True)
        d.dispatching = False  # standby: another process holds the dispatch lease
        first = h.submit(Exchange(b"12345", None, h.finished.append))
        second = h.submit(Exchange(b"12345", None, h.finished.append))
        assert h.started == []
        assert d.queue_bytes == 10
        with pytest.raises(HTTPError) as full:
            h.submit(Exchange(b"1", None, h.finished.append))
        assert full.value.code == "queue_full"
        assert full.value.message == "the queue is full (10 bytes of requests waiting): retry later"
        d.dispatching = True
        d.changed()
        assert h.started == [first]
        assert d.queue_bytes == 5
        d.withdraw(second)
        assert d.queue_bytes == 0
        assert d.rejected == {"queue_full": 1}

    scenario(body)


def test_time_already_waited_counts_when_a_request_is_queued_again() -> None:
    async def main() -> None:
        h = Harness(QueueSpec(max_length=10, timeout_s=1.0), [spec("a/0", "a")])
        h.submit()
        again = h.exchange()
        again.waited = 0.9  # it waited before a re-send
        h.dispatcher.submit(again, priority=True)
        await asyncio.sleep(0.4)
        assert again.error is not None  # after 0.1 s, not 1 s
        assert again.error.code == "queue_timeout"
        assert 1.0 <= again.waited < 1.8  # 0.9 before, about 0.1 this time (not 1 s more)

    asyncio.run(main())


def test_a_removed_container_before_others_does_not_stop_a_reload() -> None:
    def body() -> None:
        h = Harness(table=[spec("a/0", "a"), spec("b/0", "b")])
        d = h.dispatcher
        h.submit()  # on a/0: it will drain, not vanish
        d.apply([spec("b/0", "b")], d.queue_spec)
        changes = d.apply(
            [spec("b/0", "b", 2), spec("c/0", "c")], d.queue_spec, lambda name, node: node == "c"
        )
        assert changes == {"added": ["c/0"], "removed": [], "updated": ["b/0"]}
        assert d.roster.by_name["c/0"].draining  # a new container of a drained node drains
        assert not d.roster.by_name["b/0"].draining
        assert d.roster.endpoints[("b", 1)].pool.max_idle == 3  # 2 slots + 1

    scenario(body)


def test_a_request_sent_again_after_an_empty_answer_avoids_that_address_while_another_serves() -> None:
    """It waits at the head for another container's slot (another node's first); the
    requests behind it take the avoided address's free slot meanwhile; with no other
    container in service it goes to the same address again."""

    async def main() -> None:
        h = Harness(table=[spec("a/0", "a"), spec("a/1", "a2"), spec("b/0", "b")])
        d = h.dispatcher
        a0, a1, b0 = (d.roster.by_name[n] for n in ("a/0", "a/1", "b/0"))
        first = h.submit()
        assert h.running[-1] == (first, a0)
        # a/0 closed on it: sent again, a/0 to avoid: b/0 (another node) before a/1
        h.running.pop()
        d.release(a0)
        first.avoid = a0
        d.submit(first, priority=True)
        assert h.running[-1] == (first, b0)
        filler = h.submit()
        assert h.running[-1] == (filler, a1)
        # only a/0 is free: the next re-sent request waits, the one behind it takes a/0
        again = h.exchange()
        again.avoid = a0
        d.submit(again, priority=True)
        assert again.key is not None, "it waits for another address"
        behind = h.submit()
        assert h.running[-1] == (behind, a0), "the one behind it takes a/0's slot"
        assert d.position(again) == 0
        h.check()
        h.answer(0)  # b/0 answered `first`: the re-sent request takes b/0
        assert h.running[-1] == (again, b0)
        assert not d.queue
        h.check()
        # with no other container in service, the same address
        lone = Harness(table=[spec("a/0", "a"), spec("b/0", "b")])
        la, lb = (lone.dispatcher.roster.by_name[n] for n in ("a/0", "b/0"))
        lone.health(lb, False)
        ex = lone.exchange()
        ex.avoid = la
        lone.dispatcher.submit(ex, priority=True)
        assert lone.running[-1] == (ex, la)
        # and one that waits for b goes to a when b leaves service
        two = Harness(table=[spec("a/0", "a"), spec("b/0", "b")])
        la, lb = (two.dispatcher.roster.by_name[n] for n in ("a/0", "b/0"))
        two.submit()  # to a
        two.submit()  # to b
        two.answer(0)  # a free, b busy
        waiting = two.exchange()
        waiting.avoid = la
        two.dispatcher.submit(waiting, priority=True)
        assert waiting.key is not None
        two.health(lb, False)
        assert two.running[-1] == (waiting, la)

    asyncio.run(main())


def test_requests_put_back_go_to_the_head_in_their_order_and_wait_without_a_slot() -> None:
    """``put_back`` (a hand-over under way): members go back to the queue's head in their
    order, their container and deadline timer at the container cleared; an answered member
    stays out; one whose queue time is spent is answered 503; no slot is handed out."""

    def body() -> None:
        h = Harness(QueueSpec(max_length=10, timeout_s=30), [spec("a/0", "a")])
        d = h.dispatcher
        busy = h.submit()
        waiting = h.submit()
        first, answered, spent, last = (h.exchange() for _ in range(4))
        answered.finish(OK, None)
        spent.waited = 30.0
        container = d.containers[0]
        at_container = asyncio.get_running_loop().call_later(60, lambda: None)
        for ex in (first, spent, last):
            ex.container = container
        first.timer = at_container
        spent.timer = asyncio.get_running_loop().call_later(60, lambda: None)
        d.put_back([first, answered, spent, last])
        assert list(d.queue.values()) == [first, last, waiting]
        assert at_container.cancelled()
        assert first.timer is not None
        assert first.timer is not at_container
        assert (first.container, last.container) == (None, None)
        assert spent.done
        assert spent.timer is None
        assert spent.key is None
        assert spent.error is not None
        assert spent.error.code == "queue_timeout"
        assert spent.response is None
        assert answered.key is None
        h.answer()  # the slot frees: put_back handed nothing out, the next release does
        assert [ex for ex, _ in h.running] == [first]
        assert busy.done

    scenario(body)


class CountingBatcher:
    def __init__(self) -> None:
        self.flushed = 0

    def flush(self) -> None:
        self.flushed += 1


def test_batching_switched_off_flushes_what_waited_for_company_once() -> None:
    d = Harness().dispatcher
    one, two = CountingBatcher(), CountingBatcher()
    d.use_batcher(None)  # off while off: nothing to flush
    d.use_batcher(one)  # type: ignore[arg-type]
    assert d.batcher is one
    d.use_batcher(two)  # type: ignore[arg-type]  # another batcher: still on, no flush
    assert (one.flushed, two.flushed, d.batcher) == (0, 0, two)
    d.use_batcher(None)
    assert (one.flushed, two.flushed, d.batcher) == (0, 1, None)
    d.use_batcher(None)
    assert two.flushed == 1
