"""Batching without processes: the routing table's fields, merging and splitting, and the
dispatcher with its batcher under random events (FIFO, slots, rows, each client its rows)."""

from __future__ import annotations

import asyncio
import gc
import json
import re
import time
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from onnxfleet import oip
from onnxfleet.orchestrator.batching import Batcher
from onnxfleet.orchestrator.dispatcher import Dispatcher
from onnxfleet.orchestrator.errors import GatewayTimeout, HTTPError
from onnxfleet.orchestrator.exchange import Batch, Exchange, Forwarder
from onnxfleet.orchestrator.forward import request_bytes
from onnxfleet.orchestrator.merging import INFER, RUN_MODEL, Part, merged_request, read, split
from onnxfleet.orchestrator.messages import Request
from onnxfleet.orchestrator.roster import Container, Roster
from onnxfleet.orchestrator.routes import (
    BatchingSpec,
    ContainerSpec,
    ModelSpec,
    QueueSpec,
    RoutesError,
    parse_table,
)
from onnxfleet.orchestrator.upstream import ClosedBeforeResponse, Response
from tests.orchestrator.batch_support import FORMATS, client_request
from tests.orchestrator.scripted import until
from tests.simbackend import ECHO_MODEL, EchoModel

CONTAINERS = [{"name": "a/0", "url": "http://a:1", "node": "a"}]
ECHO = parse_table({"containers": CONTAINERS, "model": ECHO_MODEL, "batching": {}}).model
assert ECHO is not None


