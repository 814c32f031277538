"""Asynchronous mode: POST /jobs, live position, result, TTL and bound."""

from __future__ import annotations

import time
from pathlib import Path

from tests.orchestrator.inproc import in_process
from tests.orchestrator.orch_support import SimFleet, call, routes, wait_for


def test_jobs_report_their_position_then_their_result(sim: SimFleet, tmp_path: Path) -> None:
    sim.mode(0, "ok", service_ms=400)
    table = routes(tmp_path / "routes.json", [("a/0", sim.url(0), "a")])
    with in_process(table, "--job-ttl", "1.5") as orch:
        jobs = []
        for i in range(3):
            code, headers, body = call(orch.url + "/jobs", "POST", {"i": i}, {"X-Request-Id": f"job{i}"})
            assert code == 202
            assert headers["Location"] == body["status_url"] == f"/jobs/{body['id']}"
            jobs.append(body)
        assert [(j["status"], j["position"]) for j in jobs] == [("running", 0), ("queued", 0), ("queued", 1)]
        code, _, view = call(orch.url + jobs[2]["status_url"])
        assert code == 200
        assert view["status"] == "queued"
        assert view["position"] == 1
        wait_for(lambda: call(orch.url + jobs[2]["status_url"])[2].get("position") == 0, what="moved up")
        final = wait_for(
            lambda: (v := call(orch.url + jobs[2]["status_url"])[2])["status"] == "done" and v, what="done"
        )
        done_at = time.monotonic()
        result = final["result"]
        assert result["status_code"] == 200
        assert result["container"] == "a/0"
        assert result["model_version"] == "sim-1"
        assert result["body"]["id"] == "job2"
        assert result["body"]["path"] == "/run_model"
        assert sim.stats(0)["order"] == ["job0", "job1", "job2"]
        # the result is kept for --job-ttl, then forgotten
        code, _, body = wait_for(
            lambda: (a := call(orch.url + jobs[2]["status_url"]))[0] != 200 and a, what="forgotten"
        )
        assert time.monotonic() - done_at > 0.5  # not long before the 1.5 s
        assert code == 404
        assert body["code"] == "not_found"
        assert call(orch.url + "/jobs/nope")[0] == 404


def test_jobs_are_bounded_and_failures_reported(sim: SimFleet, tmp_path: Path) -> None:
    sim.mode(0, "hang")
    table = routes(tmp_path / "routes.json", [("a/0", sim.url(0), "a")])
    with in_process(table, "--max-jobs", "2", "--upstream-timeout", "0.5") as orch:
        first = call(orch.url + "/jobs", "POST", {})[2]
        assert call(orch.url + "/jobs", "POST", {})[0] == 202
        code, headers, body = call(orch.url + "/jobs", "POST", {})
        assert code == 429
        assert body["code"] == "too_many_jobs"
        assert "Retry-After" in headers
        view = wait_for(
            lambda: (v := call(orch.url + first["status_url"])[2])["status"] == "failed" and v, what="failed"
        )
        assert view["result"]["status_code"] == 504
        assert view["result"]["body"]["code"] == "upstream_timeout"
