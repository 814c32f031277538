"""The importable engine, as the operations scenarios use it: `run_load`, `BackgroundLoad`."""

from __future__ import annotations

import threading
import time

import pytest

from onnxfleet.load import BackgroundLoad, LoadPlan, Results, run_load, target_url
from onnxfleet.load.report import format_summary, percentile, summarize
from onnxfleet.load.runner import RequestRecord
from tests.load.load_support import LoadServer
from tests.support import free_port


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://10.0.1.11", "http://10.0.1.11/run_model"),
        ("http://10.0.1.11:8080/", "http://10.0.1.11:8080/run_model"),
        ("https://fleet.example/?a=1", "https://fleet.example/run_model?a=1"),
        ("http://10.0.1.11:5000/run_model", "http://10.0.1.11:5000/run_model"),
        ("http://h/v2/models/digits/infer#x", "http://h/v2/models/digits/infer"),
    ],
)
def test_target_url(url: str, expected: str) -> None:
    assert target_url(url) == expected


def test_an_unlimited_run_needs_an_end() -> None:
    with pytest.raises(ValueError, match="needs a duration or a stop event"):
        run_load(LoadPlan("http://127.0.0.1:1", n=0))


def test_the_plan_hides_secrets_from_its_repr() -> None:
    plan = LoadPlan("http://h", token="s3cret", headers={"X-Api-Key": "k3y"})
    assert "s3cret" not in repr(plan)
    assert "k3y" not in repr(plan)
    assert plan.request_headers()["Authorization"] == "Bearer s3cret"


@pytest.mark.parametrize(
    ("where", "timeout", "kind"),
    [
        ("refused", 5.0, "connect_refused"),
        ("/run_model?delay=2", 0.2, "timeout"),
        ("drop", 5.0, "disconnected"),
        ("reset", 5.0, "reset"),
    ],
)
def test_errors_are_classified(server: LoadServer, where: str, timeout: float, kind: str) -> None:
    url = {
        "refused": f"http://127.0.0.1:{free_port()}",
        "drop": server.drop_url,
        "reset": server.reset_url,
    }.get(where, server.url + where)
    results = run_load(LoadPlan(url, n=4, concurrency=2, timeout=timeout))
    assert [(r.status, r.error) for r in results.records] == [(None, kind)] * 4
    assert all(r.detail for r in results.records)
    assert summarize(results)["errors"] == {kind: 4}
    if kind == "timeout":
        # the timeout fired, long before the 2 s answer (timer and clock may differ by a tick)
        assert all(0.15 <= r.latency_s < 1.9 for r in results.records), [r.latency_s for r in results.records]


def test_workers_never_exceed_the_request_count(server: LoadServer) -> None:
    results = run_load(LoadPlan(server.url + "/run_model?delay=0.1", n=3, concurrency=10))
    assert len(results.records) == server.arrived == 3
    assert server.max_in_flight == 3


def test_rate_paces_requests(server: LoadServer) -> None:
    results = run_load(LoadPlan(server.url, n=0, duration=1.0, rate=20, concurrency=4))
    # requests start at 0, 1/20, 2/20 ... s: 20 fit in one second
    assert 18 <= len(results.records) == server.arrived <= 21
    starts = sorted(r.start_s for r in results.records)
    # unpaced they would all start near 0, twice the rate near 0.25
    assert starts[10] == pytest.approx(0.5, abs=0.15)


def test_background_load_counts_every_request_until_stopped(server: LoadServer) -> None:
    load = BackgroundLoad(LoadPlan(server.url + "/run_model?delay=0.05", n=0, concurrency=4)).start()
    deadline = time.monotonic() + 20
    while len(load.records) < 20 and time.monotonic() < deadline:
        time.sleep(0.05)
    live = len(load.records)
    assert live >= 20  # records are visible while the run goes on
    time.sleep(0.12)  # stop with requests in flight
    stopped_at = time.monotonic()
    results = load.stop(timeout=10)
    assert time.monotonic() - stopped_at < 2
    assert results.interrupted
    # every request the server received is in the records, none failed
    assert len(results.records) == server.arrived > live
    assert results.failed == 0
    assert sum(summarize(results)["containers"].values()) == server.arrived


def test_background_load_ends_by_itself_and_reports_from_a_thread(server: LoadServer) -> None:
    with BackgroundLoad(LoadPlan(server.url, n=12, concurrency=3)) as load:
        results = load.wait(timeout=20)
    assert not results.interrupted
    assert len(results.records) == server.arrived == 12


def test_stop_event_ends_run_load_in_another_thread(server: LoadServer) -> None:
    stop = threading.Event()
    timer = threading.Timer(0.5, stop.set)
    timer.start()
    started = time.monotonic()
    results = run_load(LoadPlan(server.url + "/run_model?delay=0.02", n=0, concurrency=2), stop=stop)
    assert 0.5 <= time.monotonic() - started < 2
    assert results.interrupted
    assert len(results.records) == server.arrived


def _record(
    latency_ms: float,
    status: int | None = 200,
    container: str | None = None,
    version: str | None = None,
    error: str | None = None,
) -> RequestRecord:
    return RequestRecord(0.0, latency_ms / 1000, status, container, version, error=error)


def test_percentiles_use_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert [percentile(values, q) for q in (50, 90, 99, 100)] == [50, 90, 99, 100]
    assert percentile([7.0], 99) == 7.0


def test_summary_of_hand_made_records() -> None:
    results = Results(plan=LoadPlan("http://h", n=4, concurrency=2), duration_s=2.0)
    results.records = [
        _record(10, container="w-1/0", version="1"),
        _record(30, container="w-1/0", version="2"),
        _record(20, status=503, container="w-2/0", version="2"),
        _record(5000, status=None, error="timeout"),
    ]
    summary = summarize(results)
    assert summary["throughput_rps"] == 2.0
    assert summary["latency_ms"] == {"min": 10, "mean": 20, "p50": 20, "p90": 30, "p99": 30, "max": 30}
    assert summary["status_codes"] == {"200": 2, "503": 1}
    assert summary["errors"] == {"timeout": 1}
    assert summary["containers"] == {"w-1/0": 2, "w-2/0": 1}
    assert summary["versions"] == {"1": 1, "2": 2}
    assert summary["queue_wait_ms"] is None
    text = format_summary(summary)
    assert "queue wait" not in text
    assert "w-1/0        2   66.7%" in text