# -- the routing table -----------------------------------------------------------------------
def test_model_and_batching_fields_and_their_defaults() -> None:
    table = parse_table(
        {"containers": CONTAINERS, "model": ECHO_MODEL, "batching": {"max_batch_size": 8, "max_delay_ms": 0}}
    )
    assert table.model is not None
    assert table.model.name == "echo"
    assert table.model.signature.batch
    assert table.model.signature.input_names == ("x",)
    assert table.model.signature.output_names == ("y", "n")
    assert table.batching is not None
    assert (table.batching.max_batch_size, table.batching.max_delay_s) == (8, 0.0)
    defaults = parse_table({"containers": CONTAINERS, "model": ECHO_MODEL, "batching": {}}).batching
    assert defaults is not None
    assert (defaults.max_batch_size, defaults.max_delay_s) == (32, 0.0)
    plain = parse_table({"containers": CONTAINERS})
    assert (plain.model, plain.batching) == (None, None)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"model": None}, "batching: needs the model's signature"),
        ({"batching": {"max_batch_size": 0}}, "batching.max_batch_size: expected an integer >= 1, got 0"),
        ({"batching": {"max_delay_ms": -1}}, "batching.max_delay_ms: expected milliseconds from 0 to 1000"),
        ({"batching": {"max_delay_ms": True}}, "batching.max_delay_ms: expected milliseconds"),
        ({"batching": {"max_batch": 8}}, "batching: unknown field(s) ['max_batch']"),
        ({"model": {**ECHO_MODEL, "card": 1}}, "model: unknown field(s) ['card']"),
        ({"model": {**ECHO_MODEL, "batch": "yes"}}, "model.batch: expected true or false, got 'yes'"),
        ({"model": {"name": "m", "inputs": []}}, "model: missing required field 'outputs'"),
        ({"model": {**ECHO_MODEL, "inputs": []}}, "model.inputs: expected a non-empty list"),
        (
            {"model": {**ECHO_MODEL, "inputs": [{"name": "x", "datatype": "FLOAT", "shape": [-1]}]}},
            "model.inputs[0].datatype: expected one of ['BOOL'",
        ),
        (
            {"model": {**ECHO_MODEL, "inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4]}]}},
            "model.inputs[0].shape: a model with batch: true has a first dimension -1 (the batch)",
        ),
        (
            {"model": {**ECHO_MODEL, "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, -2]}]}},
            "model.inputs[0].shape: expected a list of integers >= -1 (-1: any), got [-1, -2]",
        ),
        (
            {"model": {**ECHO_MODEL, "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1]}] * 2}},
            "model.outputs[1].name: duplicate name 'y'",
        ),
    ],
)
def test_bad_model_or_batching_objects_say_where_and_what_was_expected(
    change: dict[str, Any], message: str
) -> None:
    raw: dict[str, Any] = {"containers": CONTAINERS, "model": ECHO_MODEL, "batching": {}, **change}
    raw = {k: v for k, v in raw.items() if v is not None}
    with pytest.raises(RoutesError) as refused:
        parse_table(raw, "routes.json")
    assert str(refused.value).startswith("routes.json: ")
    assert message in str(refused.value)


def test_a_model_without_a_batch_dimension_may_have_fixed_shapes_and_is_never_batched() -> None:
    fixed = {**ECHO_MODEL, "batch": False, "inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4]}]}
    table = parse_table({"containers": CONTAINERS, "model": fixed, "batching": {}})
    assert table.model is not None
    assert not table.model.signature.batch

    async def main() -> None:
        d = Dispatcher(QueueSpec(), Roster())
        batcher = Batcher(d, Forwarder(d, 60.0, 2), 1 << 20)
        assert not batcher.configure(table.model, table.batching)
        assert batcher.status() == {
            "enabled": False,
            "reason": "model 'echo' does not say its first dimension is a batch (batch: false)",
        }
        assert batcher.configure(ECHO, table.batching)
        # no part sets another's: the dispatcher's owner gives it its batcher (pool.py)
        assert d.batcher is None
        d.use_batcher(batcher)
        assert d.batcher is batcher
        assert batcher.status()["enabled"]

    asyncio.run(main())


# -- merging: read as the worker reads, split as it would answer -----------------------------
def run_model_body(rows: list[list[float]]) -> bytes:
    return json.dumps({"inputs": rows}).encode()


def read_part(kind: str, body: bytes, header: bytes | None = None, max_rows: int = 8) -> Part:
    assert ECHO is not None
    part = Part(kind, len(body), ECHO, header=header)
    read(part, body, ECHO.signature, max_rows, 1 << 20)
    return part


@pytest.mark.parametrize(
    ("kind", "body", "header", "mergeable"),
    [
        (RUN_MODEL, run_model_body([[1.0, 2.0]]), None, True),
        (RUN_MODEL, run_model_body([[1.0, 2.0]]), b"application/json; charset=utf-8", True),
        (RUN_MODEL, run_model_body([[1.0, 2.0]]), b"application/vnd.x+json", True),
        (RUN_MODEL, run_model_body([[1.0, 2.0]]), b"text/plain", False),  # the worker: 415
        (RUN_MODEL, b'{"inputs": [[1.0, NaN]]}', None, False),  # 422
        (RUN_MODEL, b'{"inputs": [[1.0], [1.0, 2.0]]}', None, False),  # ragged: 422
        (RUN_MODEL, b"{not json", None, False),  # 400
        (RUN_MODEL, run_model_body([[1.0]] * 9), None, False),  # more rows than a batch: alone
        (INFER, oip.encode_request({"x": np.ones((2, 3), np.float32)}, binary_data=False)[0], None, True),
        (
            INFER,
            b'{"inputs": [{"name": "x", "shape": [1, 1], "datatype": "FP64", "data": [1]}]}',
            None,
            False,
        ),
        (
            INFER,
            b'{"inputs": [{"name": "x", "shape": [1, 1], "datatype": "FP32", "data": [1]}], '
            b'"outputs": [{"name": "nope"}]}',
            None,
            False,
        ),
        (INFER, b'{"inputs": [{"name": "x", "shape": [0, 1], "datatype": "FP32", "data": []}]}', None, False),
    ],
)
def test_a_request_merges_only_when_the_worker_would_run_it_as_it_is(
    kind: str, body: bytes, header: bytes | None, mergeable: bool
) -> None:
    assert read_part(kind, body, header).mergeable is mergeable


def test_binary_requests_are_read_with_their_header_length() -> None:
    body, headers = oip.encode_request({"x": np.arange(6, dtype=np.float32).reshape(3, 2)})
    part = read_part(INFER, body, headers[oip.HEADER_LENGTH].encode())
    assert part.mergeable
    assert (part.rows, part.key, part.nbytes) == (3, ((2,),), 24)
    assert read_part(INFER, body, None).mergeable is False  # without it, the body is no JSON: 400


class EchoPort:
    """What the echo model reads of a sim-backend port."""

    name, version, max_rows = "sim-1", "7", None


ECHO_WORKER = EchoModel()


def echo_answer(data: bytes) -> Response:
    """What a worker serving the echo model answers to the HTTP request ``data``."""
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    path = lines[0].split()[1]
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    status, answer, extra = ECHO_WORKER.answer(EchoPort(), path, headers, body)  # type: ignore[arg-type]
    pairs = [tuple(line.split(b": ", 1)) for line in extra.split(b"\r\n") if line]
    if headers.get("x-request-id"):
        pairs.append((b"X-Request-Id", headers["x-request-id"].encode()))
    return Response(status, [(b"X-Model-Version", b"7"), *pairs], answer, True)  # type: ignore[misc]


def byte_headers(headers: dict[str, str]) -> list[tuple[bytes, bytes]]:
    return [(k.lower().encode(), v.encode()) for k, v in headers.items()]


def part_of(path: str, body: bytes, headers: list[tuple[bytes, bytes]]) -> Part:
    assert ECHO is not None
    wanted = b"content-type" if path == "/run_model" else b"inference-header-content-length"
    ids = [v for k, v in headers if k == b"x-request-id"]
    return Part(
        RUN_MODEL if path == "/run_model" else INFER,
        len(body),
        ECHO,
        header=next((v for k, v in headers if k == wanted), None),
        request_id=ids[0] if ids else None,
    )


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(FORMATS),
            st.integers(1, 3),
            st.one_of(st.none(), st.text("abc", min_size=1, max_size=3)),
        ),
        min_size=2,
        max_size=6,
    ),
    st.integers(1, 3),
)
def test_a_split_answer_is_what_each_request_alone_gets(
    members: list[tuple[str, int, str | None]], width: int
) -> None:
    """Status, headers and body bytes of each member's share equal the container's answer to
    that request alone (the echo model stands for the container)."""
    assert ECHO is not None
    rng = np.random.default_rng(len(members) * 10 + width)
    requests, parts = [], []
    for fmt, rows, request_id in members:
        values = rng.standard_normal((rows, width)).astype(np.float32)
        path, body, text_headers = client_request(fmt, values, request_id)
        headers = byte_headers(text_headers)
        requests.append(request_bytes("POST", path.encode(), headers, body))
        part = part_of(path, body, headers)
        read(part, body, ECHO.signature, 32, 1 << 20)
        assert part.mergeable
        parts.append(part)

    merged = echo_answer(merged_request("echo", ECHO.signature, parts))
    assert merged.status == 200
    answers = split(merged, parts, [True] * len(parts), ECHO.signature)
    assert answers is not None
    for data, answer in zip(requests, answers, strict=True):
        alone = echo_answer(data)
        assert answer is not None
        assert (answer.status, answer.headers, answer.body) == (alone.status, alone.headers, alone.body)


def test_an_answer_that_does_not_split_sends_its_members_alone() -> None:
    assert ECHO is not None
    parts = [read_part(RUN_MODEL, run_model_body([[1.0]])) for _ in range(2)]
    one_row, headers = oip.encode_response(
        oip.InferRequest({"x": np.zeros((1, 1), np.float32)}, None, None, {"binary_data_output": True}),
        {"y": np.zeros((1, 1), np.float32), "n": np.ones(1, np.int64)},
        "echo",
        "7",
        {"container": "c"},
    )
    short = Response(200, [(k.encode(), v.encode()) for k, v in headers.items()], one_row, True)
    assert split(short, parts, [True, True], ECHO.signature) is None  # 1 row for 2 members
    garbage = Response(200, [], b"<html>", True)
    assert split(garbage, parts, [True, True], ECHO.signature) is None


# -- the dispatcher with its batcher under random events -------------------------------------
def spec(name: str, slots: int = 1) -> ContainerSpec:
    return ContainerSpec(name, f"http://{name}:1", name, name, 1, slots)


class Harness:
    """A dispatcher and its batcher; container calls recorded, answered by the echo model."""

    def __init__(self, max_batch_size: int = 4, max_delay_ms: float = 0, max_length: int = 50) -> None:
        self.dispatcher = d = Dispatcher(QueueSpec(max_length=max_length, timeout_s=60), Roster())
        self.forwarder = Forwarder(d, 60.0, 2)
        d.start = self._start
        self.batcher = Batcher(d, self.forwarder, 1 << 20)
        table = parse_table(
            {
                "containers": [{"name": "a", "url": "http://a:1", "node": "a", "max_concurrency": 2}]
                + [{"name": n, "url": f"http://{n}:1", "node": n} for n in ("b", "c")],
                "model": ECHO_MODEL,
                "batching": {"max_batch_size": max_batch_size, "max_delay_ms": max_delay_ms},
            }
        )
        d.apply(table.containers, d.queue_spec)
        self.configure(table.model, table.batching)
        for c in d.containers:
            c.record_check(True, 1, 1)
        d.changed()
        self.running: list[tuple[Exchange, Container]] = []
        self.sent: dict[int, bytes] = {}  # what each call wrote (a client that leaves drops its bytes)
        self.calls: list[Exchange] = []  # what the containers received, in order
        self.answers: dict[int, Response | HTTPError] = {}
        self.values: dict[int, list[list[float]]] = {}
        self.bad: set[int] = set()

    def configure(self, model: ModelSpec | None, spec: BatchingSpec | None) -> None:
        """As the model's pool does on a table change (pool.py)."""
        self.dispatcher.use_batcher(self.batcher if self.batcher.configure(model, spec) else None)

    def _start(self, ex: Exchange, c: Container) -> None:
        assert not ex.done
        self.running.append((ex, c))
        self.sent[id(ex)] = ex.data
        self.calls.append(ex)

    def submit(self, n: int, rows: int, kind: str = "good") -> Exchange:
        """Request ``n`` (its rows hold n), batchable or not, valid or not."""
        values = [[float(n), float(i)] for i in range(rows)]
        body = b'{"inputs": "bad"}' if kind == "bad" else run_model_body(values)
        data = request_bytes("POST", b"/run_model", [], body)

        def done(ex: Exchange) -> None:
            self.answers[n] = ex.response if ex.response is not None else ex.error  # type: ignore[assignment]

        ex = Exchange(data, None, done)
        if kind != "plain":
            ex.part = Part(RUN_MODEL, len(body), self.batcher.model)  # type: ignore[arg-type]
        self.values[n] = values
        if kind == "bad":
            self.bad.add(n)
        self.dispatcher.submit(ex)
        return ex

    def answer(self, index: int, refuse: int = 0) -> None:
        """Answer a call: the echo model's answer, or ``refuse`` (a status) for a merged one."""
        ex, c = self.running.pop(index)
        self.dispatcher.release(c)
        if refuse and isinstance(ex, Batch):
            ex.finish(Response(refuse, [], b'{"error": "not in one call", "code": "refused"}', True), None)
        else:
            ex.finish(echo_answer(self.sent[id(ex)]), None)

    def check(self) -> None:
        d = self.dispatcher
        for endpoint in d.roster.endpoints.values():
            on_it = sum(1 for _, c in self.running if c.endpoint is endpoint)
            assert endpoint.inflight == on_it
            assert on_it <= max(c.max_concurrency for c in d.containers if c.endpoint is endpoint)
        for ex, _ in self.running:
            if isinstance(ex, Batch):
                assert len(ex.members) >= 2
                assert sum(p.rows for p in ex.parts) <= self.batcher.spec.max_batch_size
        if d.queue and self.batcher.flush_timer is None:
            assert not [c for c in d.containers if c.free], "an idle slot while a request waits"


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["good"] * 6 + ["bad", "plain", "answer", "answer", "answer", "refuse", "leave"]),
            st.integers(0, 50),
        ),
        max_size=70,
    ),
    st.sampled_from([0, 5]),
)
def test_batches_keep_fifo_slots_and_give_each_client_its_rows(
    steps: list[tuple[str, int]], delay: int
) -> None:
    """Any sequence: no address over its slots, no batch over max_batch_size rows, calls
    start in queue order (a batch's members in order), and every client's answer holds
    exactly its rows. A merged call refused or failed (4xx, 5xx) sends its members again
    alone, first."""

    async def main() -> None:
        h = Harness(max_delay_ms=delay)
        d = h.dispatcher
        submitted: list[Exchange] = []
        queued_order: list[Exchange] = []
        left: set[int] = set()
        resent = 0
        burst = [("good", 1)] * 12 + [("answer", 0)] * 4
        for n, (action, k) in enumerate(burst + steps):
            if action in ("good", "bad", "plain"):
                try:
                    ex = h.submit(n, 1 + k % 3, action)
                except HTTPError:
                    continue
                submitted.append(ex)
                if ex.key is not None:
                    queued_order.append(ex)
            elif action in ("answer", "refuse") and h.running:
                call, _ = h.running[k % len(h.running)]
                h.answer(k % len(h.running), refuse=(422, 500, 503)[k % 3] if action == "refuse" else 0)
                if action == "refuse" and isinstance(call, Batch):  # again, alone, first
                    again = [m for m in call.members if not m.done]
                    resent += len(again)
                    running = [ex for ex, _ in h.running]
                    waiting = [m for m in again if m not in running]
                    assert [d.position(m) for m in waiting] == list(range(len(waiting)))
            elif action == "leave" and submitted:
                ex = submitted[k % len(submitted)]
                if not ex.done:
                    d.withdraw(ex)
                    ex.abandon()
                    left.add(id(ex))
            if delay and k % 4 == 0:
                h.batcher.flush()  # the delay ends
            h.check()
        # FIFO: the first call of each queued request, in order
        first: list[Exchange] = []
        for call in h.calls:
            for ex in call.members if isinstance(call, Batch) else [call]:
                if ex not in first:
                    first.append(ex)
        started = [ex for ex in first if ex in queued_order]
        assert started == [ex for ex in queued_order if ex in started]
        # every answered client got its own rows, whether merged or not
        for n, answer in h.answers.items():
            assert isinstance(answer, Response)
            if n in h.bad:  # alone: the container's own refusal
                assert (answer.status, json.loads(answer.body)["code"]) == (422, "invalid_input")
            else:
                assert answer.status == 200
                assert json.loads(answer.body)["outputs"]["y"] == h.values[n]
        # a batch answered 200 is split, never sent again: only refused ones go again
        assert h.batcher.resent_singly == resent
        sends = [m for call in h.calls for m in (call.members if isinstance(call, Batch) else [call])]
        assert sum(sends.count(ex) - 1 for ex in submitted if ex in sends) <= resent
        # nothing lost
        for ex in submitted:
            assert (
                ex.done
                or ex.key is not None
                or any(ex is r or ex in getattr(r, "members", ()) for r, _ in h.running)
            )

    asyncio.run(main())


