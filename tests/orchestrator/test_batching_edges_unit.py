"""batching.py at its edges (issue 17): what is never parsed or merged, what the queue counts
once a queued body is read, and failures while a batch is formed or split."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

import numpy as np
import pytest

from onnxfleet import oip
from onnxfleet.orchestrator import batching
from onnxfleet.orchestrator.batching import BatchCollector, Batcher
from onnxfleet.orchestrator.dispatcher import Dispatcher
from onnxfleet.orchestrator.errors import GatewayTimeout
from onnxfleet.orchestrator.exchange import Batch, Exchange, Forwarder
from onnxfleet.orchestrator.forward import request_bytes
from onnxfleet.orchestrator.merging import INFER, RUN_MODEL, Part
from onnxfleet.orchestrator.roster import Roster
from onnxfleet.orchestrator.routes import BatchingSpec, ModelSpec, QueueSpec
from onnxfleet.orchestrator.upstream import Response
from tests.orchestrator.test_batching_unit import ECHO, Harness, echo_answer, server_request


def padded(size: int) -> bytes:
    """A valid /run_model body of exactly ``size`` bytes (JSON allows the blanks)."""
    body = b'{"inputs": [[1.0, 2.0]]}'
    return body[:-1] + b" " * (size - len(body)) + b"}"


def queued(h: Harness, body: bytes) -> Exchange:
    """A request for the model, queued (every slot is taken first)."""
    while any(c.free for c in h.dispatcher.containers):
        h.submit(1000 + len(h.running), 1, "plain")
    ex = Exchange(request_bytes("POST", b"/run_model", [], body), None, lambda _ex: None)
    ex.part = Part(RUN_MODEL, len(body), h.batcher.model)  # type: ignore[arg-type]
    h.dispatcher.submit(ex)
    assert ex.key is not None
    return ex


@pytest.mark.parametrize(
    ("size", "parsed"), [(batching.MAX_PARSE_BYTES, True), (batching.MAX_PARSE_BYTES + 1, False)]
)
def test_only_bodies_up_to_the_parse_limit_are_read_and_the_queue_counts_their_arrays(
    size: int, parsed: bool
) -> None:
    async def main() -> None:
        h = Harness()
        ex = queued(h, padded(size))
        before, held = h.dispatcher.queue_bytes, ex.size
        c = h.dispatcher.containers[0]
        assert h.batcher._mergeable(ex, c) is parsed
        part = ex.part
        assert part is not None
        assert part.read
        assert part.rows == (1 if parsed else 0)
        grown = 8 if parsed else 0  # one row of two float32
        assert (h.dispatcher.queue_bytes, ex.size) == (before + grown, held + grown)
        h.dispatcher.withdraw(ex)
        assert h.dispatcher.queue_bytes == before - held

    asyncio.run(main())


def test_a_request_out_of_the_queue_is_read_without_changing_the_queues_count() -> None:
    async def main() -> None:
        h = Harness()
        ex = queued(h, padded(100))
        h.dispatcher.withdraw(ex)
        before = h.dispatcher.queue_bytes
        assert h.batcher._mergeable(ex, h.dispatcher.containers[0])
        assert h.dispatcher.queue_bytes == before
        assert ex.size == len(ex.data)

    asyncio.run(main())


@pytest.mark.parametrize(
    ("headers", "url", "merged"),
    [
        ([(b"x-pad", b"p" * (4096 - 7))], b"/run_model", True),  # "x-pad: " + value = 4096
        ([(b"x-pad", b"p" * (4096 - 6))], b"/run_model", False),
        ([], b"/" + b"u" * 2047, True),
        ([], b"/" + b"u" * 2048, False),
        ([(b"x-h%d" % i, b"v") for i in range(64)], b"/run_model", True),
        ([(b"x-h%d" % i, b"v") for i in range(65)], b"/run_model", False),
        ([(b"connection", b" Close ,KEEP-ALIVE")], b"/run_model", True),
        ([(b"connection", b"upgrade")], b"/run_model", False),
        ([(b"x-connection", b"upgrade")], b"/run_model", True),
    ],
)
def test_the_limits_of_a_head_batching_merges(
    headers: list[tuple[bytes, bytes]], url: bytes, merged: bool
) -> None:
    async def main() -> None:
        h = Harness()
        request = server_request("POST", "/run_model", headers)
        request.url = url
        assert (h.batcher.part(request) is not None) is merged

    asyncio.run(main())


def fill_then_queue(h: Harness, count: int) -> list[Exchange]:
    while any(c.free for c in h.dispatcher.containers):
        h.submit(900 + len(h.running), 1, "plain")
    return [h.submit(n, 1) for n in range(count)]


def test_a_batch_that_fails_to_form_sends_its_head_alone_and_puts_the_others_back_in_order(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken(*_args: Any) -> bytes:
        raise RecursionError("injected")

    async def main() -> None:
        h = Harness(max_batch_size=8)
        d = h.dispatcher
        waiting = fill_then_queue(h, 4)
        monkeypatch.setattr(batching, "merged_request", broken)
        calls = h.batcher.status()["calls"]
        h.answer(0)  # a slot frees: the hand-over tries to merge the four
        head = h.calls[-1]
        assert head is waiting[0]
        assert not isinstance(head, Batch)
        assert head.part is not None
        assert not head.part.mergeable
        assert [d.position(ex) for ex in waiting[1:]] == [0, 1, 2]
        assert all(ex.timer is not None and not ex.done for ex in waiting[1:])  # their queue timers
        assert all(not ex.part.mergeable for ex in waiting[1:] if ex.part is not None)
        assert h.batcher.status()["calls"] == calls + 1
        assert head.container is not None
        assert sum(c.inflight for c in d.containers) == len(h.running)
        monkeypatch.undo()
        while h.running:  # the rest go, each alone, and every client gets its rows
            h.answer(0)
        for n in range(4):
            answer = h.answers[n]
            assert json.loads(answer.body)["outputs"]["y"] == h.values[n]  # type: ignore[union-attr]
        assert (len(d.queue), d.queue_bytes) == (0, 0)

    asyncio.run(main())


def test_a_merged_answer_that_raises_while_split_sends_each_member_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken(*_args: Any) -> None:
        raise ValueError("injected")

    async def main() -> None:
        h = Harness(max_batch_size=8)
        fill_then_queue(h, 3)
        h.answer(0)
        batch = h.calls[-1]
        assert isinstance(batch, Batch)
        monkeypatch.setattr(batching, "split", broken)
        h.answer(h.running.index(next(r for r in h.running if r[0] is batch)))
        assert h.batcher.status()["resent_singly"] == 3
        assert [h.dispatcher.position(m) for m in batch.members] == [None, 0, 1]  # the first took the slot
        monkeypatch.undo()
        while h.running:
            h.answer(0)
        for n in range(3):
            assert json.loads(h.answers[n].body)["outputs"]["y"] == h.values[n]  # type: ignore[union-attr]

    asyncio.run(main())


# -- what mutation testing found untested -------------------------------------------------------
def errors_logged(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


def test_a_new_batcher_is_off_with_its_reason_and_leaves_room_for_the_answer_header() -> None:
    async def main() -> None:
        d = Dispatcher(QueueSpec(), Roster())
        batcher = Batcher(d, Forwarder(d, 60.0, 2), 5000)
        assert batcher.max_bytes == 5000 - 4096
        assert Batcher(d, Forwarder(d, 60.0, 2), 100).max_bytes == 0
        assert (batcher.model, batcher.spec, batcher.mean) == (None, BatchingSpec(), 0.0)
        assert batcher.status() == {"enabled": False, "reason": "the routing table has no batching object"}
        metrics = {m.name: m.documentation for m in BatchCollector(batcher).collect()}
        assert metrics == {
            "onnxfleet_orchestrator_batch_size": (
                "Requests per inference call to a container while batching is on (1: sent alone)"
            ),
            "onnxfleet_orchestrator_batch_rows": "Rows sent to containers while batching is on",
            "onnxfleet_orchestrator_batch_resent_singly": (
                "Requests of merged calls answered with anything but a 200 that splits, sent again alone"
            ),
        }

    asyncio.run(main())


def test_configure_says_on_or_off_and_why(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        h = Harness()
        caplog.set_level(logging.INFO, "onnxfleet.orchestrator")
        caplog.clear()
        h.configure(ECHO, None)
        assert h.dispatcher.batcher is None
        assert h.batcher.model is None
        off = [r for r in caplog.records if r.getMessage() == "batching off"]
        assert [r.reason for r in off] == ["the routing table has no batching object"]  # type: ignore[attr-defined]
        assert h.batcher.status() == {"enabled": False, "reason": "the routing table has no batching object"}
        caplog.clear()
        h.configure(ECHO, BatchingSpec(4))
        on = [r for r in caplog.records if r.getMessage() == "batching on"]
        assert len(on) == 1
        assert on[0].batching == h.batcher.status()  # type: ignore[attr-defined]
        assert h.batcher.status()["enabled"] is True

    asyncio.run(main())


def test_a_batch_records_its_container_and_time_and_counts_requests_rows_and_the_mean(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def main() -> None:
        h = Harness(max_batch_size=8)
        before = h.batcher.status()
        waiting = fill_then_queue(h, 3)
        h.answer(0)
        batch, c = h.running[-1]
        assert isinstance(batch, Batch)
        assert all(m.container is c and m.sent_at > 0 for m in batch.members)
        assert [m.container for m in waiting] == [c] * 3
        part = h.batcher.part(server_request("POST", "/run_model", []))
        assert part is not None
        assert part.model is h.batcher.model
        after = h.batcher.status()
        assert after["calls"] - before["calls"] == 1
        assert after["requests"] - before["requests"] == 3
        assert after["rows"] - before["rows"] == 3
        assert errors_logged(caplog) == []

    asyncio.run(main())


def test_the_mean_batch_is_a_moving_average_from_the_first_call() -> None:
    async def main() -> None:
        h = Harness()
        h.batcher._count(3, None, 3)
        assert h.batcher.mean == 3
        h.batcher._count(1, None, 1)
        assert h.batcher.mean == pytest.approx(3 + 0.05 * (1 - 3))

    asyncio.run(main())


def test_a_head_that_goes_alone_counts_its_rows(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        h = Harness(max_batch_size=8)
        while any(c.free for c in h.dispatcher.containers):
            h.submit(900 + len(h.running), 1, "plain")
        h.submit(0, 2)
        h.submit(1, 1, "bad")  # cannot join: the head goes alone
        before = h.batcher.status()
        h.answer(0)
        head = h.calls[-1]
        assert not isinstance(head, Batch)
        after = h.batcher.status()
        assert (after["calls"] - before["calls"], after["requests"] - before["requests"]) == (1, 1)
        assert after["rows"] - before["rows"] == 2
        assert errors_logged(caplog) == []

    asyncio.run(main())


def test_gathering_stops_at_the_byte_limit_inclusive(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        h = Harness(max_batch_size=8)
        h.batcher.max_bytes = 24  # three rows of two float32
        fill_then_queue(h, 4)
        h.answer(0)
        batch = h.calls[-1]
        assert isinstance(batch, Batch)
        assert len(batch.members) == 3
        assert errors_logged(caplog) == []

    asyncio.run(main())


def test_a_request_behind_the_head_that_batching_does_not_know_stops_gathering_quietly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def main() -> None:
        h = Harness(max_batch_size=8)
        while any(c.free for c in h.dispatcher.containers):
            h.submit(900 + len(h.running), 1, "plain")
        h.submit(0, 1)
        h.submit(1, 1)
        h.submit(2, 1, "plain")
        h.answer(0)
        assert isinstance(h.calls[-1], Batch)
        assert len(h.calls[-1].members) == 2
        assert errors_logged(caplog) == []

    asyncio.run(main())


def test_requests_for_an_explicit_version_merge_on_a_container_serving_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def main() -> None:
        h = Harness(max_batch_size=8)
        for c in h.dispatcher.containers:
            c.model_version = "7"
        waiting = fill_then_queue(h, 2)
        for ex in waiting:
            assert ex.part is not None
            ex.part.version = "7"
        h.answer(0)
        assert isinstance(h.calls[-1], Batch)
        assert errors_logged(caplog) == []

    asyncio.run(main())


def test_a_part_for_another_tables_model_goes_alone_unread() -> None:
    async def main() -> None:
        h = Harness()
        assert ECHO is not None
        other = ModelSpec("other", ECHO.signature)
        ex = queued(h, padded(100))
        assert ex.part is not None
        ex.part.model = other
        assert h.batcher._mergeable(ex, h.dispatcher.containers[0]) is False
        assert ex.part.read
        assert ex.part.rows == 0

    asyncio.run(main())


def test_each_member_keeps_its_own_deadline_at_the_container() -> None:
    async def main() -> None:
        h = Harness(max_batch_size=8)
        while any(c.free for c in h.dispatcher.containers):
            h.submit(900 + len(h.running), 1, "plain")
        loop = asyncio.get_running_loop()
        answers: dict[int, Any] = {}
        members = []
        for n, ms in enumerate((50, 5000)):
            body = b'{"inputs": [[1.0, 2.0]]}'
            ex = Exchange(
                request_bytes("POST", b"/run_model", [], body),
                time.monotonic() + ms / 1000,
                lambda ex, n=n: answers.__setitem__(n, ex.error),
            )
            ex.part = Part(RUN_MODEL, len(body), h.batcher.model)  # type: ignore[arg-type]
            h.dispatcher.submit(ex)
            members.append(ex)
        h.answer(0)
        assert isinstance(h.calls[-1], Batch)
        assert all(m.timer is not None for m in members)
        assert members[0].timer is not None
        assert members[0].timer.when() - loop.time() == pytest.approx(0.05, abs=0.03)
        await asyncio.sleep(0.12)
        assert isinstance(answers[0], GatewayTimeout)
        assert 1 not in answers

    asyncio.run(main())


def test_a_failure_after_deadline_timers_were_armed_cancels_them(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*_args: Any) -> Any:
        raise RuntimeError("injected")

    async def main() -> None:
        h = Harness(max_batch_size=8)
        while any(c.free for c in h.dispatcher.containers):
            h.submit(900 + len(h.running), 1, "plain")
        members = []
        for _ in range(3):
            body = b'{"inputs": [[1.0, 2.0]]}'
            ex = Exchange(
                request_bytes("POST", b"/run_model", [], body), time.monotonic() + 30, lambda _ex: None
            )
            ex.part = Part(RUN_MODEL, len(body), h.batcher.model)  # type: ignore[arg-type]
            h.dispatcher.submit(ex)
            members.append(ex)
        monkeypatch.setattr(batching, "Batch", broken)
        before = h.batcher.status()
        h.answer(0)
        assert h.calls[-1] is members[0]
        assert members[0].timer is None  # (the forwarder arms it when it sends)
        assert members[0].container is h.running[-1][1]
        assert [h.dispatcher.position(m) for m in members[1:]] == [0, 1]
        assert (after := h.batcher.status())["requests"] - before["requests"] == 1
        assert after["rows"] - before["rows"] == 1
        assert after["calls"] - before["calls"] == 1

    asyncio.run(main())


def test_an_error_status_to_a_merged_call_is_never_split_even_with_a_splittable_body() -> None:
    async def main() -> None:
        h = Harness(max_batch_size=8)
        fill_then_queue(h, 2)
        h.answer(0)
        index = next(i for i, (ex, _) in enumerate(h.running) if isinstance(ex, Batch))
        batch, c = h.running.pop(index)
        h.dispatcher.release(c)
        good = echo_answer(h.sent[id(batch)])
        batch.finish(Response(503, good.headers, good.body, True), None)
        assert h.batcher.status()["resent_singly"] == 2

    asyncio.run(main())


def test_merged_oip_requests_are_split_with_the_models_signature(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        h = Harness(max_batch_size=8)
        while any(c.free for c in h.dispatcher.containers):
            h.submit(900 + len(h.running), 1, "plain")
        got: dict[int, Any] = {}
        for n in range(2):
            body, _ = oip.encode_request({"x": np.full((1, 2), n, np.float32)}, binary_data=False)
            ex = Exchange(
                request_bytes("POST", b"/v2/models/echo/infer", [], body),
                None,
                lambda ex, n=n: got.__setitem__(n, ex.response),
            )
            ex.part = Part(INFER, len(body), h.batcher.model)  # type: ignore[arg-type]
            h.dispatcher.submit(ex)
        h.answer(0)
        index = next(i for i, (ex, _) in enumerate(h.running) if isinstance(ex, Batch))
        h.answer(index)
        assert h.batcher.status()["resent_singly"] == 0
        assert [json.loads(got[n].body)["outputs"][0]["data"] for n in range(2)] == [[0.0, 0.0], [1.0, 1.0]]
        assert errors_logged(caplog) == []

    asyncio.run(main())


def test_status_says_what_the_batcher_does_with_its_settings_rounded() -> None:
    async def main() -> None:
        h = Harness()
        h.configure(ECHO, BatchingSpec(6, 0.0012345))
        h.batcher._count(4, None, 5)
        h.batcher._count(1, None, 1)
        h.batcher._count(1, None, 1)
        assert h.batcher.status() == {
            "enabled": True,
            "model": "echo",
            "max_batch_size": 6,
            "max_delay_ms": 1.234,
            "mean_batch": 3.71,  # 4, then 3.85, then 3.7075
            "calls": 3,
            "requests": 6,
            "rows": 7,
            "resent_singly": 0,
        }

    asyncio.run(main())


def test_members_sent_again_alone_are_counted_across_calls() -> None:
    async def main() -> None:
        h = Harness(max_batch_size=8)
        fill_then_queue(h, 2)
        for _ in range(2):
            h.answer(0)
            index = next(i for i, (ex, _) in enumerate(h.running) if isinstance(ex, Batch))
            h.answer(index, refuse=422)
            while h.running:
                h.answer(0)
            fill_then_queue(h, 2)
        assert h.batcher.status()["resent_singly"] == 4

    asyncio.run(main())
