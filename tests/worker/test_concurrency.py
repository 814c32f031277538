"""A busy worker never looks dead, and --max-concurrency / --max-waiting hold.

The slow model runs chained [1024, 1024] MatMuls on one thread; SLOW_ROWS rows keep one
inference busy for about a second on this kind of machine."""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import requests

from tests.support import Service
from tests.worker.worker_support import metric, worker

SLOW_ROWS = 512


def infer(service: Service, rows: int) -> requests.Response:
    return requests.post(service.url + "/run_model", json={"inputs": [[1.0] * 8] * rows}, timeout=120)


def gauges(service: Service) -> tuple[float, float]:
    text = requests.get(service.url + "/metrics", timeout=5).text
    return (
        metric(text, "onnxfleet_worker_inferences_running"),
        metric(text, "onnxfleet_worker_inference_requests_in_flight"),
    )


def wait_until(check: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


def test_health_and_metrics_answer_fast_during_an_inference(slow_worker: Service) -> None:
    session = requests.Session()
    paths = ["/v2/health/ready", "/healthz", "/readyz", "/v2/health/live", "/metrics"]
    timings: list[tuple[str, int, float]] = []
    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(infer, slow_worker, SLOW_ROWS)
        wait_until(lambda: gauges(slow_worker)[0] == 1)
        while not future.done() and len(timings) < 50:
            for path in paths:
                started = time.perf_counter()
                response = session.get(slow_worker.url + path, timeout=5)
                elapsed = time.perf_counter() - started
                if not future.done():  # the inference was running during the whole probe
                    timings.append((path, response.status_code, elapsed))
            time.sleep(0.02)
        answer = future.result()
    assert answer.status_code == 200
    assert len(timings) >= 5, f"the inference ended too soon to probe it: {timings}"
    assert {path for path, _, _ in timings} == set(paths)
    assert all(status == 200 for _, status, _ in timings), timings
    slowest = max(timings, key=lambda t: t[2])
    print(f"{len(timings)} probes during the inference, slowest {slowest}")
    assert slowest[2] < 0.1, f"{slowest[0]} took {slowest[2] * 1000:.0f} ms while an inference ran"


def test_waiting_line_is_bounded(slow_worker: Service) -> None:
    """--max-concurrency 1 --max-waiting 1: one runs, one waits, the third gets 429."""
    with ThreadPoolExecutor(2) as pool:
        futures: list[Future[requests.Response]] = [pool.submit(infer, slow_worker, SLOW_ROWS // 2)]
        wait_until(lambda: gauges(slow_worker) == (1, 1))
        futures.append(pool.submit(infer, slow_worker, 1))
        wait_until(lambda: gauges(slow_worker) == (1, 2))
        refused = infer(slow_worker, 1)
        assert refused.status_code == 429
        assert refused.headers["Retry-After"] == "1"
        assert refused.json()["code"] == "busy"
        assert "--max-waiting" in refused.json()["error"]
        assert [f.result().status_code for f in futures] == [200, 200]
    assert infer(slow_worker, 1).status_code == 200


def test_max_concurrency_is_counted(models_dir: Path) -> None:
    """Five concurrent requests on --max-concurrency 2: sampled every few ms, never more
    than two inferences run at once, two do run together, and the others wait."""
    args = ["--max-concurrency", "2", "--max-waiting", "8", "--intra-op-threads", "1"]
    with worker(models_dir / "slow.onnx", *args, container="slow-2") as service:
        samples: list[tuple[float, float]] = []
        with ThreadPoolExecutor(5) as pool:
            futures = [pool.submit(infer, service, 128) for _ in range(5)]
            while not all(f.done() for f in futures):
                samples.append(gauges(service))
                time.sleep(0.005)
            statuses = [f.result().status_code for f in futures]
        text = requests.get(service.url + "/metrics", timeout=5).text
    assert statuses == [200] * 5
    running = [r for r, _ in samples]
    in_flight = [f for _, f in samples]
    assert max(running) == 2, samples
    assert max(in_flight) >= 3, samples
    assert all(r <= min(f, 2) for r, f in samples), samples
    assert metric(text, "onnxfleet_worker_inference_duration_seconds_count") == 5
    assert metric(text, "onnxfleet_worker_slot_wait_seconds_sum") > 0


def test_keep_alive_connections_beyond_the_threads_are_all_served(digits_worker: Service) -> None:
    """A thread that answered waits a moment for the next request on its connection
    (onnxfleet.worker.server.Worker): 60 keep-alive connections, three times the worker's
    threads, each asking in turn, still all get their answers; pipelined requests too."""
    import socket

    from tests.worker.test_hostile import read_answer

    connections = [socket.create_connection(("127.0.0.1", digits_worker.port), timeout=10) for _ in range(60)]
    try:
        for _ in range(3):
            for sock in connections:
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: w\r\n\r\n")
            for sock in connections:
                status, _, body = read_answer(sock)
                assert (status, body["live"]) == (200, True)
        pipelined = connections[0]
        pipelined.sendall(b"GET /healthz HTTP/1.1\r\nHost: w\r\n\r\n" * 3)
        assert [read_answer(pipelined)[0] for _ in range(3)] == [200, 200, 200]
    finally:
        for sock in connections:
            sock.close()