def test_a_delay_waits_for_company_until_a_batch_is_full() -> None:
    async def main() -> None:
        # (a delay far longer than the 20 ms sleep: on a loaded machine both timers can be
        # due in one event-loop turn, and the flush would then run first)
        h = Harness(max_batch_size=3, max_delay_ms=500)
        first = h.submit(0, 1)
        assert first.key is not None, "held: it could go at once, it waits for others"
        assert h.calls == []
        await asyncio.sleep(0.02)
        assert h.calls == [], "it waits the delay, not just the event-loop turn"
        h.submit(1, 1)
        assert h.calls == []
        h.submit(2, 1)  # three queued: a full batch, no need to wait
        assert len(h.calls) == 1
        assert isinstance(h.calls[0], Batch)
        assert [m.key for m in h.calls[0].members] == [None] * 3
        h.submit(3, 1)
        assert len(h.calls) == 1
        await asyncio.sleep(0.55)  # the delay passes: sent as it is
        assert len(h.calls) == 2
        assert not isinstance(h.calls[1], Batch)
        assert h.batcher.status()["calls"] == 2
        assert h.batcher.status()["requests"] == 4

    asyncio.run(main())


def test_metrics_text_has_the_batch_size_histogram() -> None:
    async def main() -> None:
        h = Harness(max_batch_size=8)
        h.submit(0, 1)
        h.batcher.flush()  # the event-loop turn ends: it goes alone
        for n in range(1, 6):
            h.submit(n, 1)  # arriving in one turn: they go together
        assert len(h.calls) == 1
        h.batcher.flush()
        assert len(h.calls) == 2
        from onnxfleet.orchestrator.batching import BatchCollector

        families = {m.name: m for m in BatchCollector(h.batcher).collect()}
        sizes = families["onnxfleet_orchestrator_batch_size"]
        counts = {s.labels.get("le"): s.value for s in sizes.samples if s.name.endswith("_bucket")}
        assert (counts["1.0"], counts["4.0"], counts["8.0"]) == (1, 1, 2)
        values = {s.name: s.value for m in families.values() for s in m.samples}
        assert values["onnxfleet_orchestrator_batch_rows_total"] == 6
        assert values["onnxfleet_orchestrator_batch_resent_singly_total"] == 0
        assert re.match(
            r"onnxfleet_orchestrator_batch_rows", families["onnxfleet_orchestrator_batch_rows"].name
        )
        assert h.batcher.status()["mean_batch"] > 1

    asyncio.run(main())


