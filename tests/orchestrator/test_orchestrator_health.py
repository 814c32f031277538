"""Failures: retries, passive and active ejection, recovery, timeouts, a dead fleet."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tests.orchestrator.inproc import in_process
from tests.orchestrator.orch_support import (
    SimFleet,
    call,
    container_state,
    routes,
    status,
    wait_for,
)


def test_request_that_never_reached_a_container_is_retried_on_another(sim: SimFleet, tmp_path: Path) -> None:
    # slow active checks: the failure is found by the requests themselves
    table = routes(
        tmp_path / "routes.json",
        [("a/0", sim.url(0), "a"), ("b/0", sim.url(1), "b")],
        health={"interval_s": 30},
    )
    with in_process(table) as orch:
        wait_for(lambda: status(orch)["ready"], what="ready")
        for i in range(4):  # open keep-alive connections to both
            assert call(orch.url + "/run_model", "POST", {"i": i})[0] == 200
        sim.mode(0, "refuse")
        with ThreadPoolExecutor(4) as pool:
            results = list(
                pool.map(
                    lambda i: call(orch.url + "/run_model", "POST", {}, {"X-Request-Id": f"r{i}"}), range(12)
                )
            )
        assert [r[0] for r in results] == [200] * 12
        assert {r[1]["X-Container"] for r in results} == {"b/0"}
        st = status(orch)
        assert st["totals"]["retries"] >= 1
        a = container_state(orch, "a/0")
        assert a is not None
        assert a["state"] == "down"
        assert a["errors"] >= 1
        assert sorted(sim.stats(1)["order"][2:]) == sorted(f"r{i}" for i in range(12))


def test_without_retries_an_unreachable_container_is_a_502(sim: SimFleet, tmp_path: Path) -> None:
    table = routes(tmp_path / "routes.json", [("a/0", sim.url(0), "a")], health={"interval_s": 30})
    with in_process(table, "--retries", "0") as orch:
        wait_for(lambda: status(orch)["ready"], what="ready")
        sim.mode(0, "refuse")
        code, _, body = call(orch.url + "/run_model", "POST", {})
        assert code == 502
        assert body["code"] == "upstream_unreachable"
        assert "a/0" in body["error"]


def test_active_checks_eject_and_readmit(sim: SimFleet, tmp_path: Path) -> None:
    table = routes(tmp_path / "routes.json", [("a/0", sim.url(0), "a"), ("b/0", sim.url(1), "b")])
    with in_process(table) as orch:
        wait_for(lambda: all(c["state"] == "ready" for c in status(orch)["containers"]), what="both ready")
        sim.mode(0, "unready")
        wait_for(lambda: container_state(orch, "a/0")["state"] == "down", what="a/0 ejected")
        assert "/readyz answered 503" in container_state(orch, "a/0")["last_error"]
        served_before = sim.stats(0)["served"]
        for _ in range(6):
            code, headers, _ = call(orch.url + "/run_model", "POST", {})
            assert code == 200
            assert headers["X-Container"] == "b/0"
        assert sim.stats(0)["served"] == served_before
        sim.mode(0, "ok")
        wait_for(lambda: container_state(orch, "a/0")["state"] == "ready", what="a/0 back")
        with ThreadPoolExecutor(4) as pool:
            results = list(pool.map(lambda _: call(orch.url + "/run_model", "POST", {}), range(8)))
        assert {r[1]["X-Container"] for r in results} == {"a/0", "b/0"}


def test_busy_is_not_dead(sim: SimFleet, tmp_path: Path) -> None:
    sim.mode(0, "ok", service_ms=1500)
    table = routes(tmp_path / "routes.json", [("a/0", sim.url(0), "a")])
    with in_process(table) as orch, ThreadPoolExecutor(3) as pool:
        futures = [pool.submit(call, orch.url + "/run_model", "POST", {}) for _ in range(2)]
        wait_for(lambda: status(orch)["queue"]["depth"] == 1, what="one queued")
        time.sleep(0.6)  # several health checks while the only slot is busy
        started = time.monotonic()
        code, _, _body = call(orch.url + "/readyz")
        assert code == 200
        assert time.monotonic() - started < 0.5  # behind the busy slot: >= 0.9 s
        assert container_state(orch, "a/0")["state"] == "busy"
        assert [f.result()[0] for f in futures] == [200, 200]


def test_upstream_timeout_is_a_504_and_frees_the_slot(sim: SimFleet, tmp_path: Path) -> None:
    sim.mode(0, "hang")
    table = routes(tmp_path / "routes.json", [("a/0", sim.url(0), "a")])
    with in_process(table, "--upstream-timeout", "0.4") as orch:
        started = time.monotonic()
        code, _, body = call(orch.url + "/run_model", "POST", {})
        assert code == 504
        assert body["code"] == "upstream_timeout"
        assert 0.35 < time.monotonic() - started < 2
        assert status(orch)["totals"]["in_flight"] == 0
        sim.mode(0, "ok")
        assert call(orch.url + "/run_model", "POST", {})[0] == 200


def test_worker_errors_are_passed_through_and_counted(sim: SimFleet, tmp_path: Path) -> None:
    sim.mode(0, "fail")
    table = routes(tmp_path / "routes.json", [("a/0", sim.url(0), "a")])
    with in_process(table) as orch:
        code, headers, body = call(orch.url + "/run_model", "POST", {})
        assert code == 500
        assert headers["X-Container"] == "a/0"
        assert body["container"] == "sim-%d" % sim.ports[0]
        assert container_state(orch, "a/0")["errors"] == 1


def test_a_dead_fleet_answers_503_at_once(sim: SimFleet, tmp_path: Path) -> None:
    table = routes(tmp_path / "routes.json", [("a/0", sim.url(0), "a"), ("b/0", sim.url(1), "b")])
    with in_process(table) as orch:
        sim.mode(0, "refuse")
        sim.mode(1, "refuse")
        wait_for(lambda: not status(orch)["ready"], what="fleet down")
        started = time.monotonic()
        code, headers, body = call(orch.url + "/run_model", "POST", {})
        assert code == 503
        assert body["code"] == "no_ready_container"
        assert "Retry-After" in headers
        assert time.monotonic() - started < 1
        assert call(orch.url + "/readyz")[0] == 503
        assert call(orch.url + "/healthz")[0] == 200


def test_requests_on_a_vanished_host_move_on_when_its_health_checks_fail(
    sim: SimFleet, tmp_path: Path
) -> None:
    """A stopped host sends no reset: its requests wait for a first byte that never comes.
    Once the checks mark it down they go to another container, well before the timeout."""
    sim.mode(0, "ok", service_ms=300)
    sim.mode(1, "ok", service_ms=300)
    table = routes(tmp_path / "routes.json", [("a/0", sim.url(0), "a"), ("b/0", sim.url(1), "b")])
    with in_process(table, "--upstream-timeout", "30") as orch, ThreadPoolExecutor(2) as pool:
        wait_for(lambda: all(c["state"] == "ready" for c in status(orch)["containers"]), what="both ready")
        sim.mode(0, "vanish")
        started = time.monotonic()
        # one of the two lands on the vanished a/0 (one slot each, both free)
        results = list(pool.map(lambda i: call(orch.url + "/run_model", "POST", {"i": i}), range(2)))
        took = time.monotonic() - started
        assert [r[0] for r in results] == [200, 200]
        assert {r[1]["X-Container"] for r in results} == {"b/0"}
        assert took < 5, f"{took:.1f}s: the request waited for the upstream timeout"
        assert container_state(orch, "a/0")["state"] == "down"
        assert status(orch)["totals"]["retries"] >= 1
