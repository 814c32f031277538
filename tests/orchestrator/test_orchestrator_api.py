"""Forwarding details, /status and /metrics, bad input, the routing table's validation."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from onnxfleet.orchestrator.routes import RoutesError, load_table, parse_table
from tests.metrics_support import LATENCY_BOUNDS, ORCHESTRATOR_PREFIXES, histogram_bounds, naming_problems
from tests.orchestrator.inproc import in_process
from tests.orchestrator.orch_support import SimFleet, call, routes, status


def test_v2_route_forwards_path_body_and_content_type(sim: SimFleet, tmp_path: Path) -> None:
    table = routes(tmp_path / "routes.json", [("a/0", sim.url(0), "a")])
    with in_process(table) as orch:
        payload = b'{"inputs": [{"name": "input", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}]}'
        code, headers, body = call(
            orch.url + "/v2/models/digits/infer",
            "POST",
            payload,
            {"Content-Type": "application/json; charset=utf-8", "X-Request-Id": "v2"},
        )
        assert code == 200
        assert body["path"] == "/v2/models/digits/infer"
        assert body["content_type"] == "application/json; charset=utf-8"
        assert body["bytes"] == len(payload)
        assert body["id"] == "v2"
        assert headers["X-Model-Version"] == "sim-1"
        assert headers["X-Container"] == "a/0"


def test_status_and_metrics(sim: SimFleet, tmp_path: Path) -> None:
    table = routes(
        tmp_path / "routes.json",
        [("a/0", sim.url(0), "a"), ("b/0", sim.url(1), "b")],
        queue={"max_length": 7},
    )
    with in_process(table) as orch:
        for _ in range(4):
            assert call(orch.url + "/run_model", "POST", {})[0] == 200
        st = status(orch)
        assert st["ready"] is True
        assert st["queue"] == {"depth": 0, "bytes": 0, "max_length": 7, "timeout_s": 30.0}
        assert st["dispatching"] is True
        assert st["totals"]["answered"] == 4
        assert st["totals"]["by_status"] == {"200": 4}
        assert sum(c["served"] for c in st["containers"]) == 4
        a = st["containers"][0]
        assert {k: a[k] for k in ("name", "node", "url", "state", "in_flight", "model_version")} == {
            "name": "a/0",
            "node": "a",
            "url": sim.url(0),
            "state": "ready",
            "in_flight": 0,
            "model_version": "sim-1",
        }
        assert 40 <= st["service_time_ms"] < 1000
        # one JSON line per request in the log
        access = [r.__dict__ for r in orch.records.records if r.name == "onnxfleet.orchestrator.access"]
        assert len(access) == 4
        assert {entry["status"] for entry in access} == {200}
        assert {entry["container"] for entry in access} <= {"a/0", "b/0"}
        assert all(entry["queue_wait_ms"] >= 0 and entry["duration_ms"] >= 40 for entry in access)
        code, headers, text = call(orch.url + "/metrics")
        assert code == 200
        assert headers["Content-Type"].startswith("text/plain")
        lines = text.splitlines()
        for expected in (
            "onnxfleet_orchestrator_queue_depth 0.0",
            'onnxfleet_orchestrator_container_in_flight{container="a/0"} 0.0',
            'onnxfleet_orchestrator_requests_total{code="200"} 4.0',
            "onnxfleet_orchestrator_queue_wait_seconds_count 4.0",
            "onnxfleet_orchestrator_request_duration_seconds_count 4.0",
            'onnxfleet_orchestrator_rejected_total{reason="queue_full"} 0.0',
            'onnxfleet_orchestrator_container_up{container="b/0"} 1.0',
        ):
            assert expected in lines, expected
        assert naming_problems(text, ORCHESTRATOR_PREFIXES) == []
        # the worker's buckets (tests/worker/test_endpoints.py): one PromQL query reads both
        for name in ("queue_wait_seconds", "request_duration_seconds"):
            assert histogram_bounds(text, f"onnxfleet_orchestrator_{name}") == list(LATENCY_BOUNDS), name


def test_bad_requests_get_json_errors(sim: SimFleet, tmp_path: Path) -> None:
    table = routes(tmp_path / "routes.json", [("a/0", sim.url(0), "a")])
    with in_process(table, "--max-body-bytes", "1000") as orch:
        code, _, body = call(orch.url + "/run_model")
        assert code == 405
        assert body["error"]
        assert "GET" in body["error"]
        code, _, body = call(orch.url + "/nowhere")
        assert code == 404
        assert "/nowhere" in body["error"]
        code, _, body = call(orch.url + "/run_model", "POST", b"x" * 5000)
        assert code == 413
        assert "1000" in body["error"]
        assert sim.stats(0)["received"] == 0


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ("{", "not valid JSON"),
        ('{"containers": {}}', "'containers' list"),
        ('{"containers": [{"name": "a", "node": "n"}]}', "containers[0]: missing required field 'url'"),
        ('{"containers": [{"name": "a", "node": "n", "url": "http://h:1/x"}]}', "containers[0].url"),
        (
            '{"containers": [{"name": "a", "node": "n", "url": "http://h:1", "max_concurrency": 0}]}',
            "max_concurrency",
        ),
        (
            '{"containers": [{"name": "a", "node": "n", "url": "http://h:1", "weight": 2}]}',
            "unknown field(s) ['weight']",
        ),
        (
            '{"containers": [{"name": "a", "node": "n", "url": "http://h:1"}, '
            '{"name": "a", "node": "n", "url": "http://h:2"}]}',
            "duplicate name 'a'",
        ),
        ('{"containers": [], "queue": {"timeout_s": -1}}', "queue.timeout_s"),
        ('{"containers": [], "health": {"rise": 0}}', "health.rise"),
    ],
)
def test_a_bad_routing_table_stops_the_cli_with_a_clear_message(
    tmp_path: Path, table: str, message: str
) -> None:
    path = tmp_path / "routes.json"
    path.write_text(table)
    with pytest.raises(RoutesError, match=None) as err:
        load_table(path)
    assert message in str(err.value)
    assert str(path) in str(err.value)
    result = subprocess.run(
        [sys.executable, "-m", "onnxfleet", "orchestrator", "--routes", str(path), "--bind", "127.0.0.1:1"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert message in result.stderr
    assert str(path) in result.stderr


def test_routing_table_defaults() -> None:
    table = parse_table(
        {"containers": [{"name": "worker-1/0", "url": "http://10.0.1.11:5000", "node": "worker-1"}]}
    )
    spec = table.containers[0]
    assert (spec.host, spec.port, spec.max_concurrency) == ("10.0.1.11", 5000, 1)
    assert (table.queue.max_length, table.queue.timeout_s) == (1000, 30.0)
    assert json.loads(json.dumps(table.health.__dict__)) == {
        "path": "/readyz",
        "interval_s": 1.0,
        "timeout_s": 1.0,
        "fall": 2,
        "rise": 2,
    }