def test_an_explicit_version_merges_only_on_a_container_known_to_serve_it() -> None:
    async def main() -> None:
        h = Harness(max_batch_size=8)
        c = h.dispatcher.roster.by_name["b"]
        assert ECHO is not None
        body, headers = oip.encode_request({"x": np.ones((1, 2), np.float32)})
        data = request_bytes("POST", b"/v2/models/echo/versions/7/infer", byte_headers(headers), body)
        ex = Exchange(data, None, lambda _ex: None)
        ex.part = Part(INFER, len(body), ECHO, header=headers[oip.HEADER_LENGTH].encode(), version="7")
        assert not h.batcher._mergeable(ex, c)  # its version unknown yet: it goes alone (maybe 404)
        c.model_version = "7"
        assert h.batcher._mergeable(ex, c)
        c.model_version = "8"
        assert not h.batcher._mergeable(ex, c)

    asyncio.run(main())


def test_a_batch_and_its_members_leave_no_reference_cycle() -> None:
    """Freed by reference counting, as the unbatched path is (docs/orchestrator.md): each
    client holds its exchange, whose callback holds the client (as app.infer does)."""

    class Client:
        ex: Exchange | None = None

    async def main() -> None:
        h = Harness(max_batch_size=8)
        gc.collect()
        gc.disable()
        try:
            for n in range(6):
                client = Client()
                body = run_model_body([[float(n), 1.0]])
                client.ex = Exchange(
                    request_bytes("POST", b"/run_model", [], body),
                    time.monotonic() + 60,
                    lambda _ex, c=client: None,
                )
                client.ex.part = Part(RUN_MODEL, len(body), h.batcher.model)  # type: ignore[arg-type]
                h.dispatcher.submit(client.ex)
                del client
            h.batcher.flush()
            assert isinstance(h.calls[0], Batch)
            while h.running:
                h.answer(0)
            h.calls.clear()
            h.sent.clear()
            assert gc.collect() == 0, "a batch or a member is only freed by the cyclic GC"
        finally:
            gc.enable()

    asyncio.run(main())


