"""A model with several inputs of several datatypes (FP32, INT64, BOOL, BYTES), through
``/run_model`` with named inputs and through OIP v2, including the dtype rules."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import requests

from tests.support import Service

GOOD = {"a": [[0.5, 1.5, 2.5]], "b": [[1, 2, 3]], "flags": [True, False], "tag": ["x", "ünï"]}


def run_model(worker: Service, inputs: object) -> requests.Response:
    return requests.post(worker.url + "/run_model", json={"inputs": inputs}, timeout=10)


def test_identity_without_card(multi_worker: Service, models_dir: Path) -> None:
    """No multi.json next to the model: name from the file stem, version from its sha256."""
    sha = hashlib.sha256((models_dir / "multi.onnx").read_bytes()).hexdigest()
    ready = requests.get(multi_worker.url + "/readyz", timeout=5).json()
    assert (ready["model"], ready["version"], ready["sha256"]) == ("multi", sha[:12], sha)
    metadata = requests.get(multi_worker.url + "/v2/models/multi", timeout=5).json()
    assert metadata["inputs"] == [
        {"name": "a", "datatype": "FP32", "shape": [-1, 3]},
        {"name": "b", "datatype": "INT64", "shape": [-1, 3]},
        {"name": "flags", "datatype": "BOOL", "shape": [-1]},
        {"name": "tag", "datatype": "BYTES", "shape": [-1]},
    ]


def test_run_model_named_inputs(multi_worker: Service) -> None:
    response = run_model(multi_worker, GOOD)
    assert response.status_code == 200, response.text
    assert response.headers["X-Model-Version"] == response.json()["version"]
    assert response.json()["outputs"] == {
        "sum": [[1.5, 3.5, 5.5]],
        "inverted": [False, True],
        "tag_out": ["x", "ünï"],
    }


def test_run_model_list_is_refused_for_several_inputs(multi_worker: Service) -> None:
    response = run_model(multi_worker, [[1, 2, 3]])
    assert response.status_code == 422
    assert "the model has 4 inputs" in response.json()["error"]
    assert [i["name"] for i in response.json()["expected"]["inputs"]] == ["a", "b", "flags", "tag"]


def test_v2_typed_tensors(multi_worker: Service) -> None:
    body = {
        "inputs": [
            {"name": "tag", "shape": [1], "datatype": "BYTES", "data": ["hello"]},
            {"name": "a", "shape": [2, 3], "datatype": "FP32", "data": [1, 2, 3, 4, 5, 6]},
            {"name": "b", "shape": [2, 3], "datatype": "INT64", "data": [[10, 20, 30], [40, 50, 60]]},
            {"name": "flags", "shape": [3], "datatype": "BOOL", "data": [True, True, False]},
        ]
    }
    response = requests.post(multi_worker.url + "/v2/models/multi/infer", json=body, timeout=10)
    assert response.status_code == 200, response.text
    outputs = {o["name"]: o for o in response.json()["outputs"]}
    assert outputs["sum"] == {
        "name": "sum",
        "datatype": "FP32",
        "shape": [2, 3],
        "data": [11, 22, 33, 44, 55, 66],
    }
    assert outputs["inverted"] == {
        "name": "inverted",
        "datatype": "BOOL",
        "shape": [3],
        "data": [False, False, True],
    }
    assert outputs["tag_out"] == {"name": "tag_out", "datatype": "BYTES", "shape": [1], "data": ["hello"]}


def test_v2_missing_input(multi_worker: Service) -> None:
    body = {"inputs": [{"name": "a", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]}
    response = requests.post(multi_worker.url + "/v2/models/multi/infer", json=body, timeout=10)
    assert response.status_code == 422
    assert "missing input(s) ['b', 'flags', 'tag']" in response.json()["error"]


@pytest.mark.parametrize(
    ("name", "value", "words"),
    [
        ("b", [[1.5, 2, 3]], "expects integers, got 1.5"),
        ("b", [[2**63, 2, 3]], "holds integers in [-9223372036854775808, 9223372036854775807]"),
        ("b", [["1", 2, 3]], "expects numbers, got number, string"),
        ("b", [[True, 2, 3]], "boolean"),
        ("flags", [1, 0], "expects booleans"),
        ("tag", [1], "expects strings"),
        ("a", [[1, 2, "x"]], "expects numbers"),
    ],
)
def test_datatype_rules(multi_worker: Service, name: str, value: object, words: str) -> None:
    response = run_model(multi_worker, {**GOOD, name: value})
    assert response.status_code == 422, response.text
    assert words in response.json()["error"]
    assert f"input {name!r}" in response.json()["error"]


def test_integral_floats_are_integers(multi_worker: Service) -> None:
    response = run_model(multi_worker, {**GOOD, "b": [[1.0, -2.0, 3e3]]})
    assert response.status_code == 200, response.text
    assert response.json()["outputs"]["sum"] == [[1.5, -0.5, 3002.5]]


def test_runtime_failure_on_valid_looking_input_is_422(multi_worker: Service) -> None:
    """Each input fits its own signature, but a and b disagree on N: onnxruntime's Add
    fails. That is the input's fault: 422 saying what the model expects, not a 500, and
    not onnxruntime's own words (they go to the log)."""
    a, b = [[0.5, 1.5, 2.5]] * 2, [[1, 2, 3]] * 3  # [2, 3] + [3, 3] does not broadcast
    response = run_model(multi_worker, {**GOOD, "a": a, "b": b})
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["code"] == "inference_failed"
    assert "inputs of shapes {'a': [2, 3], 'b': [3, 3]" in body["error"]
    assert [i["name"] for i in body["expected"]["inputs"]] == ["a", "b", "flags", "tag"]
    assert "broadcast" not in response.text.lower()  # onnxruntime's message stays in the log
    assert "broadcast" in multi_worker.log().lower()
    assert "Traceback" not in json.dumps(body)
    assert run_model(multi_worker, GOOD).status_code == 200
