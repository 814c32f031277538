"""Many models on one orchestrator, with real workers: routing by name and version, 404s that
list what is served, per-model queues, Triton's repository, config and stats endpoints."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from tests.metrics_support import LATENCY_BOUNDS, ORCHESTRATOR_PREFIXES, histogram_bounds, naming_problems
from tests.orchestrator.orch_support import call, chromium, orchestrator, status, wait_for
from tests.orchestrator.test_orchestrator_workers import DIGITS, SAMPLE
from tests.support import Service, free_port

# (container, model name, version): digits 1 and 2 on two containers, "iris" (the digits
# file under another name and version) on a third
WORKERS = (("w1/0", "digits", "1"), ("w2/0", "digits", "2"), ("w1/iris/0", "iris", "7"))
SIGNATURE = {
    "batch": True,
    "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}],
    "outputs": [{"name": "label", "datatype": "INT64", "shape": [-1]}],
}
OIP = {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [1.0] * 64}]}


def start_worker(name: str, model: str, version: str, port: int | None = None) -> Service:
    port = port or free_port()
    args = ["worker", "--model", str(DIGITS), "--bind", f"127.0.0.1:{port}", "--container-name", name]
    args += ["--model-name", model, "--model-version", version, "--max-concurrency", "1"]
    return Service([*args, "--max-waiting", "0", "--intra-op-threads", "1"], port)


@pytest.fixture(scope="module")
def workers() -> Iterator[dict[str, Service]]:
    started = {name: start_worker(name, model, version).start() for name, model, version in WORKERS}
    try:
        for w in started.values():
            w.wait_ready()
        yield started
    finally:
        for w in started.values():
            w.stop()


def table(path: Path, workers: dict[str, Service], iris_queue: int = 100) -> Path:
    def containers(model: str) -> list[dict[str, Any]]:
        return [
            {"name": name, "url": workers[name].url, "node": name.split("/")[0]}
            for name, m, _ in WORKERS
            if m == model
        ]

    path.write_text(
        json.dumps(
            {
                "health": {"interval_s": 0.2, "timeout_s": 0.5, "fall": 2, "rise": 2},
                "models": [
                    {
                        "name": "digits",
                        "containers": containers("digits"),
                        "signature": SIGNATURE,
                        "batching": {"max_batch_size": 8},
                    },
                    {
                        "name": "iris",
                        "containers": containers("iris"),
                        "queue": {"max_length": iris_queue, "timeout_s": 30},
                    },
                ],
            }
        )
    )
    return path


def test_requests_reach_their_model_and_version_only(workers: dict[str, Service], tmp_path: Path) -> None:
    with orchestrator(table(tmp_path / "routes.json", workers)) as orch:
        url = orch.url

        def infer(path: str) -> tuple[str, str]:
            code, headers, body = call(url + path, "POST", OIP if "/v2/" in path else SAMPLE)
            assert code == 200, body
            return headers["X-Container"], headers["X-Model-Version"]

        with ThreadPoolExecutor(6) as pool:
            two = list(pool.map(lambda _: infer("/v2/models/digits/versions/2/infer"), range(30)))
            one = list(pool.map(lambda _: infer("/v2/models/digits/versions/1/infer"), range(30)))
            iris = list(pool.map(lambda _: infer("/v2/models/iris/infer"), range(20)))
            any_digits = list(pool.map(lambda _: infer("/run_model"), range(30)))
        assert set(two) == {("w2/0", "2")}
        assert set(one) == {("w1/0", "1")}
        assert set(iris) == {("w1/iris/0", "7")}
        assert {c for c, _ in any_digits} == {"w1/0", "w2/0"}  # the default model: both versions
        assert infer("/run_model?model=iris") == ("w1/iris/0", "7")
        assert infer("/run_model?model=digits&version=2") == ("w2/0", "2")
        code, _, job = call(url + "/jobs?model=digits&version=1", "POST", SAMPLE)
        assert code == 202, job
        result = wait_for(lambda: (r := call(url + job["status_url"])[2])["status"] == "done" and r, 20)
        assert (result["result"]["container"], result["result"]["model_version"]) == ("w1/0", "1")
        code, _, body = call(url + "/v2/models/iris/versions/7", "GET")
        assert (code, body["name"], body["versions"]) == (200, "iris", ["7"])

        served = [{"name": "digits", "versions": ["1", "2"]}, {"name": "iris", "versions": ["7"]}]
        for path in ("/v2/models/nope/infer", "/run_model?model=nope"):
            code, _, body = call(url + path, "POST", OIP)
            assert (code, body["code"], body["models"]) == (404, "model_not_found", served), path
            assert "'nope'" in body["error"]
        for path in ("/v2/models/digits/versions/9/infer", "/run_model?version=9"):
            code, _, body = call(url + path, "POST", OIP)
            assert (code, body["code"], body["versions"]) == (404, "version_not_found", ["1", "2"]), path
        code, _, body = call(url + "/run_model?model=iris&model=digits", "POST", SAMPLE)
        assert (code, body["code"]) == (400, "bad_request")

        # each access log line names the model and the version that answered
        access = [
            json.loads(line)
            for line in orch.log().splitlines()
            if '"logger":"onnxfleet.orchestrator.access"' in line
        ]
        assert ("iris", "7", "w1/iris/0") in {
            (a["model"], a["model_version"], a["container"]) for a in access
        }
        assert {(a["model"], a["model_version"]) for a in access if a["container"] == "w2/0"} == {
            ("digits", "2")
        }

        seen = status(orch)
        assert seen["default_model"] == "digits"
        by_model = {m["name"]: m for m in seen["models"]}
        assert by_model["digits"]["versions"] == {"1": ["w1/0"], "2": ["w2/0"]}
        assert by_model["iris"]["versions"] == {"7": ["w1/iris/0"]}
        assert by_model["digits"]["batching"]["enabled"] is True
        assert by_model["iris"]["batching"]["enabled"] is False
        assert {c["name"]: c["model"] for c in seen["containers"]}["w1/iris/0"] == "iris"
        _, _, metrics = call(url + "/metrics")  # (20 + 1 inferences, 1 metadata answer)
        assert 'onnxfleet_orchestrator_queue_depth{model="iris"} 0.0' in metrics
        assert 'onnxfleet_orchestrator_requests_total{code="200",model="iris"} 22.0' in metrics
        assert 'onnxfleet_orchestrator_queue_wait_seconds_count{model="digits"}' in metrics
        assert naming_problems(metrics, ORCHESTRATOR_PREFIXES) == []
        assert histogram_bounds(metrics, "onnxfleet_orchestrator_request_duration_seconds") == list(
            LATENCY_BOUNDS
        )


def test_triton_tools_read_the_repository_config_and_stats(
    workers: dict[str, Service], tmp_path: Path
) -> None:
    with orchestrator(table(tmp_path / "routes.json", workers)) as orch:
        for _ in range(3):
            assert call(orch.url + "/v2/models/digits/versions/2/infer", "POST", OIP)[0] == 200
        assert call(orch.url + "/v2/models/iris/infer", "POST", OIP)[0] == 200
        assert call(orch.url + "/v2/models/iris/infer", "POST", {"inputs": []})[0] == 422
        client = triton.InferenceServerClient(orch.url.removeprefix("http://"))
        index = client.get_model_repository_index()
        assert sorted((m["name"], m["version"], m["state"]) for m in index) == [
            ("digits", "1", "READY"),
            ("digits", "2", "READY"),
            ("iris", "7", "READY"),
        ]
        assert client.get_model_repository_index(query_params=None) == index
        config = client.get_model_config("digits")
        assert config["name"] == "digits"
        assert (config["platform"], config["backend"], config["max_batch_size"]) == (
            "onnxruntime_onnx",
            "onnxruntime",
            8,
        )
        assert config["input"] == [{"name": "input", "data_type": "TYPE_FP32", "dims": [64]}]
        assert config["output"] == [{"name": "label", "data_type": "TYPE_INT64", "dims": []}]
        assert "dynamic_batching" in config
        assert config["instance_group"][0]["count"] == 2
        assert client.get_model_config("iris")["max_batch_size"] == 0
        assert client.get_model_config("digits", "2")["name"] == "digits"

        stats = client.get_inference_statistics("digits", "2")["model_stats"]
        assert [(s["name"], s["version"]) for s in stats] == [("digits", "2")]
        two = stats[0]
        assert two["inference_count"] == 3
        assert two["inference_stats"]["success"]["count"] == 3
        assert two["inference_stats"]["compute_infer"]["count"] == 3
        assert two["inference_stats"]["success"]["ns"] >= two["inference_stats"]["compute_infer"]["ns"] > 0
        assert two["execution_count"] == sum(b["compute_infer"]["count"] for b in two["batch_stats"]) >= 1
        assert two["last_inference"] > 0
        iris = client.get_inference_statistics("iris")["model_stats"]
        assert [
            (s["version"], s["inference_count"], s["inference_stats"]["fail"]["count"]) for s in iris
        ] == [("7", 1, 1)]
        every = client.get_inference_statistics()["model_stats"]
        assert {(s["name"], s["version"]) for s in every} == {("digits", "1"), ("digits", "2"), ("iris", "7")}
        with pytest.raises(InferenceServerException, match="no model 'nope'"):
            client.get_model_config("nope")
        with pytest.raises(InferenceServerException, match="no version '9'"):
            client.get_inference_statistics("digits", "9")
        code, _, ready = call(orch.url + "/v2/repository/index", "POST", {"ready": True})
        assert (code, len(ready)) == (200, 3)
        assert call(orch.url + "/v2/repository/index", "POST", {"ready": "yes"})[0] == 400


def test_a_flood_on_one_model_never_takes_another_models_slots(
    workers: dict[str, Service], tmp_path: Path
) -> None:
    with orchestrator(table(tmp_path / "routes.json", workers, iris_queue=2)) as orch:
        stop = threading.Event()
        flood: list[int] = []

        def flooder() -> None:
            while not stop.is_set():
                flood.append(call(orch.url + "/v2/models/iris/infer", "POST", OIP)[0])

        threads = [threading.Thread(target=flooder) for _ in range(12)]
        for t in threads:
            t.start()
        try:
            digits = [call(orch.url + "/run_model", "POST", SAMPLE) for _ in range(60)]
        finally:
            stop.set()
            for t in threads:
                t.join(30)
        assert 429 in flood, sorted(set(flood))  # iris's queue filled up: 429 for it
        assert set(flood) <= {200, 429}
        assert [d[0] for d in digits] == [200] * 60
        assert {d[1]["X-Container"] for d in digits} <= {"w1/0", "w2/0"}
        rejected = status(orch)
        by_model = {m["name"]: m for m in rejected["models"]}
        assert by_model["digits"]["queue"]["depth"] == 0


def test_a_reload_adds_and_removes_models_leaving_the_others_alone(
    workers: dict[str, Service], tmp_path: Path
) -> None:
    path = table(tmp_path / "routes.json", workers)
    with orchestrator(path) as orch:
        before = {c["name"]: c for c in status(orch)["containers"]}
        raw = json.loads(path.read_text())
        iris = raw["models"].pop()
        iris["name"] = "mnist"
        raw["models"].append(iris)
        path.write_text(json.dumps(raw))
        code, _, changes = call(orch.url + "/admin/reload", "POST")
        assert code == 200, changes
        assert (changes["models_added"], changes["models_removed"]) == (["mnist"], ["iris"])
        assert (changes["added"], changes["removed"]) == (["w1/iris/0"], ["w1/iris/0"])
        after = {c["name"]: c for c in status(orch)["containers"]}
        for name in ("w1/0", "w2/0"):  # the same records: their counters go on
            assert after[name]["served"] == before[name]["served"]
        code, _, body = call(orch.url + "/v2/models/iris/infer", "POST", OIP)
        assert (code, body["code"]) == (404, "model_not_found")
        assert call(orch.url + "/run_model?model=mnist", "POST", SAMPLE)[0] in (200, 503)


def test_the_dashboard_shows_every_model_its_versions_queue_and_canary(
    workers: dict[str, Service], tmp_path: Path
) -> None:
    with orchestrator(table(tmp_path / "routes.json", workers, iris_queue=7)) as orch:
        wait_for(lambda: all(m["ready_containers"] for m in status(orch)["models"]), what="every model ready")
        canary = {"model": "digits", "version": "2", "percent": 25, "window_s": 600}
        code, _, body = call(orch.url + "/admin/canary", "POST", canary)
        assert code == 201, body
        dom = chromium(tmp_path / "profile", "--dump-dom", orch.url + "/")
    rows = dict(re.findall(r'<tr data-model="(\w+)">(.*?)</tr>', dom))
    assert list(rows) == ["digits", "iris"]
    cells = {name: re.findall(r"<td[^>]*>([^<]*)</td>", row) for name, row in rows.items()}
    assert cells["digits"][:4] == ["digits (default)", "1: 1, 2: 1", "2 / 2", "0 / 1000"]
    assert cells["digits"][5] == "version 2 at 25 %: judging"
    assert cells["iris"][:4] == ["iris", "7: 1", "1 / 1", "0 / 7"]
    assert cells["iris"][5] == "\u2013"  # no canary
    assert cells["iris"][4].endswith(" ms")
    # each container says which model it serves, beside the version it answered with
    assert re.search(r'<tr data-container="w1/iris/0">.*?<td>iris</td><td>7</td></tr>', dom), dom


def test_pinned_requests_follow_a_container_restarted_with_a_new_version(tmp_path: Path) -> None:
    """A rollout in small: b/0 is stopped and started again with version 2 on its address;
    requests pinned to 1 never reach it afterwards, those pinned to 2 reach only it."""
    a = start_worker("a/0", "digits", "1").start()
    b = start_worker("b/0", "digits", "1").start()
    try:
        a.wait_ready()
        b.wait_ready()
        path = tmp_path / "routes.json"
        path.write_text(
            json.dumps(
                {
                    "health": {"interval_s": 0.2, "timeout_s": 0.5, "fall": 1, "rise": 1},
                    "models": [
                        {
                            "name": "digits",
                            "containers": [
                                {"name": w, "url": s.url, "node": w.split("/")[0]}
                                for w, s in (("a/0", a), ("b/0", b))
                            ],
                        }
                    ],
                }
            )
        )
        with orchestrator(path) as orch:
            stop = threading.Event()
            pinned_one: list[tuple[int, str | None, str | None]] = []

            def load() -> None:
                while not stop.is_set():
                    code, headers, _ = call(orch.url + "/v2/models/digits/versions/1/infer", "POST", OIP)
                    pinned_one.append((code, headers["X-Container"], headers["X-Model-Version"]))

            loader = threading.Thread(target=load)
            loader.start()
            try:
                wait_for(lambda: len(pinned_one) > 20, 20)
                b.stop()
                b = start_worker("b/0", "digits", "2", b.port).start()
                wait_for(
                    lambda: any(
                        (c["name"], c["model_version"], c["state"]) == ("b/0", "2", "ready")
                        for c in status(orch)["containers"]
                    ),
                    30,
                    "b/0 to be ready, serving version 2",
                )
                switched = len(pinned_one)
                two = [call(orch.url + "/v2/models/digits/versions/2/infer", "POST", OIP) for _ in range(10)]
                wait_for(lambda: len(pinned_one) > switched + 20, 20)
            finally:
                stop.set()
                loader.join(30)
        assert {code for code, _, _ in pinned_one} == {200}
        assert {version for _, _, version in pinned_one} == {"1"}
        assert {container for _, container, _ in pinned_one[switched:]} == {"a/0"}
        assert {(r[0], r[1]["X-Container"], r[1]["X-Model-Version"]) for r in two} == {(200, "b/0", "2")}
    finally:
        a.stop()
        b.stop()
