"""Admin API: drain and ready, reload (route and SIGHUP) under load, tokens."""

from __future__ import annotations

import json
import select
import signal
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.orchestrator.orch_support import (
    SimFleet,
    call,
    container_state,
    orchestrator,
    raw_request,
    routes,
    status,
    wait_for,
)


def test_drain_with_wait_then_ready(sim: SimFleet, tmp_path: Path) -> None:
    sim.mode(0, "ok", service_ms=1500)
    table = routes(tmp_path / "routes.json", [("a/0", sim.url(0), "n1"), ("b/0", sim.url(1), "n2")])
    with orchestrator(table) as orch:
        wait_for(lambda: all(c["state"] == "ready" for c in status(orch)["containers"]), what="ready")
        sim.mode(1, "refuse")  # the first request must land on a/0
        wait_for(lambda: container_state(orch, "b/0")["state"] == "down", what="b/0 down")
        held = raw_request(orch.port, request_id="held")
        wait_for(lambda: container_state(orch, "a/0")["in_flight"] == 1, what="a/0 busy")
        sim.mode(1, "ok")
        wait_for(lambda: container_state(orch, "b/0")["state"] == "ready", what="b/0 back")

        assert container_state(orch, "a/0")["in_flight"] == 1
        code, _, body = call(orch.url + "/admin/drain", "POST", {"node": "n1", "wait": True, "timeout_s": 5})
        assert code == 200, body
        assert body["containers"] == ["a/0"]
        assert body["in_flight"] == 0
        # it answered only once the request in flight there was done
        assert select.select([held], [], [], 0.2)[0] == [held]
        assert held.recv(65536).startswith(b"HTTP/1.1 200")
        held.close()
        assert container_state(orch, "a/0")["state"] == "draining"
        served = sim.stats(0)["served"]
        with ThreadPoolExecutor(3) as pool:
            results = list(pool.map(lambda _: call(orch.url + "/run_model", "POST", {}), range(6)))
        assert {r[1]["X-Container"] for r in results} == {"b/0"}
        assert sim.stats(0)["served"] == served

        code, _, body = call(orch.url + "/admin/ready", "POST", {"container": "a/0"})
        assert code == 200
        assert body["containers"] == ["a/0"]
        assert container_state(orch, "a/0")["state"] == "ready"
        sim.mode(0, "ok", service_ms=50)
        with ThreadPoolExecutor(4) as pool:
            results = list(pool.map(lambda _: call(orch.url + "/run_model", "POST", {}), range(8)))
        assert "a/0" in {r[1]["X-Container"] for r in results}


def test_drain_wait_timeout_and_bad_requests(sim: SimFleet, tmp_path: Path) -> None:
    sim.mode(0, "ok", service_ms=1500)
    table = routes(tmp_path / "routes.json", [("a/0", sim.url(0), "n1")])
    with orchestrator(table) as orch:
        held = raw_request(orch.port)
        wait_for(lambda: status(orch)["totals"]["in_flight"] == 1, what="busy")
        code, _, body = call(
            orch.url + "/admin/drain", "POST", {"container": "a/0", "wait": True, "timeout_s": 0.2}
        )
        assert code == 504
        assert body["code"] == "drain_timeout"
        assert body["in_flight"] == 1
        held.close()
        code, _, body = call(orch.url + "/admin/drain", "POST", {"node": "nope"})
        assert code == 404
        assert "nope" in body["error"]
        for bad in ({}, {"node": "n1", "container": "a/0"}, {"node": 3}, {"node": "n1", "wait": "yes"}):
            code, _, body = call(orch.url + "/admin/drain", "POST", bad)
            assert (code, body["code"]) == (400, "bad_request"), bad
        code, _, body = call(orch.url + "/admin/drain", "POST", b"not json")
        assert code == 400
        # everything drained: new requests are refused at once, not queued forever
        call(orch.url + "/admin/drain", "POST", {"node": "n1"})
        code, _, body = call(orch.url + "/run_model", "POST", {})
        assert code == 503
        assert body["code"] == "no_ready_container"


def _load(url: str, n: int, results: list) -> None:
    with ThreadPoolExecutor(6) as pool:
        results.extend(
            pool.map(
                lambda i: call(url + "/run_model", "POST", {"i": i}, {"X-Request-Id": f"L{i}"}), range(n)
            )
        )


@pytest.mark.parametrize("how", ["admin", "sighup"])
def test_reload_under_load_loses_nothing(sim: SimFleet, tmp_path: Path, how: str) -> None:
    sim.mode(0, "ok", service_ms=300)  # a/0 still busy when it is removed
    path = routes(tmp_path / "routes.json", [("a/0", sim.url(0), "a"), ("b/0", sim.url(1), "b")])
    with orchestrator(path) as orch:
        wait_for(lambda: status(orch)["ready"], what="ready")
        uptime = status(orch)["uptime_s"]
        results: list = []
        load = threading.Thread(target=_load, args=(orch.url, 60, results))
        load.start()
        wait_for(lambda: status(orch)["queue"]["depth"] > 0, what="a queue")
        routes(path, [("b/0", sim.url(1), "b"), ("c/0", sim.url(2), "c")])
        if how == "admin":
            code, _, body = call(orch.url + "/admin/reload", "POST")
            assert code == 200, body
            assert body["added"] == ["c/0"]
            assert body["removed"] == ["a/0"]
        else:
            orch.signal(signal.SIGHUP)
        wait_for(lambda: container_state(orch, "c/0") is not None, what="c/0 joined")
        load.join(60)
        assert len(results) == 60
        assert [r[0] for r in results] == [200] * 60
        assert "c/0" in {r[1]["X-Container"] for r in results}
        wait_for(lambda: container_state(orch, "a/0") is None, what="a/0 gone after draining")
        assert sim.stats(0)["max_in_flight"] == 1
        if how == "admin":  # the same process kept its state (SIGHUP: a new gunicorn worker)
            assert status(orch)["uptime_s"] >= uptime
            assert status(orch)["totals"]["answered"] >= 60


def test_bad_reload_keeps_the_current_table(sim: SimFleet, tmp_path: Path) -> None:
    path = routes(tmp_path / "routes.json", [("a/0", sim.url(0), "a")])
    with orchestrator(path) as orch:
        path.write_text(json.dumps({"containers": [{"name": "x", "url": "ftp://nowhere", "node": "x"}]}))
        code, _, body = call(orch.url + "/admin/reload", "POST")
        assert code == 400
        assert body["code"] == "bad_routing_table"
        assert str(path) in body["error"]
        assert "containers[0].url" in body["error"]
        orch.signal(signal.SIGHUP)
        wait_for(lambda: "reload refused" in orch.log(), what="the SIGHUP reload refused")
        assert [c["name"] for c in status(orch)["containers"]] == ["a/0"]
        assert call(orch.url + "/run_model", "POST", {})[0] == 200
