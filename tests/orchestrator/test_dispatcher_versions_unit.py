"""Requests pinned to a model version: only containers serving it, at submit and at hand-over."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import pytest

from onnxfleet.orchestrator.errors import HTTPError
from onnxfleet.orchestrator.exchange import Exchange, Forwarder
from onnxfleet.orchestrator.forward import request_bytes
from onnxfleet.orchestrator.health import HealthChecker
from onnxfleet.orchestrator.merging import RUN_MODEL, Part
from onnxfleet.orchestrator.pool import Figures
from onnxfleet.orchestrator.routes import QueueSpec
from onnxfleet.orchestrator.settings import HealthSpec
from onnxfleet.orchestrator.upstream import Response
from tests.orchestrator.test_dispatcher_unit import Harness, spec

# a/0 and b/0 serve version 1, c/0 serves version 2
TABLE = [spec("a/0", "a"), spec("b/0", "b"), spec("c/0", "c")]


def run(test: Callable[[], Any]) -> None:
    async def main() -> None:
        test()

    asyncio.run(main())


def harness(queue: QueueSpec | None = None) -> Harness:
    h = Harness(queue, TABLE)
    versions = {"a/0": "1", "b/0": "1", "c/0": "2"}
    for c in h.dispatcher.containers:
        c.model_version = versions[c.name]
    return h


def pinned(h: Harness, version: str | None) -> Exchange:
    ex = h.exchange()
    ex.version = version
    return ex


def where(h: Harness, ex: Exchange) -> str:
    return next(c.name for e, c in h.running if e is ex)


def test_a_pinned_request_goes_only_to_a_container_of_its_version() -> None:
    def test() -> None:
        h = harness()
        for _ in range(3):
            ex = h.submit(pinned(h, "2"))
            assert where(h, ex) == "c/0"
            h.answer()
        one = h.submit(pinned(h, "1"))
        assert where(h, one) in ("a/0", "b/0")
        h.check()

    run(test)


def test_a_pinned_request_waits_for_its_version_while_the_others_pass_it() -> None:
    def test() -> None:
        h = harness()
        d = h.dispatcher
        busy = h.submit(pinned(h, "2"))  # c/0 busy
        waiting = h.submit(pinned(h, "2"))  # queued: nothing else serves 2
        assert waiting.key is not None
        assert d.pinned == 1
        behind = h.submit()  # unpinned, behind it: takes a version-1 container at once
        assert where(h, behind) in ("a/0", "b/0")
        other = h.submit()
        assert where(h, other) in ("a/0", "b/0")
        assert where(h, other) != where(h, behind)
        late = h.submit()  # everything busy now: queued behind the pinned one
        assert list(d.queue.values()) == [waiting, late]
        # a version-1 slot frees: the pinned head must not get it; the one behind does
        h.answer(h.running.index(next((e, c) for e, c in h.running if e is behind)))
        assert waiting.key is not None
        assert late.key is None
        assert where(h, late) in ("a/0", "b/0")
        # c/0 frees: the pinned one goes there
        h.answer(h.running.index(next((e, c) for e, c in h.running if e is busy)))
        assert where(h, waiting) == "c/0"
        assert d.pinned == 0
        assert not d.queue
        h.check()

    run(test)


def test_a_freed_slot_of_another_version_stays_free_rather_than_take_a_pinned_request() -> None:
    def test() -> None:
        h = harness()
        d = h.dispatcher
        first = [h.submit() for _ in range(3)]  # every container busy
        queued = h.submit(pinned(h, "2"))
        a = next(e for e, c in h.running if c.name == "a/0")
        h.answer(h.running.index(next((e, c) for e, c in h.running if e is a)))
        assert queued.key is not None  # a/0 serves 1: it stays free
        assert d.roster.by_name["a/0"].free
        assert [e for e in first if e is not a]
        c_ex = next(e for e, c in h.running if c.name == "c/0")
        h.answer(h.running.index(next((e, c) for e, c in h.running if e is c_ex)))
        assert where(h, queued) == "c/0"

    run(test)


def test_a_version_no_ready_container_serves_is_refused_at_once() -> None:
    def test() -> None:
        h = harness()
        with pytest.raises(HTTPError) as refused:
            h.submit(pinned(h, "3"))
        assert (refused.value.status, refused.value.code) == (503, "no_ready_container")
        assert "version '3'" in refused.value.message
        assert h.dispatcher.rejected == {"no_ready_container": 1}
        # with a queue of unpinned requests too: every container busy, 2 down
        h.health(h.dispatcher.roster.by_name["c/0"], False)
        for _ in range(3):
            h.submit()
        with pytest.raises(HTTPError):
            h.submit(pinned(h, "2"))
        assert h.dispatcher.any_accepting("1")
        assert not h.dispatcher.any_accepting("2")

    run(test)


def test_queued_requests_of_a_version_fail_when_its_last_container_stops() -> None:
    def test() -> None:
        h = harness()
        d = h.dispatcher
        for _ in range(3):
            h.submit()
        two = h.submit(pinned(h, "2"))
        one = h.submit(pinned(h, "1"))
        free = h.submit()
        h.health(d.roster.by_name["c/0"], False)
        assert two in h.finished
        assert two.error is not None
        assert (two.error.status, two.error.code) == (503, "no_ready_container")
        assert "version '2'" in two.error.message
        assert one.key is not None
        assert free.key is not None
        assert d.pinned == 1

    run(test)


def test_an_unpinned_request_takes_a_free_container_the_queued_pinned_ones_cannot_use() -> None:
    def test() -> None:
        h = harness()
        d = h.dispatcher
        h.submit(pinned(h, "2"))
        queued = h.submit(pinned(h, "2"))
        assert d.queue
        assert d.roster.by_name["a/0"].free
        ex = h.submit()
        assert where(h, ex) in ("a/0", "b/0")
        assert list(d.queue.values()) == [queued]

    run(test)


def test_a_container_that_switches_version_takes_the_requests_waiting_for_it() -> None:
    def test() -> None:
        h = harness()
        d = h.dispatcher
        h.submit(pinned(h, "2"))
        waiting = h.submit(pinned(h, "2"))
        checker = HealthChecker(d, Forwarder(d, 60.0, 2), HealthSpec(rise=1, fall=1))
        b = d.roster.by_name["b/0"]
        checker.record(b, None, "1")  # the same version: nothing moves
        assert waiting.key is not None
        checker.record(b, None, "2")  # restarted with version 2
        assert b.model_version == "2"
        assert where(h, waiting) == "b/0"

    run(test)


def test_a_container_switching_version_while_down_is_recorded_and_the_queue_served() -> None:
    def test() -> None:
        h = harness()
        d = h.dispatcher
        checker = HealthChecker(d, Forwarder(d, 60.0, 2), HealthSpec(rise=1, fall=1))
        a = d.roster.by_name["a/0"]
        checker.record(a, "down", None)
        assert not a.healthy
        h.submit(pinned(h, "2"))
        waiting = h.submit(pinned(h, "2"))
        checker.record(a, None, "2")  # back up, with version 2: one change of state
        assert (a.healthy, a.model_version) == (True, "2")
        assert where(h, waiting) == "a/0"
        checker.record(a, "boom", "2")  # a failure naming the same version: no switch
        assert a.model_version == "2"

    run(test)


def test_an_answer_naming_a_new_version_reaches_the_queue() -> None:
    def test() -> None:
        h = harness()
        d = h.dispatcher
        figures = Figures()
        forwarder = Forwarder(d, 60.0, 2, figures=figures)
        c = d.roster.by_name["c/0"]
        h.submit(pinned(h, "2"))  # c/0 busy
        waiting = h.submit(pinned(h, "2"))
        # a/0 answers a request as version 2 (restarted since its last check)
        ex = h.submit()
        assert where(h, ex) in ("a/0", "b/0")
        target = next(rc for e, rc in h.running if e is ex)
        h.running = [(e, rc) for e, rc in h.running if e is not ex]

        class Conn:
            reused = False

        pool_put: list[bool] = []
        target.endpoint.pool.put = lambda _conn, keep: pool_put.append(keep)  # type: ignore[method-assign]
        forwarder._answered(ex, target, Conn(), Response(200, [(b"X-Model-Version", b"2")], b"{}", True))  # type: ignore[arg-type]
        assert target.model_version == "2"
        assert where(h, waiting) == target.name
        assert figures.versions["2"].execution_count == 1
        assert figures.versions["2"].batches[1].count == 1
        assert c.model_version == "2"

    run(test)


def test_a_resent_pinned_request_avoids_its_container_only_for_one_of_its_version() -> None:
    def test() -> None:
        h = harness()
        d = h.dispatcher
        a, b, c = (d.roster.by_name[n] for n in ("a/0", "b/0", "c/0"))
        ex = pinned(h, "1")
        ex.avoid = a
        assert d._shuns(ex, a)  # b/0 serves 1 too: wait for it
        ex.version = "2"
        ex.avoid = c
        assert not d._shuns(ex, c)  # no other container serves 2: the same one again
        assert not d._shuns(ex, a)  # (not the one it avoids)
        # picking: of its version, another node first
        assert d._pick(avoid=a, version="1") is b
        assert d._pick(avoid=c, version="2") is c
        assert d._pick(version="3") is None
        again = pinned(h, "1")
        again.avoid = a
        d.submit(again, priority=True)
        assert where(h, again) == "b/0"

    run(test)


def test_the_head_waiting_for_its_version_lets_every_free_container_serve_the_queue() -> None:
    def test() -> None:
        h = harness()
        d = h.dispatcher
        d.dispatching = False  # standby: everything queues
        head = h.submit(pinned(h, "2"))
        c_ex = h.submit(pinned(h, "2"))
        rest = [h.submit() for _ in range(2)]
        d.roster.by_name["c/0"].draining = True
        d.dispatching = True
        d.dispatch()  # the head's version has no free container: a/0 and b/0 take the others
        assert {where(h, e) for e in rest} == {"a/0", "b/0"}
        assert head.key is not None
        assert c_ex.key is not None
        assert d.pinned == 2
        d.roster.by_name["c/0"].draining = False
        d.changed()
        assert where(h, head) == "c/0"
        assert c_ex.key is not None

    run(test)


def test_pinned_counts_follow_the_queue_through_expiry_and_withdrawal() -> None:
    def test() -> None:
        h = harness(QueueSpec(max_length=20, timeout_s=60))
        d = h.dispatcher
        h.submit(pinned(h, "2"))
        gone = h.submit(pinned(h, "2"))
        d.withdraw(gone)
        assert d.pinned == 0
        stays = h.submit(pinned(h, "2"))
        assert d.pinned == 1
        d.changed()
        assert d.pinned == 1
        assert stays.key is not None

    run(test)


def test_a_merged_call_takes_only_requests_bound_for_its_containers_version() -> None:
    from tests.orchestrator.test_batching_unit import ECHO
    from tests.orchestrator.test_batching_unit import Harness as BatchHarness

    async def main() -> None:
        h = BatchHarness(max_batch_size=8)
        c = h.dispatcher.roster.by_name["b"]
        body = json.dumps({"inputs": [[1.0, 2.0]]}).encode()
        ex = Exchange(
            request_bytes("POST", b"/run_model", [(b"content-type", b"application/json")], body), None, _none
        )
        assert ECHO is not None
        ex.part = Part(RUN_MODEL, len(body), ECHO)
        c.model_version = "7"
        assert h.batcher._mergeable(ex, c)
        ex.version = "7"  # /run_model?version=7: pinned, the path names none
        assert h.batcher._mergeable(ex, c)
        ex.version = "8"
        assert not h.batcher._mergeable(ex, c)

    asyncio.run(main())


def _none(_ex: Exchange) -> None:
    pass
