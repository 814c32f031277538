"""Batching through the orchestrator (in process) in front of sim-backend ports serving the
echo model as a worker would: each client its rows in its format, refusals, deadlines,
clients that leave, FIFO, slots, positions, observation, reload."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.metrics_support import ORCHESTRATOR_PREFIXES, naming_problems
from tests.orchestrator.batch_support import FORMATS, Answer, client_request, post
from tests.orchestrator.inproc import InProcess, in_process
from tests.orchestrator.orch_support import SimFleet, call, raw_request, read_answer, wait_for
from tests.simbackend import ECHO_MODEL

SERVICE_MS = 100.0


@pytest.fixture(scope="module")
def echo_fleet() -> Iterator[SimFleet]:
    fleet = SimFleet(size=3, service_ms=SERVICE_MS, echo=True)
    with fleet.service:
        yield fleet


@pytest.fixture
def echo(echo_fleet: SimFleet) -> SimFleet:
    echo_fleet.reset()
    return echo_fleet


def table(path: Path, fleet: SimFleet, count: int = 1, slots: int = 1, **batching: Any) -> Path:
    path.write_text(
        json.dumps(
            {
                "containers": [
                    {"name": f"e/{i}", "url": fleet.url(i), "node": "e", "max_concurrency": slots}
                    for i in range(count)
                ],
                "health": {"interval_s": 0.2, "timeout_s": 0.5},
                "model": ECHO_MODEL,
                "batching": {"max_batch_size": 16, "max_delay_ms": 0, **batching},
            }
        )
    )
    return path


def rows_for(n: int, count: int = 1) -> np.ndarray:
    return np.array([[float(n), float(i), 0.5] for i in range(count)], dtype=np.float32)


def occupy(orch: InProcess, fleet: SimFleet, hold_ms: float = 1500) -> socket.socket:
    """One request that holds the only slot for ``hold_ms``: what comes next queues. (The
    port's service time goes back to what it was for the requests that follow.)"""
    service_ms = fleet.stats(0)["service_ms"]
    fleet.mode(0, "ok", hold_ms, fleet.stats(0).get("max_rows"))
    sock = raw_request(orch.port, body=json.dumps({"inputs": rows_for(-1).tolist()}).encode())
    wait_for(lambda: orch.call_soon(lambda: orch.orchestrator.roster.containers[0].inflight == 1))
    fleet.mode(0, "ok", service_ms, fleet.stats(0).get("max_rows"))
    return sock


def check_rows(answer: Answer, rows: np.ndarray) -> None:
    """The answer holds exactly ``rows``: as y, or as n (their width) when only n was asked."""
    outputs = answer.outputs()
    if "y" in outputs:
        assert outputs["y"] == rows.tolist()
    else:
        assert outputs["n"] == [rows.shape[1]] * len(rows)


def concurrently(work: list[Any], fn: Any) -> list[Any]:
    with ThreadPoolExecutor(len(work)) as pool:
        return list(pool.map(fn, work))


def queued(orch: InProcess, n: int) -> None:
    wait_for(lambda: orch.call_soon(lambda: len(orch.orchestrator.dispatcher.queue)) >= n, what=f"{n} queued")


def test_each_client_gets_its_own_rows_in_its_format_as_the_container_alone_answers(
    echo: SimFleet, tmp_path: Path
) -> None:
    """Requests queued behind a busy slot go as one call; every answer is byte for byte the
    container's answer to that request sent alone (headers too, but the orchestrator's own)."""
    requests = [
        client_request(FORMATS[i % len(FORMATS)], rows_for(i, 1 + i % 3), f"id-{i}" if i % 2 else None)
        for i in range(10)
    ]
    with in_process(table(tmp_path / "routes.json", echo, max_batch_size=19)) as orch:
        first = occupy(orch, echo)
        answers: list[Answer] = [None] * len(requests)  # type: ignore[list-item]

        def send(i: int) -> None:
            path, body, headers = requests[i]
            answers[i] = post(orch.url, path, body, headers)

        threads = [threading.Thread(target=send, args=(i,)) for i in range(len(requests))]
        for t in threads:
            t.start()
        queued(orch, len(requests))
        assert read_answer(first)[0] == 200
        for t in threads:
            t.join(10)
        stats = echo.stats(0)
        assert stats["received"] == 2, "the ten queued requests went as one call"
        assert stats["max_in_flight"] == 1
        for i, answer in enumerate(answers):
            assert answer.header("X-Container") == "e/0"
            assert float(answer.header("X-Queue-Wait-Ms") or 0) > 0
            check_rows(answer, rows_for(i, 1 + i % 3))
            alone = post(echo.url(0), *requests[i])
            assert answer.comparable() == alone.comparable()
        assert orch.call_soon(orch.orchestrator.batcher.status)["rows"] == 1 + sum(
            1 + i % 3 for i in range(10)
        )


def test_a_bad_request_among_good_ones_gets_its_own_error_and_fails_no_other(
    echo: SimFleet, tmp_path: Path
) -> None:
    good = [client_request("run_model", rows_for(i)) for i in range(4)]
    bad = [
        ("/run_model", b'{"inputs": [[1.0, NaN, 2.0]]}', {"Content-Type": "application/json"}),
        ("/run_model", b'{"inputs": [[1.0, 2.0, 3.0]]}', {"Content-Type": "text/plain"}),
        (
            "/v2/models/echo/infer",
            b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}]}',
            {},
        ),
        ("/v2/models/other/infer", good[0][1], {}),
    ]
    mixed = [good[0], bad[0], good[1], bad[1], good[2], bad[2], bad[3], good[3]]
    with in_process(table(tmp_path / "routes.json", echo)) as orch:
        first = occupy(orch, echo)
        results: list[Answer] = []
        with ThreadPoolExecutor(len(mixed)) as pool:
            futures = []
            for request in mixed:  # in this order into the queue
                futures.append(pool.submit(post, orch.url, *request))
                queued(orch, len(futures))
            read_answer(first)
            results = [f.result() for f in futures]
        assert [r.status for r in results] == [200, 422, 200, 415, 200, 422, 200, 404][:0] or True
        for request, answer in zip(mixed, results, strict=True):
            alone = post(echo.url(0), *request)
            assert answer.comparable() == alone.comparable()
        assert [r.status for r in results] == [200, 422, 200, 415, 200, 422, 404, 200]


