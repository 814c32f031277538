"""batching.py at its edges (issue 17): what is never parsed or merged, what the queue counts
once a queued body is read, and failures while a batch is formed or split."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from onnxfleet.orchestrator import batching
from onnxfleet.orchestrator.exchange import Batch, Exchange
from onnxfleet.orchestrator.forward import request_bytes
from onnxfleet.orchestrator.merging import RUN_MODEL, Part
from tests.orchestrator.test_batching_unit import Harness, server_request


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
