"""Every class of bad input gets a JSON error with the right status, never a 500 or a
stack trace, and costs the worker nothing (it serves the next request)."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator

import pytest
import requests

from tests.support import Service

ROW = [0.0] * 64
SIGNATURE = {
    "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}],
    "outputs": [
        {"name": "label", "datatype": "INT64", "shape": [-1]},
        {"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]},
    ],
}


def as_json(value: object) -> bytes:
    return json.dumps(value).encode()


def v2(extra: dict | None = None, **tensor: object) -> bytes:
    """A v2 body for the digits model with ``tensor`` fields changed (None: left out)."""
    fields = {"name": "input", "shape": [1, 64], "datatype": "FP32", "data": ROW, **tensor}
    return as_json({"inputs": [{k: v for k, v in fields.items() if v is not None}], **(extra or {})})


RUN, V2 = "/run_model", "/v2/models/digits/infer"
# (case id, path, body, status, words the detail must contain)
BODY_CASES = [
    ("truncated JSON", RUN, b'{"inputs": [[1, 2', 400, "not valid JSON"),
    ("empty body", RUN, b"", 400, "not valid JSON"),
    ("invalid UTF-8", RUN, b'{"inputs": "\xff\xfe"}', 400, "not valid JSON"),
    ("nested too deeply", RUN, b"[" * 100_000, 400, "nested too deeply"),
    ("integer over 4300 digits", RUN, b'{"inputs": [[' + b"9" * 5000 + b"]]}", 400, "digits"),
    ("not an object", RUN, as_json([ROW]), 422, '{"inputs"'),
    ("no inputs key", RUN, as_json({"data": [ROW]}), 422, '{"inputs"'),
    ("unknown input name", RUN, as_json({"inputs": {"pixels": [ROW]}}), 422, "unknown input(s) ['pixels']"),
    ("missing input name", RUN, as_json({"inputs": {}}), 422, "missing input(s) ['input']"),
    ("rank 1 for rank 2", RUN, as_json({"inputs": ROW}), 422, "expects rank 2"),
    ("rank 3 for rank 2", RUN, as_json({"inputs": [[ROW]]}), 422, "expects rank 2"),
    ("scalar for rank 2", RUN, as_json({"inputs": 3}), 422, "expects rank 2"),
    ("wrong fixed dimension", RUN, as_json({"inputs": [ROW[:63]]}), 422, "dimension 1 must be 64"),
    ("ragged rows", RUN, as_json({"inputs": [ROW, ROW[:63]]}), 422, "not a rectangular array"),
    ("row is a number", RUN, as_json({"inputs": [ROW, 5]}), 422, "not a rectangular array"),
    ("nested in a row", RUN, as_json({"inputs": [[*ROW[:63], [1]]]}), 422, "ragged or nested"),
    ("string value", RUN, as_json({"inputs": [[*ROW[:63], "7"]]}), 422, "expects numbers, got"),
    ("boolean value", RUN, as_json({"inputs": [[*ROW[:63], True]]}), 422, "boolean"),
    ("null value", RUN, as_json({"inputs": [[*ROW[:63], None]]}), 422, "null"),
    ("object value", RUN, as_json({"inputs": [[*ROW[:63], {}]]}), 422, "objects"),
    ("beyond FP32", RUN, as_json({"inputs": [[*ROW[:63], 1e39]]}), 422, "FP32 cannot represent"),
    ("integer beyond float", RUN, as_json({"inputs": [[*ROW[:63], 10**400]]}), 422, "too large"),
    ("v2 inputs not a list", V2, as_json({"inputs": {}}), 422, '{"inputs": [{"name"'),
    ("v2 tensor not an object", V2, as_json({"inputs": [1]}), 422, "inputs[0]"),
    ("v2 unknown input", V2, v2(name="pixels"), 422, "unknown input 'pixels'"),
    ("v2 wrong datatype", V2, v2(datatype="INT64"), 422, "is FP32, got datatype INT64"),
    ("v2 unknown datatype", V2, v2(datatype="FLOAT"), 422, "must be one of"),
    ("v2 datatype not a string", V2, v2(datatype=[]), 422, "must be one of"),
    ("v2 shape not a list", V2, v2(shape="1x64"), 422, "non-negative integers"),
    ("v2 negative dimension", V2, v2(shape=[-1, 64]), 422, "non-negative integers"),
    ("v2 wrong fixed dimension", V2, v2(shape=[1, 32]), 422, "dimension 1 must be 64"),
    ("v2 data count", V2, v2(shape=[2, 64]), 422, "needs 128 elements, data has 64"),
    ("v2 no data", V2, v2(data=None), 422, 'no "data"'),
    ("v2 string data", V2, v2(data=["a"] * 64), 422, "expects numbers"),
    ("v2 input twice", V2, as_json({"inputs": [json.loads(v2())["inputs"][0]] * 2}), 422, "given twice"),
    ("v2 unknown output", V2, v2({"outputs": [{"name": "x"}]}), 422, "unknown output(s) ['x']"),
    ("v2 outputs not a list", V2, v2({"outputs": "label"}), 422, '"outputs" must be a list'),
    ("v2 id not a string", V2, v2({"id": 5}), 422, '"id" must be a string'),
]  # fmt: skip


@pytest.fixture
def served_after(digits_worker: Service) -> Iterator[Service]:
    """After the test, the worker still answers a good request and logged no error."""
    yield digits_worker
    response = requests.post(digits_worker.url + "/run_model", json={"inputs": [ROW]}, timeout=10)
    assert response.status_code == 200
    assert '"level":"error"' not in digits_worker.log()
    assert "Traceback" not in digits_worker.log()


def check_error(response: requests.Response, status: int, detail_words: str = "") -> dict:
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"] == "application/json"
    assert response.headers["X-Container"] == "digits-0"
    body = response.json()
    assert isinstance(body["error"], str)
    assert body["error"]
    assert isinstance(body["detail"], str)
    assert detail_words in body["detail"]
    assert "Traceback" not in response.text
    return body


@pytest.mark.parametrize(
    ("path", "body", "status", "words"), [c[1:] for c in BODY_CASES], ids=[c[0] for c in BODY_CASES]
)
def test_bad_body(served_after: Service, path: str, body: bytes, status: int, words: str) -> None:
    response = requests.post(
        served_after.url + path, data=body, headers={"Content-Type": "application/json"}, timeout=10
    )
    answer = check_error(response, status, words)
    if status == 422:
        assert answer["error"] == "invalid input"
        assert answer["expected"] == SIGNATURE  # names, datatypes, shapes (-1: dynamic)
    else:
        assert answer["error"] == "invalid JSON"


@pytest.mark.parametrize(
    "content_type",
    [
        None,
        "text/plain",
        "application/x-www-form-urlencoded",
        "application/octet-stream",
        "multipart/form-data",
    ],
)
@pytest.mark.parametrize("path", ["/run_model", "/v2/models/digits/infer"])
def test_wrong_content_type(served_after: Service, path: str, content_type: str | None) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    response = requests.post(
        served_after.url + path, data=as_json({"inputs": [ROW]}), headers=headers, timeout=10
    )
    body = check_error(response, 415, "Content-Type: application/json")
    assert body["error"] == "unsupported media type"


@pytest.mark.parametrize(
    "content_type", ["application/json; charset=utf-8", "application/vnd.onnxfleet+json"]
)
def test_json_content_types_accepted(served_after: Service, content_type: str) -> None:
    response = requests.post(
        served_after.url + "/run_model",
        data=as_json({"inputs": [ROW]}),
        headers={"Content-Type": content_type},
        timeout=10,
    )
    assert response.status_code == 200


def big_body() -> bytes:
    body = as_json({"inputs": [ROW] * 6000})
    assert len(body) > 1 << 20  # the default --max-body-bytes
    return body


def test_body_too_large(served_after: Service) -> None:
    response = requests.post(
        served_after.url + "/run_model",
        data=big_body(),
        headers={"Content-Type": "application/json"},
        timeout=10,
    )
    body = check_error(response, 413, "larger than 1048576 bytes")
    assert body["error"] == "payload too large"


def test_chunked_body_too_large(served_after: Service) -> None:
    data = big_body()
    chunks = (data[i : i + 65536] for i in range(0, len(data), 65536))  # no Content-Length
    response = requests.post(
        served_after.url + "/run_model", data=chunks, headers={"Content-Type": "application/json"}, timeout=10
    )
    assert response.request.headers.get("Transfer-Encoding") == "chunked"
    check_error(response, 413, "larger than 1048576 bytes")


def test_chunked_body_within_limit(served_after: Service) -> None:
    data = as_json({"inputs": [ROW] * 3})
    response = requests.post(
        served_after.url + "/run_model",
        data=iter([data[:100], data[100:]]),
        headers={"Content-Type": "application/json"},
        timeout=10,
    )
    assert response.status_code == 200
    assert len(response.json()["outputs"]["label"]) == 3


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v2/models/mnist/infer"),
        ("POST", "/v2/models/digits/versions/2/infer"),
        ("GET", "/v2/models/mnist"),
        ("GET", "/v2/models/mnist/ready"),
        ("GET", "/v2/models/digits/versions/2"),
    ],
)
def test_unknown_model(served_after: Service, method: str, path: str) -> None:
    response = requests.request(method, served_after.url + path, json={"inputs": []}, timeout=10)
    body = check_error(response, 404, "this worker serves 'digits' version '1'")
    assert body["error"] == "model not found"


@pytest.mark.parametrize("path", ["/", "/nope", "/run_model/", "/v2/models", "/v2/models/digits/infer/x"])
def test_unknown_path(served_after: Service, path: str) -> None:
    check_error(requests.get(served_after.url + path, timeout=10), 404, "no route")


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/run_model"),
        ("POST", "/healthz"),
        ("POST", "/readyz"),
        ("DELETE", "/metrics"),
        ("PUT", "/v2/models/digits/infer"),
        ("GET", "/v2/models/digits/infer"),
    ],
)
def test_wrong_method(served_after: Service, method: str, path: str) -> None:
    response = requests.request(method, served_after.url + path, timeout=10)
    check_error(response, 405, "is not allowed")
    assert response.headers["Allow"]


def test_nan_and_infinity_are_floats_and_answers_stay_strict_json(served_after: Service) -> None:
    body = b'{"inputs": [[NaN, Infinity, -Infinity' + b", 0" * 61 + b"]]}"
    response = requests.post(
        served_after.url + "/run_model", data=body, headers={"Content-Type": "application/json"}, timeout=10
    )
    assert response.status_code == 200

    def reject(constant: str) -> None:
        raise AssertionError(f"{constant} in the answer")

    json.loads(response.text, parse_constant=reject)


def test_malformed_chunked_body(served_after: Service) -> None:
    head = b"POST /run_model HTTP/1.1\r\nHost: worker\r\nContent-Type: application/json\r\n"
    with socket.create_connection(("127.0.0.1", served_after.port), timeout=10) as sock:
        sock.sendall(head + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n")
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.endswith(b"}"):
            data = sock.recv(4096)
            if not data:
                break
            answer += data
    status_line, _, rest = answer.partition(b"\r\n")
    assert status_line.startswith(b"HTTP/1.1 400 ")
    body = json.loads(rest.partition(b"\r\n\r\n")[2])
    assert body["error"] == "unreadable body"
    assert "InvalidChunkSize" in body["detail"]