def test_a_merged_call_the_container_refuses_is_sent_again_one_by_one(echo: SimFleet, tmp_path: Path) -> None:
    echo.mode(0, "ok", SERVICE_MS, max_rows=1)  # as a model that takes one row at a time
    with in_process(table(tmp_path / "routes.json", echo)) as orch:
        first = occupy(orch, echo)
        requests = [client_request("binary_out", rows_for(i), f"r{i}") for i in range(4)]
        with ThreadPoolExecutor(4) as pool:
            futures = []
            for request in requests:
                futures.append(pool.submit(post, orch.url, *request))
                queued(orch, len(futures))
            read_answer(first)
            results = [f.result() for f in futures]
        assert [r.status for r in results] == [200] * 4
        assert [r.outputs()["y"] for r in results] == [rows_for(i).tolist() for i in range(4)]
        stats = echo.stats(0)
        assert stats["received"] == 1 + 1 + 4  # the first, the merged call refused, then each alone
        assert stats["order"][-4:] == ["r0", "r1", "r2", "r3"]  # again in their order
        status = orch.call_soon(orch.orchestrator.observe.status)
        assert status["batching"]["resent_singly"] == 4


def test_a_merged_call_the_container_fails_is_sent_again_one_by_one(echo: SimFleet, tmp_path: Path) -> None:
    """A 5xx to a merged call may be the merge's doing (memory, a poison row): each request
    gets what the container answers to it alone."""
    with in_process(table(tmp_path / "routes.json", echo)) as orch:
        first = occupy(orch, echo)
        echo.mode(0, "fail", 1500)  # the occupying request already runs in "ok"
        requests = [client_request("run_model", rows_for(i), f"f{i}") for i in range(3)]
        with ThreadPoolExecutor(3) as pool:
            futures = []
            for request in requests:
                futures.append(pool.submit(post, orch.url, *request))
                queued(orch, len(futures))
            echo.mode(0, "fail", 10)
            read_answer(first)
            results = [f.result() for f in futures]
        assert [r.status for r in results] == [500] * 3
        # the merged call (its ids listed), then each request alone, in order
        order = echo.stats(0)["order"]  # the occupying request's id is one the orchestrator made
        assert (len(order[0]), order[1:]) == (32, ["f0", "f1", "f2", "f0", "f1", "f2"])
        for request, answer in zip(requests, results, strict=True):
            assert answer.comparable() == post(echo.url(0), *request).comparable()
        status = orch.call_soon(orch.orchestrator.observe.status)
        assert status["batching"]["resent_singly"] == 3


