"""Canaries judged on live traffic, with real workers: iris version 1 on two containers,
a canary version on a third (the real iris version 2, one that fails on every flower, or
one about ten times slower), a share of the unpinned requests sent to it, and the verdict
the orchestrator reaches on the answers (POST/GET/DELETE /admin/canary)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.orchestrator.orch_support import call, orchestrator, status, wait_for
from tests.support import ROOT, Service, free_port
from tests.support_models import failing_iris, slow_iris

MODELS = ROOT / "app" / "models"
IRIS = json.loads((MODELS / "iris.json").read_text())
SAMPLE = {"inputs": IRIS["example"]["inputs"]}
BASELINE = ("n1/0", "n2/0")


def start_worker(name: str, model: Path) -> Service:
    port = free_port()
    args = ["worker", "--model", str(model), "--bind", f"127.0.0.1:{port}", "--container-name", name]
    return Service([*args, "--max-concurrency", "1", "--max-waiting", "0", "--intra-op-threads", "1"], port)


@pytest.fixture(scope="module")
def baseline() -> Iterator[dict[str, Service]]:
    started = {name: start_worker(name, MODELS / "iris.onnx").start() for name in BASELINE}
    try:
        for w in started.values():
            w.wait_ready()
        yield started
    finally:
        for w in started.values():
            w.stop()


@pytest.fixture
def canary_worker(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Service]:
    """The canary container: ``request.param`` names which version 2 it serves."""
    kind = request.param
    if kind == "good":
        model = tmp_path / "iris-2.onnx"
        for suffix in (".onnx", ".json"):
            shutil.copy(MODELS / f"iris-2{suffix}", model.with_suffix(suffix))
    elif kind == "failing":
        model = failing_iris(tmp_path, "2")
    else:
        model = slow_iris(tmp_path, "2")
    with start_worker("n3/0", model) as worker:
        worker.wait_ready()
        yield worker


def routes(path: Path, workers: dict[str, Service]) -> Path:
    containers = [{"name": name, "url": w.url, "node": name.split("/")[0]} for name, w in workers.items()]
    health = {"interval_s": 0.2, "timeout_s": 2, "fall": 2, "rise": 1}
    path.write_text(json.dumps({"health": health, "models": [{"name": "iris", "containers": containers}]}))
    return path


def send(url: str, count: int, clients: int = 3) -> list[tuple[int, str, str]]:
    """``count`` unpinned requests: (status, container, version) of each."""

    def one(_: int) -> tuple[int, str, str]:
        code, headers, _body = call(url + "/run_model?model=iris", "POST", SAMPLE, timeout=30)
        return code, headers["X-Container"] or "", headers["X-Model-Version"] or ""

    with ThreadPoolExecutor(clients) as pool:
        return list(pool.map(one, range(count)))


def start(url: str, **spec: Any) -> dict[str, Any]:
    code, _, body = call(url + "/admin/canary", "POST", {"model": "iris", "version": "2", **spec})
    assert code == 201, body
    return body


def serving(orch: Service) -> bool:
    model = next(m for m in status(orch)["models"] if m["name"] == "iris")
    return sorted(model["versions"]) == ["1", "2"] and model["ready_containers"] == 3


@pytest.mark.parametrize("canary_worker", ["failing"], indirect=True)
def test_a_failing_canary_is_rolled_back_early_and_only_its_requests_failed(
    baseline: dict[str, Service], canary_worker: Service, tmp_path: Path
) -> None:
    workers = {**baseline, "n3/0": canary_worker}
    with orchestrator(routes(tmp_path / "routes.json", workers)) as orch:
        wait_for(lambda: serving(orch), 20)
        start(orch.url, percent=25, window_s=120, min_requests=8, max_error_rate_margin=0.05)
        answers = send(orch.url, 160)
        view = call(orch.url + "/admin/canary?model=iris")[2]
        assert view["state"] == "rollback", view
        assert "error rate" in view["reason"], view
        assert view["decided_after_s"] < 120, view  # before the window's end
        failed = [a for a in answers if a[0] != 200]
        # only requests the canary served failed, and they stopped once it was judged
        assert {container for _, container, _ in failed} == {"n3/0"}, failed
        assert {code for code, _, _ in failed} == {422}
        # judged on its 8th answer; the few already sent to it (3 clients) failed too
        assert view["figures"]["canary"]["requests"] == 8, view
        assert 8 <= len(failed) <= 8 + 3, failed
        last_canary = max(i for i, (_, c, _) in enumerate(answers) if c == "n3/0")
        assert all(a[0] == 200 and a[1] in BASELINE for a in answers[last_canary + 4 :])
        assert len(answers) - last_canary > 100  # the canary got nothing after its verdict
        # pinned requests still reach the canary's version (an operator's own check)
        code, headers, _ = call(orch.url + "/run_model?model=iris&version=2", "POST", SAMPLE)
        assert (code, headers["X-Container"]) == (422, "n3/0")
        ended = call(orch.url + "/admin/canary?model=iris", "DELETE")
        assert (ended[0], ended[2]["state"]) == (200, "rollback")
        assert status(orch)["models"][0]["canary"] is None


@pytest.mark.parametrize("canary_worker", ["good"], indirect=True)
def test_a_good_canary_gets_its_share_and_is_promoted_after_its_window(
    baseline: dict[str, Service], canary_worker: Service, tmp_path: Path
) -> None:
    workers = {**baseline, "n3/0": canary_worker}
    with orchestrator(routes(tmp_path / "routes.json", workers)) as orch:
        wait_for(lambda: serving(orch), 20)
        start(orch.url, percent=20, window_s=4, min_requests=10, max_p99_factor=20)
        again = call(orch.url + "/admin/canary", "POST", {"model": "iris", "version": "2"})
        assert (again[0], again[2]["code"]) == (409, "canary_running"), again
        answers = send(orch.url, 100)
        assert all(code == 200 for code, _, _ in answers), answers
        to_canary = [a for a in answers if a[2] == "2"]
        assert len(to_canary) == 20  # exactly its share: every fifth unpinned request
        assert {c for _, c, _ in to_canary} == {"n3/0"}
        assert {c for _, c, v in answers if v == "1"} == set(BASELINE)
        view = wait_for(
            lambda: (v := call(orch.url + "/admin/canary?model=iris")[2])["state"] != "judging" and v, 15
        )
        assert view["state"] == "promote", view
        assert view["decided_after_s"] >= 4
        assert view["figures"]["canary"]["errors"] == 0
        # a decided canary may be replaced by another
        code, _, body = call(orch.url + "/admin/canary", "POST", {"model": "iris", "version": "1"})
        assert code == 201, body


@pytest.mark.parametrize("canary_worker", ["slow"], indirect=True)
def test_a_slow_canary_is_rolled_back_on_its_p99(
    baseline: dict[str, Service], canary_worker: Service, tmp_path: Path
) -> None:
    workers = {**baseline, "n3/0": canary_worker}
    with orchestrator(routes(tmp_path / "routes.json", workers)) as orch:
        wait_for(lambda: serving(orch), 20)
        start(orch.url, percent=25, window_s=120, min_requests=8, max_p99_factor=2)
        answers = send(orch.url, 80, clients=2)
        assert all(code == 200 for code, _, _ in answers), answers
        view = call(orch.url + "/admin/canary?model=iris")[2]
        assert view["state"] == "rollback", view
        assert view["reason"].startswith("p99"), view


def test_canary_requests_that_cannot_be_judged_are_refused(
    baseline: dict[str, Service], tmp_path: Path
) -> None:
    with orchestrator(routes(tmp_path / "routes.json", baseline)) as orch:
        wait_for(lambda: status(orch)["models"][0]["ready_containers"] == 2, 20)
        url = orch.url + "/admin/canary"
        cases = [
            ({"model": "iris", "version": "1"}, 409, "no_baseline"),
            ({"model": "iris", "version": "9"}, 404, "version_not_found"),
            ({"model": "nope", "version": "1"}, 404, "model_not_found"),
            ({"model": "iris", "version": "1", "percent": 100}, 400, "bad_request"),
            ({"model": "iris"}, 400, "bad_request"),
            ({"model": "iris", "version": "1", "colour": "blue"}, 400, "bad_request"),
        ]
        for body, expected, code in cases:
            got = call(url, "POST", body)
            assert (got[0], got[2]["code"]) == (expected, code), (body, got)
        got = call(url, "POST", b"{not json")
        assert (got[0], got[2]["code"]) == (400, "bad_request"), got
        for method in ("GET", "DELETE"):
            got = call(url + "?model=iris", method)
            assert (got[0], got[2]["code"]) == (404, "no_canary"), got
        got = call(url + "?model=iris&model=iris", "GET")
        assert got[0] == 400, got