def test_a_batch_without_an_answer_gives_each_member_its_error() -> None:
    async def main() -> None:
        h = Harness(max_batch_size=8)
        members = [h.submit(n, 1) for n in range(3)]
        h.batcher.flush()
        (call, c) = h.running.pop()
        assert isinstance(call, Batch)
        members[1].abandon()  # its client left meanwhile
        h.dispatcher.release(c)
        call.finish(None, GatewayTimeout("c gave no answer within 60s"))
        assert [type(h.answers.get(n)) for n in range(3)] == [GatewayTimeout, type(None), GatewayTimeout]
        assert h.batcher.resent_singly == 0
        assert not h.dispatcher.queue

    asyncio.run(main())


def test_a_batch_its_container_closed_on_sends_each_member_once_more_alone_elsewhere() -> None:
    """No answer byte to a merged call: split, each member once more, alone (never merged
    again: one of them may be what crashed the container), to the other containers while
    they serve; a member closed on again gets 502. Nobody is ejected."""
    closed = "connection closed before any answer (EOF)"

    async def main() -> None:
        h = Harness(max_batch_size=8)
        members = [h.submit(n, 1) for n in range(3)]
        h.batcher.flush()
        call, x = h.running.pop()
        assert isinstance(call, Batch)
        h.forwarder._failed(call, x, None, ClosedBeforeResponse(closed))
        assert h.forwarder.retried == 3
        assert h.calls[1:] == [m for m in members if m.key is None], "alone, in order"
        assert not any(isinstance(ex, Batch) for ex in h.calls[1:])
        assert h.running, "the others serve"
        assert all(c is not x for _, c in h.running), "not back to the container that closed"
        assert [h.dispatcher.position(m) for m in members if m.key is not None] in ([], [0])
        first, y = h.running.pop(0)
        assert first is members[0]
        h.forwarder._failed(first, y, None, ClosedBeforeResponse(closed))
        error = h.answers[0]
        assert isinstance(error, HTTPError)
        assert (error.status, error.code, error.message) == (
            502,
            "upstream_error",
            f"{y.name} closed the connection without an answer",
        )
        while h.running:
            h.answer(0)
        for n in (1, 2):
            answer = h.answers[n]
            assert isinstance(answer, Response)
            assert json.loads(answer.body)["outputs"]["y"] == h.values[n]
        assert all(c.healthy for c in h.dispatcher.containers)
        assert h.forwarder.retried == 3
        assert h.batcher.status()["calls"] == 4  # the batch, then each alone

    asyncio.run(main())