def test_a_member_whose_deadline_passes_during_its_batch_gets_504_the_others_their_rows(
    echo: SimFleet, tmp_path: Path
) -> None:
    # The batch's call lasts 3 s so that its slot is still taken when the 504 is read, however
    # late a loaded machine reads it (CI once read it after a 600 ms call had ended).
    echo.mode(0, "ok", 3000)
    with in_process(table(tmp_path / "routes.json", echo)) as orch:
        first = occupy(orch, echo, hold_ms=300)
        path, body, headers = client_request("run_model", rows_for(1))
        with ThreadPoolExecutor(3) as pool:
            short = pool.submit(post, orch.url, path, body, {**headers, "X-Request-Timeout-Ms": "500"})
            queued(orch, 1)
            others = [pool.submit(post, orch.url, *client_request("run_model", rows_for(i))) for i in (2, 3)]
            queued(orch, 3)
            read_answer(first)  # at ~300 ms: the three go as one call, answered at ~3.3 s
            late = short.result()
            assert late.status == 504
            assert late.json()["code"] == "upstream_timeout"
            assert late.header("X-Container") == "e/0"
            busy = orch.call_soon(lambda: orch.orchestrator.roster.containers[0].inflight)
            assert busy == 1, "the batch still runs: its slot stays taken"
            assert [f.result().outputs()["y"] for f in others] == [rows_for(2).tolist(), rows_for(3).tolist()]
        assert echo.stats(0)["max_in_flight"] == 1


def test_a_member_whose_deadline_passes_in_the_queue_is_never_sent(echo: SimFleet, tmp_path: Path) -> None:
    with in_process(table(tmp_path / "routes.json", echo)) as orch:
        first = occupy(orch, echo)
        path, body, headers = client_request("run_model", rows_for(1), "late")
        with ThreadPoolExecutor(2) as pool:
            late = pool.submit(post, orch.url, path, body, {**headers, "X-Request-Timeout-Ms": "20"})
            other = pool.submit(post, orch.url, *client_request("run_model", rows_for(2), "other"))
            assert late.result().status == 503
            assert late.result().json()["code"] == "queue_timeout"
            read_answer(first)
            assert other.result().status == 200
        assert "late" not in echo.stats(0)["order"]


def test_clients_that_leave_are_dropped_from_the_queue_and_from_their_batch(
    echo: SimFleet, tmp_path: Path
) -> None:
    with in_process(table(tmp_path / "routes.json", echo)) as orch:
        first = occupy(orch, echo)
        gone = raw_request(orch.port, request_id="gone", body=json.dumps({"inputs": [[1.0]]}).encode())
        stays = raw_request(orch.port, request_id="stays", body=json.dumps({"inputs": [[2.0]]}).encode())
        queued(orch, 2)
        gone.close()  # while queued: it leaves the queue, its container never sees it
        wait_for(lambda: orch.call_soon(lambda: len(orch.orchestrator.dispatcher.queue)) == 1)
        read_answer(first)
        assert read_answer(stays)[0] == 200
        assert "gone" not in echo.stats(0)["order"]
        # one that leaves while its batch runs: the others get their rows, its rows are dropped
        first = occupy(orch, echo)
        running = [
            raw_request(orch.port, request_id=f"m{i}", body=json.dumps({"inputs": [[float(i)]]}).encode())
            for i in range(3)
        ]
        queued(orch, 3)
        read_answer(first)
        wait_for(lambda: orch.call_soon(lambda: len(orch.orchestrator.dispatcher.queue)) == 0)
        running[1].close()
        for i in (0, 2):
            status, _, answer = read_answer(running[i])
            assert status == 200
            assert json.loads(answer)["outputs"]["y"] == [[float(i)]]
        assert echo.stats(0)["order"][-3:] == ["m0", "m1", "m2"]
        assert not orch.records.errors()


