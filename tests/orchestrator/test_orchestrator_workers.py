"""The orchestrator in front of real `onnxfleet worker` processes (gunicorn + onnxruntime)."""

from __future__ import annotations

import signal
import socket
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.orchestrator.orch_support import call, container_state, orchestrator, routes, status, wait_for
from tests.support import ROOT, Service, free_port

DIGITS = ROOT / "app" / "models" / "digits.onnx"
SAMPLE = {"inputs": [[float(i % 17) for i in range(64)], [0.0] * 64]}

pytestmark = pytest.mark.slow


def _refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    except OSError:
        # reset or timed out: the orphaned gunicorn worker still holds the socket as it dies
        return False
    return False


def start_worker(name: str, port: int | None = None) -> Service:
    port = port or free_port()
    args = ["worker", "--model", str(DIGITS), "--bind", f"127.0.0.1:{port}", "--container-name", name]
    # one slot and no waiting room: a second concurrent request would get 429 from the worker
    return Service([*args, "--max-concurrency", "1", "--max-waiting", "0", "--intra-op-threads", "1"], port)


@pytest.fixture(scope="module")
def workers() -> Iterator[list[Service]]:
    started = [start_worker("w1/0").start(), start_worker("w2/0").start()]
    try:
        yield [w.wait_ready() for w in started]
    finally:
        for w in started:
            w.stop()


def test_real_workers_get_one_request_at_a_time(workers: list[Service], tmp_path: Path) -> None:
    table = routes(tmp_path / "routes.json", [("w1/0", workers[0].url, "w1"), ("w2/0", workers[1].url, "w2")])
    with orchestrator(table) as orch:
        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(lambda _: call(orch.url + "/run_model", "POST", SAMPLE), range(40)))
        assert [r[0] for r in results] == [200] * 40, [r[2] for r in results if r[0] != 200][:3]
        assert {r[1]["X-Container"] for r in results} == {"w1/0", "w2/0"}
        body = results[0][2]
        assert body["version"] == results[0][1]["X-Model-Version"] == "1"
        assert len(body["outputs"]["label"]) == 2
        assert max(float(r[1]["X-Queue-Wait-Ms"]) for r in results) > 0
        assert {c["model_version"] for c in status(orch)["containers"]} == {"1"}
        v2 = {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [1.0] * 64}]}
        code, _, answer = call(orch.url + "/v2/models/digits/infer", "POST", v2)
        assert code == 200
        assert answer["outputs"]
        # the worker's own validation answer comes back unchanged
        code, _, answer = call(orch.url + "/run_model", "POST", {"inputs": [[1.0, 2.0]]})
        assert code in (400, 422)
        assert "code" in answer


def test_a_killed_worker_is_ejected_and_a_restarted_one_rejoins(
    workers: list[Service], tmp_path: Path
) -> None:
    victim = start_worker("w3/0").start().wait_ready()
    try:
        table = routes(tmp_path / "routes.json", [("w1/0", workers[0].url, "w1"), ("w3/0", victim.url, "w3")])
        with orchestrator(table) as orch:
            wait_for(lambda: all(c["state"] == "ready" for c in status(orch)["containers"]), what="ready")
            assert call(orch.url + "/run_model", "POST", SAMPLE)[0] == 200
            victim.signal(signal.SIGKILL)
            victim.proc.wait(10)
            # gone for good (its gunicorn worker too): a request sent while a container dies
            # may be answered 502, as behind HAProxy: it may have been what killed it
            wait_for(lambda: _refused(victim.port), what="w3/0's port closed")
            with ThreadPoolExecutor(4) as pool:
                results = list(pool.map(lambda _: call(orch.url + "/run_model", "POST", SAMPLE), range(16)))
            assert [r[0] for r in results] == [200] * 16, [r[2] for r in results if r[0] != 200]
            wait_for(lambda: container_state(orch, "w3/0")["state"] == "down", what="w3/0 down")
            revived = start_worker("w3/0", victim.port).start().wait_ready()
            try:
                wait_for(lambda: container_state(orch, "w3/0")["state"] == "ready", what="w3/0 back")
                with ThreadPoolExecutor(4) as pool:
                    results = list(
                        pool.map(lambda _: call(orch.url + "/run_model", "POST", SAMPLE), range(16))
                    )
                assert [r[0] for r in results] == [200] * 16
                assert "w3/0" in {r[1]["X-Container"] for r in results}
            finally:
                revived.stop()
    finally:
        victim.stop()
