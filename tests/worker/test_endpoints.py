"""Every endpoint of a real digits worker (gunicorn + onnxruntime), answers checked
against onnxruntime called in-process on the same input."""

from __future__ import annotations

import json
import uuid

import numpy as np
import onnxruntime as ort
import pytest
import requests
from sklearn.datasets import load_digits

from tests.metrics_support import LATENCY_BOUNDS, histogram_bounds, naming_problems
from tests.support import Service
from tests.worker.worker_support import DIGITS, metric

SAMPLES = load_digits().data[:20].astype(np.float32)


@pytest.fixture(scope="module")
def expected() -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(DIGITS), providers=["CPUExecutionProvider"])
    label, probabilities = session.run(["label", "probabilities"], {"input": SAMPLES})
    return {"label": label, "probabilities": probabilities}


def check_identity(response: requests.Response, card: dict) -> None:
    assert response.headers["Content-Type"] == "application/json"
    assert response.headers["X-Model-Version"] == card["version"] == "1"
    assert response.headers["X-Container"] == "digits-0"


@pytest.mark.parametrize("path", ["/healthz", "/v2/health/live"])
def test_live(digits_worker: Service, digits_card: dict, path: str) -> None:
    response = requests.get(digits_worker.url + path, timeout=5)
    assert response.status_code == 200
    assert response.json() == {"live": True, "container": "digits-0"}
    check_identity(response, digits_card)


@pytest.mark.parametrize("path", ["/readyz", "/v2/health/ready"])
def test_ready(digits_worker: Service, digits_card: dict, path: str) -> None:
    response = requests.get(digits_worker.url + path, timeout=5)
    assert response.status_code == 200
    body = response.json()
    assert body["ready"] is True
    assert body["state"] == "ready"
    assert (body["model"], body["version"], body["sha256"]) == ("digits", "1", digits_card["sha256"])
    assert body["max_concurrency"] == 1
    assert body["intra_op_threads"] == 1
    check_identity(response, digits_card)


def test_server_metadata(digits_worker: Service) -> None:
    response = requests.get(digits_worker.url + "/v2", timeout=5)
    assert response.status_code == 200
    assert response.json()["name"] == "onnxfleet"


@pytest.mark.parametrize("path", ["/v2/models/digits", "/v2/models/digits/versions/1"])
def test_model_metadata(digits_worker: Service, digits_card: dict, path: str) -> None:
    response = requests.get(digits_worker.url + path, timeout=5)
    assert response.status_code == 200
    body = response.json()
    assert body["name"] == "digits"
    assert body["versions"] == ["1"]
    assert body["platform"] == "onnxruntime_onnx"
    assert (
        body["inputs"] == digits_card["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}]
    )
    assert body["outputs"] == digits_card["outputs"]


@pytest.mark.parametrize("path", ["/v2/models/digits/ready", "/v2/models/digits/versions/1/ready"])
def test_model_ready(digits_worker: Service, path: str) -> None:
    response = requests.get(digits_worker.url + path, timeout=5)
    assert response.status_code == 200
    assert response.json() == {"name": "digits", "ready": True}


def test_run_model_predicts_like_onnxruntime(
    digits_worker: Service, digits_card: dict, expected: dict[str, np.ndarray]
) -> None:
    response = requests.post(digits_worker.url + "/run_model", json={"inputs": SAMPLES.tolist()}, timeout=10)
    assert response.status_code == 200, response.text
    check_identity(response, digits_card)
    body = response.json()
    assert (body["model"], body["version"], body["container"]) == ("digits", "1", "digits-0")
    assert set(body["outputs"]) == {"label", "probabilities"}
    assert body["outputs"]["label"] == expected["label"].tolist()
    np.testing.assert_array_equal(
        np.array(body["outputs"]["probabilities"], np.float32), expected["probabilities"]
    )
    # the demo model is good at its job
    assert np.mean(np.array(body["outputs"]["label"]) == load_digits().target[:20]) >= 0.9


def test_run_model_named_input(digits_worker: Service, expected: dict[str, np.ndarray]) -> None:
    body = {"inputs": {"input": SAMPLES[:3].tolist()}}
    response = requests.post(digits_worker.url + "/run_model", json=body, timeout=10)
    assert response.status_code == 200, response.text
    assert response.json()["outputs"]["label"] == expected["label"][:3].tolist()


def test_card_example_is_predicted(digits_worker: Service, digits_card: dict) -> None:
    example = digits_card["example"]
    response = requests.post(digits_worker.url + "/run_model", json={"inputs": example["inputs"]}, timeout=10)
    assert response.json()["outputs"]["label"] == [example["label"]]


@pytest.mark.parametrize("nested", [False, True])
def test_v2_infer(
    digits_worker: Service, digits_card: dict, expected: dict[str, np.ndarray], nested: bool
) -> None:
    data = SAMPLES.tolist() if nested else SAMPLES.reshape(-1).tolist()
    body = {"id": "req-7", "inputs": [{"name": "input", "shape": [20, 64], "datatype": "FP32", "data": data}]}
    response = requests.post(digits_worker.url + "/v2/models/digits/infer", json=body, timeout=10)
    assert response.status_code == 200, response.text
    check_identity(response, digits_card)
    answer = response.json()
    assert answer["model_name"] == "digits"
    assert answer["model_version"] == "1"
    assert answer["id"] == "req-7"
    assert answer["parameters"] == {"container": "digits-0"}
    outputs = {o["name"]: o for o in answer["outputs"]}
    assert outputs["label"] == {
        "name": "label",
        "datatype": "INT64",
        "shape": [20],
        "data": expected["label"].tolist(),
    }
    assert outputs["probabilities"]["datatype"] == "FP32"
    assert outputs["probabilities"]["shape"] == [20, 10]
    np.testing.assert_array_equal(
        np.array(outputs["probabilities"]["data"], np.float32), expected["probabilities"].reshape(-1)
    )


def test_v2_infer_versioned_route_and_output_selection(digits_worker: Service) -> None:
    body = {
        "inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": SAMPLES[0].tolist()}],
        "outputs": [{"name": "label"}],
    }
    response = requests.post(digits_worker.url + "/v2/models/digits/versions/1/infer", json=body, timeout=10)
    assert response.status_code == 200, response.text
    assert [o["name"] for o in response.json()["outputs"]] == ["label"]
    assert "id" not in response.json()