def test_fifo_across_batches_and_no_container_over_its_slots(echo: SimFleet, tmp_path: Path) -> None:
    """One container: requests sent one after another while it is busy run in the order
    they came, batch after batch (at most 3 rows each)."""
    echo.mode(0, "ok", 30)
    with in_process(table(tmp_path / "routes.json", echo, max_batch_size=3)) as orch:
        socks = []
        for i in range(20):
            socks.append(raw_request(orch.port, request_id=f"q{i}", body=b'{"inputs": [[%d.0]]}' % i))
            time.sleep(0.004)
        for i, sock in enumerate(socks):
            status, _, answer = read_answer(sock)
            assert status == 200
            assert json.loads(answer)["outputs"]["y"] == [[float(i)]]
        stats = echo.stats(0)
        assert stats["order"] == [f"q{i}" for i in range(20)]
        assert stats["max_in_flight"] == 1
        assert stats["received"] < 20
    with in_process(table(tmp_path / "routes.json", echo, count=3, slots=2, max_batch_size=4)) as orch:
        echo.mode(0, "ok", 20)
        echo.mode(1, "ok", 20)
        echo.mode(2, "ok", 20)
        results = concurrently(
            list(range(64)),
            lambda i: post(orch.url, *client_request(FORMATS[i % len(FORMATS)], rows_for(i, 1 + i % 2))),
        )
        assert [r.status for r in results] == [200] * 64
        for i, r in enumerate(results):
            check_rows(r, rows_for(i, 1 + i % 2))
        assert max(echo.stats(i)["max_in_flight"] for i in range(3)) <= 2


def test_job_positions_count_requests_and_jobs_get_their_rows(echo: SimFleet, tmp_path: Path) -> None:
    with in_process(table(tmp_path / "routes.json", echo)) as orch:
        first = occupy(orch, echo)
        jobs = [call(orch.url + "/jobs", "POST", {"inputs": rows_for(i).tolist()}) for i in range(5)]
        assert [j[0] for j in jobs] == [202] * 5
        assert [j[2]["position"] for j in jobs] == [0, 1, 2, 3, 4]
        read_answer(first)

        def result(job: Any) -> Any:
            _, _, view = call(orch.url + job[2]["status_url"])
            return view if view["status"] == "done" else None

        views = [wait_for(lambda j=j: result(j), what="job done") for j in jobs]
        assert [v["result"]["body"]["outputs"]["y"] for v in views] == [
            rows_for(i).tolist() for i in range(5)
        ]
        assert {v["result"]["status_code"] for v in views} == {200}
        assert echo.stats(0)["received"] == 2


def test_status_metrics_and_reload_switch_batching_on_and_off(echo: SimFleet, tmp_path: Path) -> None:
    routes_file = table(tmp_path / "routes.json", echo)
    with in_process(routes_file) as orch:
        first = occupy(orch, echo)
        results = []
        with ThreadPoolExecutor(4) as pool:
            futures = [pool.submit(post, orch.url, *client_request("json", rows_for(i))) for i in range(4)]
            queued(orch, 4)
            read_answer(first)
            results = [f.result() for f in futures]
        assert [r.status for r in results] == [200] * 4
        _, _, view = call(orch.url + "/status")
        assert view["batching"]["enabled"]
        assert view["batching"]["mean_batch"] > 1
        assert view["batching"]["calls"] == 2
        _, _, metrics = call(orch.url + "/metrics")
        assert 'onnxfleet_orchestrator_batch_size_bucket{le="1.0"} 1.0' in metrics
        assert 'onnxfleet_orchestrator_batch_size_bucket{le="4.0"} 2.0' in metrics
        assert "onnxfleet_orchestrator_batch_size_count 2.0" in metrics
        assert "onnxfleet_orchestrator_batch_rows_total 5.0" in metrics
        assert naming_problems(metrics, ORCHESTRATOR_PREFIXES) == []
        plain = json.loads(routes_file.read_text())
        del plain["batching"]
        routes_file.write_text(json.dumps(plain))
        assert call(orch.url + "/admin/reload", "POST", {})[0] == 200
        assert call(orch.url + "/status")[2]["batching"] == {
            "enabled": False,
            "reason": "the routing table has no batching object",
        }
        first = occupy(orch, echo)
        with ThreadPoolExecutor(3) as pool:
            futures = [pool.submit(post, orch.url, *client_request("json", rows_for(i))) for i in range(3)]
            queued(orch, 3)
            read_answer(first)
            assert [f.result().status for f in futures] == [200] * 3
        assert echo.stats(0)["received"] == 2 + 1 + 3  # off: one call per request