class FakeConnection:
    remote = "127.0.0.1"


def server_request(method: str, path: str, headers: list[tuple[bytes, bytes]], **params: str) -> Request:
    request = Request(FakeConnection())  # type: ignore[arg-type]
    request.method, request.path, request.headers, request.body = (
        method,
        path,
        headers,
        b'{"inputs": [[1.0]]}',
    )
    request.params = params
    return request


def test_which_requests_batching_may_merge_and_what_it_keeps_of_them() -> None:
    async def main() -> None:
        h = Harness()
        part = h.batcher.part
        ids = [(b"x-request-id", b"a"), (b"x-request-id", b"b")]
        run_model = part(server_request("POST", "/run_model", [(b"content-type", b"text/plain"), *ids]))
        assert run_model is not None
        assert (run_model.kind, run_model.header, run_model.request_id, run_model.body_size) == (
            RUN_MODEL,
            b"text/plain",
            b"a,b",  # as WSGI joins repeated headers for the worker
            len(b'{"inputs": [[1.0]]}'),
        )
        job = part(server_request("POST", "/jobs", []), job=True)
        assert job is not None
        assert (job.kind, job.header, job.request_id) == (RUN_MODEL, None, None)
        length = [(b"inference-header-content-length", b"12")]
        infer = part(
            server_request("POST", "/v2/models/echo/versions/7/infer", length, name="echo", version="7")
        )
        assert infer is not None
        assert (infer.kind, infer.header, infer.version) == (INFER, b"12", "7")
        assert part(server_request("POST", "/v2/models/other/infer", [], name="other")) is None
        assert part(server_request("GET", "/v2/models/echo", [], name="echo")) is None
        assert part(server_request("POST", "/v2/models/echo/infer", length * 2, name="echo")) is None
        assert (
            part(server_request("POST", "/run_model", [(b"content-type", b"a"), (b"content-type", b"b")]))
            is None
        )
        h.configure(None, None)
        assert part(server_request("POST", "/run_model", [])) is None

    asyncio.run(main())


def test_requests_one_at_a_time_go_round_every_container() -> None:
    """A request held for company must not move the round-robin when it only looks for a
    free slot: it did, and every other container was skipped (one of each node's two)."""

    async def main() -> None:
        h = Harness()
        went: list[str] = []
        for n in range(6):
            h.submit(n, 1)
            await until(lambda: h.running)  # held until the end of the event-loop turn
            ((_, c),) = h.running
            went.append(c.name)
            h.answer(0)
        assert went == ["a", "b", "c", "a", "b", "c"]

    asyncio.run(main())