def test_metrics(digits_worker: Service) -> None:
    url = digits_worker.url
    before = requests.get(url + "/metrics", timeout=5).text
    for _ in range(3):
        requests.post(url + "/run_model", json={"inputs": SAMPLES[:4].tolist()}, timeout=10)
    requests.post(url + "/run_model", json={"inputs": [[1, 2]]}, timeout=10)
    response = requests.get(url + "/metrics", timeout=5)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    after = response.text

    def delta(name: str, **labels: str) -> float:
        return metric(after, name, **labels) - metric(before, name, **labels)

    ok = {"code": "200", "endpoint": "/run_model", "method": "POST"}  # the exposition's order
    assert delta("onnxfleet_worker_requests_total", **ok) == 3
    assert delta("onnxfleet_worker_requests_total", **{**ok, "code": "422"}) == 1
    assert delta("onnxfleet_worker_inference_duration_seconds_count") == 3
    assert delta("onnxfleet_worker_batch_size_sum") == 12
    assert delta("onnxfleet_worker_request_duration_seconds_count", endpoint="/run_model") == 4
    assert metric(after, "onnxfleet_worker_inference_requests_in_flight") == 0
    assert metric(after, "onnxfleet_worker_inferences_running") == 0
    assert metric(after, "onnxfleet_worker_max_concurrency") == 1
    assert metric(after, "onnxfleet_worker_ready") == 1
    assert metric(after, "onnxfleet_worker_warm_up_seconds") > 0
    info = [line for line in after.splitlines() if line.startswith("onnxfleet_worker_model_info{")]
    assert len(info) == 1
    for part in ('name="digits"', 'version="1"', 'container="digits-0"'):
        assert part in info[0]


def test_metrics_follow_prometheus_naming_and_the_shared_buckets(digits_worker: Service) -> None:
    """``code`` (not ``status``) for the HTTP status, ``_total`` counters, ``_seconds``
    times, ``_info``; every latency histogram on the buckets the orchestrator uses too."""
    url = digits_worker.url
    requests.post(url + "/run_model", json={"inputs": SAMPLES[:1].tolist()}, timeout=10)
    requests.post(url + "/run_model", json={"inputs": [[1, 2]]}, timeout=10)  # a 422 series too
    text = requests.get(url + "/metrics", timeout=5).text
    assert naming_problems(text, "onnxfleet_worker_") == []
    assert 'code="422"' in text
    for name in (
        "onnxfleet_worker_request_duration_seconds",
        "onnxfleet_worker_inference_duration_seconds",
        "onnxfleet_worker_slot_wait_seconds",
    ):
        assert histogram_bounds(text, name) == list(LATENCY_BOUNDS), name


def test_one_json_log_line_per_request(digits_worker: Service) -> None:
    request_id = uuid.uuid4().hex
    response = requests.post(
        digits_worker.url + "/run_model",
        json={"inputs": SAMPLES[:5].tolist()},
        headers={"X-Request-Id": request_id},
        timeout=10,
    )
    assert response.headers["X-Request-Id"] == request_id
    lines = digits_worker.log().splitlines()
    entries = [json.loads(line) for line in lines]  # every line is JSON, gunicorn's too
    mine = [e for e in entries if e.get("request_id") == request_id]
    assert len(mine) == 1
    entry = mine[0]
    assert entry["service"] == "worker"
    assert (entry["method"], entry["path"], entry["status"]) == ("POST", "/run_model", 200)
    assert entry["batch"] == 5
    assert entry["container"] == "digits-0"
    assert entry["model_version"] == "1"
    assert 0 < entry["inference_ms"] <= entry["duration_ms"]
    health = [e for e in entries if e.get("path") == "/readyz"]
    assert health
    assert health[-1]["inference_ms"] is None
