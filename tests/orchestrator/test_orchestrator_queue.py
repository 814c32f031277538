"""Slots and the FIFO queue, against a real orchestrator process and sim backends."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tests.orchestrator.inproc import InProcess, in_process
from tests.orchestrator.orch_support import (
    SimFleet,
    call,
    raw_request,
    routes,
    status,
    wait_for,
)


def test_no_container_ever_holds_more_than_its_slots(sim: SimFleet, tmp_path: Path) -> None:
    table = routes(
        tmp_path / "routes.json",
        [("a/0", sim.url(0), "a", 1), ("a/1", sim.url(1), "a", 1), ("b/0", sim.url(2), "b", 2)],
    )
    with in_process(table) as orch:
        with ThreadPoolExecutor(24) as pool:
            results = list(
                pool.map(
                    lambda i: call(orch.url + "/run_model", "POST", {"i": i}, {"X-Request-Id": str(i)}),
                    range(72),
                )
            )
        assert [r[0] for r in results] == [200] * 72
        stats = [sim.stats(i) for i in range(3)]
        assert [s["max_in_flight"] for s in stats][:2] == [1, 1]
        assert stats[2]["max_in_flight"] <= 2
        # every container was used, and every answer says which one served it
        assert all(s["served"] > 0 for s in stats)
        assert sum(s["served"] for s in stats) == 72
        assert {r[1]["X-Container"] for r in results} == {"a/0", "a/1", "b/0"}
        assert all(float(r[1]["X-Queue-Wait-Ms"]) >= 0 for r in results)
        # the queue really was used: 24 clients for 4 slots
        assert max(float(r[1]["X-Queue-Wait-Ms"]) for r in results) > 20


def arrived(orch: InProcess) -> int:
    """Requests the orchestrator has taken: served, in flight or queued."""
    st = status(orch)
    return int(st["totals"]["served"] + st["totals"]["in_flight"] + st["queue"]["depth"])


def test_fifo_order(sim: SimFleet, tmp_path: Path) -> None:
    table = routes(tmp_path / "routes.json", [("a/0", sim.url(0), "a")])
    with in_process(table) as orch:
        sockets = []
        for i in range(8):
            sockets.append(raw_request(orch.port, request_id=f"r{i}"))
            # arrival order at the orchestrator: each one counted before the next is sent
            wait_for(lambda n=i: arrived(orch) == n + 1, what=f"r{i} arrived")
        for sock in sockets:
            assert sock.recv(65536).startswith(b"HTTP/1.1 200")
            sock.close()
        assert sim.stats(0)["order"] == [f"r{i}" for i in range(8)]


def test_queue_bound_answers_429_with_retry_after(sim: SimFleet, tmp_path: Path) -> None:
    sim.mode(0, "ok", service_ms=400)
    table = routes(tmp_path / "routes.json", [("a/0", sim.url(0), "a")], queue={"max_length": 2})
    with in_process(table) as orch:
        held = [raw_request(orch.port, request_id=f"held{i}") for i in range(3)]  # 1 running + 2 queued
        wait_for(lambda: status(orch)["queue"]["depth"] == 2, what="two queued")
        code, headers, body = call(orch.url + "/run_model", "POST", {"x": 1}, {"X-Request-Id": "over"})
        assert code == 429
        assert body["code"] == "queue_full"
        assert "2" in body["error"]
        assert int(headers["Retry-After"]) >= 1
        for sock in held:
            assert sock.recv(65536).startswith(b"HTTP/1.1 200")
            sock.close()
        assert "over" not in sim.stats(0)["order"]
        assert status(orch)["totals"]["rejected"] == {"queue_full": 1}


def test_queue_timeout_answers_503(sim: SimFleet, tmp_path: Path) -> None:
    sim.mode(0, "ok", service_ms=3000)
    table = routes(tmp_path / "routes.json", [("a/0", sim.url(0), "a")], queue={"timeout_s": 0.3})
    with in_process(table) as orch:
        first = raw_request(orch.port, request_id="first")
        wait_for(lambda: status(orch)["totals"]["in_flight"] == 1, what="first in flight")
        started = time.monotonic()
        code, headers, body = call(orch.url + "/run_model", "POST", {}, {"X-Request-Id": "late"})
        elapsed = time.monotonic() - started
        assert code == 503
        assert body["code"] == "queue_timeout"
        assert "Retry-After" in headers
        assert 0.25 < elapsed < 2  # not after the 3 s slot
        assert first.recv(65536).startswith(b"HTTP/1.1 200")
        first.close()
        assert sim.stats(0)["order"] == ["first"]


def test_deadline_header_bounds_queue_wait_and_service(sim: SimFleet, tmp_path: Path) -> None:
    sim.mode(0, "ok", service_ms=1500)
    table = routes(tmp_path / "routes.json", [("a/0", sim.url(0), "a")])
    with in_process(table) as orch:
        # in service: the container is slower than the deadline
        started = time.monotonic()
        code, _, body = call(orch.url + "/run_model", "POST", {}, {"X-Request-Timeout-Ms": "200"})
        assert code == 504
        assert body["code"] == "upstream_timeout"
        assert time.monotonic() - started < 1
        wait_for(lambda: status(orch)["totals"]["in_flight"] == 0, what="slot freed")
        # queued: behind a request that holds the only slot
        first = raw_request(orch.port, request_id="first")
        wait_for(lambda: status(orch)["totals"]["in_flight"] == 1, what="first in flight")
        code, _, body = call(
            orch.url + "/run_model", "POST", {}, {"X-Request-Timeout-Ms": "150", "X-Request-Id": "hurry"}
        )
        assert code == 503
        assert body["code"] == "queue_timeout"
        assert "deadline" in body["error"]
        first.recv(65536)
        first.close()
        assert "hurry" not in sim.stats(0)["order"]
        # a malformed deadline is the client's error
        code, _, body = call(orch.url + "/run_model", "POST", {}, {"X-Request-Timeout-Ms": "soon"})
        assert code == 400
        assert "X-Request-Timeout-Ms" in body["error"]


def test_client_disconnect_removes_the_queued_request(sim: SimFleet, tmp_path: Path) -> None:
    """A client that leaves while queued leaves the queue at once: long before the slot
    frees, and the container never sees its request."""
    sim.mode(0, "ok", service_ms=2000)
    table = routes(tmp_path / "routes.json", [("a/0", sim.url(0), "a")])
    with in_process(table) as orch:
        first = raw_request(orch.port, request_id="first")
        wait_for(lambda: status(orch)["totals"]["in_flight"] == 1, what="first in flight")
        gone = raw_request(orch.port, request_id="gone")
        wait_for(lambda: status(orch)["queue"]["depth"] == 1, what="queued")
        gone.close()  # the client leaves while queued
        wait_for(
            lambda: status(orch)["queue"]["depth"] == 0, timeout=0.5, what="queue emptied by the disconnect"
        )
        assert status(orch)["totals"]["in_flight"] == 1  # the first still runs
        results = []
        thread = threading.Thread(
            target=lambda: results.append(call(orch.url + "/run_model", "POST", {}, {"X-Request-Id": "next"}))
        )
        thread.start()
        assert first.recv(65536).startswith(b"HTTP/1.1 200")
        first.close()
        thread.join(10)
        assert results[0][0] == 200
        assert sim.stats(0)["order"] == ["first", "next"]


def test_many_disconnects_leave_no_stuck_slot(sim: SimFleet, tmp_path: Path) -> None:
    """Clients that leave while their request runs: the slot is freed only when the container answers."""
    sim.mode(0, "ok", service_ms=200)
    table = routes(tmp_path / "routes.json", [("a/0", sim.url(0), "a")])
    with in_process(table) as orch:
        for i in range(5):
            raw_request(orch.port, request_id=f"drop{i}").close()
        wait_for(
            lambda: status(orch)["totals"]["in_flight"] == 0 and status(orch)["queue"]["depth"] == 0,
            what="idle",
        )
        code, _, body = call(orch.url + "/run_model", "POST", {}, {"X-Request-Id": "after"})
        assert code == 200
        assert body["id"] == "after"
        assert sim.stats(0)["max_in_flight"] == 1
        assert json.dumps(status(orch)["containers"][0]["state"]) == '"ready"'
