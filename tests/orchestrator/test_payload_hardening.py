"""Issue 17, what a request's payload may do to the orchestrator (items 2, 3, 6, 7): bodies
nested deeply, failures while a freed slot is handed over, the job store's bytes and fair
share, work kept off the event loop, the queue's real memory, heads in both directions.

Real orchestrator (in process) in front of sim-backend ports serving the echo model through
the worker's codec, or scripted containers on loopback."""

from __future__ import annotations

import asyncio
import gc
import json
import socket
import statistics
import threading
import time
import tracemalloc
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from onnxfleet.orchestrator import batching
from tests.orchestrator.batch_support import Answer, client_request, post
from tests.orchestrator.inproc import InProcess, in_process
from tests.orchestrator.orch_support import (
    SimFleet,
    call,
    orchestrator,
    raw_request,
    read_answer,
    routes,
    tokens_file,
    wait_for,
)
from tests.orchestrator.scripted import Fleet, Scripted, run
from tests.orchestrator.test_orchestrator_batching import occupy, queued, rows_for, table


@pytest.fixture(scope="module")
def echo_fleet() -> Iterator[SimFleet]:
    fleet = SimFleet(size=1, service_ms=20.0, echo=True)
    with fleet.service:
        yield fleet


@pytest.fixture
def echo(echo_fleet: SimFleet) -> SimFleet:
    echo_fleet.reset()
    return echo_fleet


def deep_body(depth: int) -> bytes:
    """An OIP request whose ``data`` is nested ``depth`` levels deep (2 KB for 1,000)."""
    data = "[" * depth + "1.0" + "]" * depth
    return ('{"inputs": [{"name": "x", "shape": [1, 1], "datatype": "FP32", "data": ' + data + "}]}").encode()


def send_queued(orch: InProcess, requests: list[tuple[str, bytes, dict[str, str]]]) -> list[Answer]:
    """``requests`` queued in this order behind the occupied slot, then their answers."""
    with ThreadPoolExecutor(len(requests)) as pool:
        futures = []
        for request in requests:
            futures.append(pool.submit(post, orch.url, *request, timeout=20.0))
            queued(orch, len(futures))
        return [f.result() for f in futures]


# -- item 2: deep bodies; the hand-over of a freed slot never loses a request ------------------
def test_a_deeply_nested_body_gets_a_400_naming_the_limit_and_every_queued_request_its_answer(
    echo: SimFleet, tmp_path: Path
) -> None:
    good = [client_request("json", rows_for(i)) for i in range(3)]
    deep = ("/v2/models/echo/infer", deep_body(1000), {})
    assert len(deep[1]) < 2100
    with in_process(table(tmp_path / "routes.json", echo)) as orch:
        first = occupy(orch, echo, hold_ms=800)
        with ThreadPoolExecutor(4) as pool:
            futures = []
            for request in [deep, *good]:  # the deep one at the head of the queue
                futures.append(pool.submit(post, orch.url, *request, timeout=20.0))
                queued(orch, len(futures))
            assert read_answer(first)[0] == 200
            answers = [f.result() for f in futures]
        assert answers[0].status == 400
        assert "nested more than 64 levels deep" in answers[0].json()["error"]
        assert [a.status for a in answers[1:]] == [200, 200, 200]
        assert [a.outputs()["y"] for a in answers[1:]] == [rows_for(i).tolist() for i in range(3)]
        d = orch.orchestrator.dispatcher
        assert orch.call_soon(lambda: (len(d.queue), d.queue_bytes, d.containers[0].inflight)) == (0, 0, 0)


@pytest.mark.parametrize("where", ["read", "merged_request"])
def test_a_failure_while_forming_a_batch_still_answers_the_slot_holder_and_the_queue(
    echo: SimFleet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    """Whatever a body does to the code that merges it (here: it raises), the request that got
    the slot and those queued behind it are each sent alone and answered; no slot leaks."""

    def broken(*_args: Any, **_kwargs: Any) -> Any:
        raise RecursionError("injected")

    requests = [client_request("run_model", rows_for(i), f"h{i}") for i in range(4)]
    with in_process(table(tmp_path / "routes.json", echo)) as orch:
        first = occupy(orch, echo, hold_ms=800)
        monkeypatch.setattr(batching, where, broken)
        with ThreadPoolExecutor(len(requests)) as pool:
            futures = []
            for request in requests:
                futures.append(pool.submit(post, orch.url, *request, timeout=20.0))
                queued(orch, len(futures))
            assert read_answer(first)[0] == 200
            answers = [f.result() for f in futures]
        assert [a.status for a in answers] == [200] * 4
        assert [a.outputs()["y"] for a in answers] == [rows_for(i).tolist() for i in range(4)]
        assert echo.stats(0)["order"][-4:] == ["h0", "h1", "h2", "h3"]  # alone, in queue order
        d = orch.orchestrator.dispatcher
        assert orch.call_soon(lambda: (len(d.queue), d.queue_bytes, d.containers[0].inflight)) == (0, 0, 0)


def test_a_merged_answer_that_fails_to_split_sends_each_member_again_alone(
    echo: SimFleet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*_args: Any, **_kwargs: Any) -> Any:
        raise RecursionError("injected")

    requests = [client_request("binary_out", rows_for(i), f"s{i}") for i in range(3)]
    with in_process(table(tmp_path / "routes.json", echo)) as orch:
        first = occupy(orch, echo, hold_ms=800)
        monkeypatch.setattr(batching, "split", broken)
        with ThreadPoolExecutor(len(requests)) as pool:
            futures = []
            for request in requests:
                futures.append(pool.submit(post, orch.url, *request, timeout=20.0))
                queued(orch, len(futures))
            assert read_answer(first)[0] == 200
            answers = [f.result() for f in futures]
        assert [a.status for a in answers] == [200] * 3
        assert [a.outputs()["y"] for a in answers] == [rows_for(i).tolist() for i in range(3)]
        stats = echo.stats(0)
        assert stats["received"] == 1 + 1 + 3  # the first, the merged call, then each alone
        assert stats["order"][-3:] == ["s0", "s1", "s2"]


# -- item 6: large bodies are never parsed for merging --------------------------------------------
def test_a_body_too_large_to_merge_is_sent_alone_without_being_parsed(
    echo: SimFleet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sizes: list[int] = []
    real = batching.read

    def counted(part: Any, body: bytes, *args: Any) -> None:
        sizes.append(len(body))
        real(part, body, *args)

    large = client_request("run_model", np.full((1500, 8), 0.123456789, dtype=np.float32), "big")
    assert len(large[1]) > batching.MAX_PARSE_BYTES
    small = [client_request("run_model", rows_for(i), f"k{i}") for i in range(2)]
    with in_process(table(tmp_path / "routes.json", echo)) as orch:
        monkeypatch.setattr(batching, "read", counted)
        first = occupy(orch, echo, hold_ms=800)
        with ThreadPoolExecutor(3) as pool:
            futures = []
            for request in [large, *small]:
                futures.append(pool.submit(post, orch.url, *request, timeout=20.0))
                queued(orch, len(futures))
            assert read_answer(first)[0] == 200
            answers = [f.result() for f in futures]
        assert [a.status for a in answers] == [200] * 3
        assert answers[0].outputs()["n"] == [8] * 1500
        assert sizes
        assert max(sizes) <= batching.MAX_PARSE_BYTES
        stats = echo.stats(0)
        assert stats["received"] == 1 + 2  # the first, the large one alone, the small ones merged
        assert stats["order"][1] == "big"


# -- item 7: heads, and what the queue really holds -----------------------------------------------
def test_a_request_with_a_header_a_worker_refuses_alone_is_never_merged(
    echo: SimFleet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker answers a 9,000-byte header line 431; a merged call carries no client header,
    so such a request must go alone to get that answer (the sim does not refuse it: the test
    checks it went alone)."""
    path, body, headers = client_request("run_model", rows_for(7), "long")
    long = (path, body, {**headers, "X-Padding": "p" * 9000})
    other = client_request("run_model", rows_for(8), "short")
    named = (other[0], other[1], {**other[2], "Connection": "keep-alive, X-Secret", "X-Secret": "s"})
    with in_process(table(tmp_path / "routes.json", echo)) as orch:
        first = occupy(orch, echo, hold_ms=800)
        answers = send_queued_after(orch, first, [long, named, other])
        assert [a.status for a in answers] == [200] * 3
        stats = echo.stats(0)
        assert stats["received"] == 1 + 3  # the first, then each alone
        assert stats["order"][-3:] == ["long", "short", "short"]


def send_queued_after(
    orch: InProcess, first: Any, requests: list[tuple[str, bytes, dict[str, str]]]
) -> list[Answer]:
    with ThreadPoolExecutor(len(requests)) as pool:
        futures = []
        for request in requests:
            futures.append(pool.submit(post, orch.url, *request, timeout=20.0))
            queued(orch, len(futures))
        assert read_answer(first)[0] == 200
        return [f.result() for f in futures]


def test_the_queue_holds_in_memory_about_what_it_counts(sim: SimFleet, tmp_path: Path) -> None:
    """Requests queued up to --max-queue-bytes: the orchestrator's memory grows by at most
    1.1 times that (tracemalloc; the requests' bytes held once)."""
    limit = 4 * 1024 * 1024
    body = b'{"inputs": [' + b"1.25, " * (256 * 1024 // 6) + b"1.0]}"
    sim.mode(0, "hang")
    rt = routes(tmp_path / "routes.json", [("a/0", sim.url(0), "a", 1)], queue={"max_length": 1000})
    with in_process(rt, "--max-queue-bytes", str(limit), "--upstream-timeout", "30") as orch:
        d = orch.orchestrator.dispatcher
        socks = [raw_request(orch.port, body=b"{}")]
        wait_for(lambda: orch.call_soon(lambda: d.containers[0].inflight) == 1, what="slot taken")
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            n = limit // len(body)
            for i in range(n):
                socks.append(raw_request(orch.port, request_id=f"q{i}", body=body))
            queued_orch = lambda: orch.call_soon(lambda: len(d.queue))  # noqa: E731
            wait_for(lambda: queued_orch() == n, what="all queued")
            time.sleep(0.2)
            held = tracemalloc.get_traced_memory()[0] - before
            counted = orch.call_soon(lambda: d.queue_bytes)
        finally:
            tracemalloc.stop()
        for sock in socks:
            sock.close()
    print(f"queue: {n} requests, {counted} bytes counted, {held} bytes held ({held / counted:.2f}x)")
    assert counted >= n * len(body)
    assert held <= 1.1 * counted


def test_headers_named_in_connection_are_not_forwarded_either_way() -> None:
    from onnxfleet.orchestrator.forward import request_bytes, response_headers
    from onnxfleet.orchestrator.upstream import Response

    data = request_bytes(
        "POST",
        b"/run_model",
        [
            (b"host", b"h"),
            (b"connection", b"keep-alive, X-Secret ,x-other"),
            (b"x-secret", b"s"),
            (b"x-other", b"o"),
            (b"x-kept", b"k"),
        ],
        b"{}",
    )
    head = data.split(b"\r\n\r\n")[0].lower()
    assert b"x-secret" not in head
    assert b"x-other" not in head
    assert b"x-kept: k" in head
    answer = Response(
        200, [(b"Connection", b"X-Hop"), (b"X-Hop", b"1"), (b"X-Model-Version", b"3")], b"", True
    )
    assert response_headers(answer) == [(b"X-Model-Version", b"3")]


@pytest.mark.parametrize("size", [70 * 1024, 2 * 1024 * 1024])
def test_a_container_answer_head_over_the_limit_is_a_clear_502(size: int) -> None:
    async def huge_head(_r: asyncio.StreamReader, writer: asyncio.StreamWriter, _n: int) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nX-Big: " + b"b" * size + b"\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        return True

    async def main() -> None:
        async with Scripted(huge_head) as s:
            fleet = Fleet([s.spec("s")])
            ex = await fleet.outcome()
            assert ex.response is None
            assert ex.error is not None
            assert ex.error.status == 502
            assert "larger than 65536 bytes" in ex.error.message
            assert json.loads(ex.error.body())["code"] == "upstream_error"
            assert fleet.container("s").inflight == 0

    run(main)


# -- items 3 and 6: the job store ----------------------------------------------------------------------
def _post_job(url: str, token: str, body: bytes = b'{"inputs": [[1.0, 2.0]]}') -> tuple[int, Any, Any]:
    return call(url + "/jobs", "POST", body, {"Authorization": f"Bearer {token}"})


def test_one_token_cannot_fill_the_job_store_and_retry_after_says_when_room_frees(
    sim: SimFleet, tmp_path: Path
) -> None:
    rt = routes(tmp_path / "routes.json", [("a/0", sim.url(0), "a", 4)])
    tokens = tokens_file(tmp_path / "tokens", greedy="g" * 32, other="o" * 32)
    with in_process(rt, "--api-tokens-file", str(tokens), "--max-jobs", "10", "--job-ttl", "60") as orch:
        accepted = 0
        refused = None
        for _ in range(12):
            code, headers, body = _post_job(orch.url, "g" * 32)
            if code != 202:
                refused = (code, headers, body)
                break
            accepted += 1
        assert refused is not None, "one token filled the job store"
        code, headers, body = refused
        assert code == 429
        assert body["code"] == "too_many_jobs"
        assert "share" in body["error"]
        assert accepted == 5  # half the store while it is the only token holding jobs
        # its jobs end; room frees when the first is forgotten, about a TTL from now
        store = orch.orchestrator.jobs
        wait_for(lambda: orch.call_soon(lambda: all(j.finished for j in store.jobs.values())), what="done")
        code, headers, body = _post_job(orch.url, "g" * 32)
        assert code == 429
        assert 50 <= int(headers["Retry-After"]) <= 60
        # another token is still accepted
        for _ in range(3):
            code, _, body = _post_job(orch.url, "o" * 32)
            assert code == 202, body


def test_the_job_store_is_bounded_in_bytes(sim: SimFleet, tmp_path: Path) -> None:
    sim.mode(0, "hang")
    rt = routes(tmp_path / "routes.json", [("a/0", sim.url(0), "a", 4)])
    body = b'{"inputs": [[' + b"1.5, " * 24_000 + b"1.0]]}"  # 120 KB
    with in_process(rt, "--max-job-bytes", "300000", "--upstream-timeout", "1") as orch:
        assert call(orch.url + "/jobs", "POST", body)[0] == 202
        assert call(orch.url + "/jobs", "POST", body)[0] == 202
        code, headers, answer = call(orch.url + "/jobs", "POST", body)
        assert code == 429
        assert answer["code"] == "too_many_jobs"
        assert "--max-job-bytes" in answer["error"]
        assert int(headers["Retry-After"]) >= 1
        status = call(orch.url + "/status")[2]
        assert status["jobs"]["max_bytes"] == 300000
        assert 240_000 < status["jobs"]["bytes"] <= 300000


def one_mib_job() -> tuple[np.ndarray, bytes]:
    rows = np.random.default_rng(1).random((3300, 16), dtype=np.float32)
    return rows, json.dumps({"inputs": rows.tolist()}).encode()


def test_a_finished_job_is_stored_as_its_json_once(echo: SimFleet, tmp_path: Path) -> None:
    """A 1 MiB result is stored as its JSON bytes (about its size, not 4.6 times as objects),
    and each GET writes those bytes as they are."""
    rows, body = one_mib_job()
    with in_process(table(tmp_path / "routes.json", echo)) as orch:
        store = orch.orchestrator.jobs
        gc.collect()
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            code, _, job = call(orch.url + "/jobs", "POST", body)
            assert code == 202
            wait_for(lambda: orch.call_soon(lambda: store.jobs[job["id"]].finished is not None), what="done")
            gc.collect()
            held = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        print(f"a stored job of a {len(body)}-byte request holds {held / 2**20:.2f} MiB")
        assert held < 1.3 * len(body)
        url = orch.url + job["status_url"]
        view = call(url)[2]
        assert view["status"] == "done"
        assert view["result"]["status_code"] == 200
        assert np.allclose(np.array(view["result"]["body"]["outputs"]["y"], dtype=np.float32), rows)
        stored = orch.call_soon(lambda: orch.orchestrator.jobs.jobs[job["id"]])
        assert isinstance(stored.result, bytes)
        assert len(stored.result) < 1.2 * len(body)
        assert orch.call_soon(lambda: orch.orchestrator.jobs.bytes) < 1.2 * len(body) + 2048
        sock = socket.create_connection(("127.0.0.1", orch.port))
        sock.sendall(f"GET {job['status_url']} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
        _, _, raw = read_answer(sock)
        sock.close()
        assert stored.result in raw


def _poll(port: int, path: str, stop: threading.Event) -> None:
    """GET ``path`` again and again on one keep-alive connection (the bytes are not parsed)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    request = f"GET {path} HTTP/1.1\r\nHost: t\r\n\r\n".encode()
    with sock:
        while not stop.is_set():
            sock.sendall(request)
            read_answer(sock)


def test_four_connections_polling_a_1_mib_job_leave_healthz_fast(echo: SimFleet, tmp_path: Path) -> None:
    _, body = one_mib_job()
    with orchestrator(table(tmp_path / "routes.json", echo)) as service:
        base = f"http://127.0.0.1:{service.port}"
        code, _, job = call(base + "/jobs", "POST", body)
        assert code == 202
        wait_for(lambda: call(base + job["status_url"])[2]["status"] == "done", what="done")
        stop = threading.Event()
        pollers = [
            threading.Thread(target=_poll, args=(service.port, job["status_url"], stop)) for _ in range(4)
        ]
        for t in pollers:
            t.start()
        try:
            time.sleep(0.3)
            times = []
            for _ in range(40):
                t0 = time.perf_counter()
                assert call(base + "/healthz")[0] == 200
                times.append(time.perf_counter() - t0)
        finally:
            stop.set()
            for t in pollers:
                t.join(30)
    median = statistics.median(times)
    print(f"/healthz median {median * 1000:.1f} ms while 4 connections poll a {len(body)}-byte job")
    assert median < 0.05


def test_a_result_that_does_not_fit_in_the_job_store_is_a_short_507_result(
    echo: SimFleet, tmp_path: Path
) -> None:
    """The request fits (--max-job-bytes), its answer is larger: the job fails with a result
    that says so instead of holding more than the bound."""
    rows = np.full((600, 16), 0.5, dtype=np.float32)
    body = json.dumps({"inputs": rows.tolist()}, separators=(",", ":")).encode()  # the answer: larger
    with in_process(table(tmp_path / "routes.json", echo), "--max-job-bytes", str(len(body) + 2048)) as orch:
        code, _, job = call(orch.url + "/jobs", "POST", body)
        assert code == 202
        url = orch.url + job["status_url"]
        view = wait_for(lambda: (v := call(url)[2])["status"] != "queued" and v["status"] != "running" and v)
        assert view["status"] == "failed"
        assert view["result"]["status_code"] == 507
        assert view["result"]["body"]["code"] == "result_too_large"
        assert "--max-job-bytes" in view["result"]["body"]["error"]
        assert orch.call_soon(lambda: orch.orchestrator.jobs.bytes) < 2048
