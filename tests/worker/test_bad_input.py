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
DEEP = v2(data=[0]).replace(b"[0]", b"[" * 1000 + b"1" + b"]" * 1000)  # 2 KB
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
    ("v2 inputs not a list", V2, as_json({"inputs": {}}), 422, '"inputs": [{"name"'),
    ("v2 tensor not an object", V2, as_json({"inputs": [1]}), 422, "inputs[0]"),
    ("v2 unknown input", V2, v2(name="pixels"), 422, "unknown input 'pixels'"),
    ("v2 wrong datatype", V2, v2(datatype="INT64"), 422, "is FP32, got datatype INT64"),
    ("v2 unknown datatype", V2, v2(datatype="FLOAT"), 422, "must be one of"),
    ("v2 datatype not a string", V2, v2(datatype=[]), 422, "must be one of"),
    ("v2 shape not a list", V2, v2(shape="1x64"), 422, "non-negative integers"),
    ("v2 negative dimension", V2, v2(shape=[-1, 64]), 422, "non-negative integers"),
    ("v2 wrong fixed dimension", V2, v2(shape=[1, 32]), 422, "dimension 1 must be 64"),
    ("v2 data count", V2, v2(shape=[2, 64]), 422, "needs 128 elements, data has 64"),
    ("v2 no data", V2, v2(data=None), 422, 'neither "data" nor'),
    ("v2 string data", V2, v2(data=["a"] * 64), 422, "expects numbers"),
    ("v2 input twice", V2, as_json({"inputs": [json.loads(v2())["inputs"][0]] * 2}), 422, "given twice"),
    ("v2 unknown output", V2, v2({"outputs": [{"name": "x"}]}), 422, "unknown output(s) ['x']"),
    ("v2 outputs not a list", V2, v2({"outputs": "label"}), 422, '"outputs" must be a list'),
    ("v2 id not a string", V2, v2({"id": 5}), 422, '"id" must be a string'),
    # 2 KB within orjson's depth limit: it used to reach Python's recursion limit (500)
    ("v2 data nested 1,000 deep", V2, DEEP, 400, "nested more than 64 levels deep"),
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
    """The envelope: {"error": <message naming what was expected>, "code": <kind>, ...}."""
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"] == "application/json"
    assert response.headers["X-Container"] == "digits-0"
    body = response.json()
    assert isinstance(body["error"], str)
    assert detail_words in body["error"]
    assert isinstance(body["code"], str)
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
        assert answer["code"] == "invalid_input"
        assert answer["expected"] == SIGNATURE  # names, datatypes, shapes (-1: dynamic)
    else:
        assert answer["code"] == "bad_request"


@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "application/x-www-form-urlencoded", "application/octet-stream", "multipart/form-data"],
)
def test_wrong_content_type(served_after: Service, content_type: str) -> None:
    response = requests.post(
        served_after.url + RUN,
        data=as_json({"inputs": [ROW]}),
        headers={"Content-Type": content_type},
        timeout=10,
    )
    answer = check_error(response, 415, f"got Content-Type {content_type}")
    assert answer["error"].startswith("the body must be JSON (Content-Type: application/json)")
    assert answer["code"] == "unsupported_media_type"


@pytest.mark.parametrize(
    ("path", "content_type"),
    [
        (RUN, None),
        (RUN, "application/json; charset=utf-8"),
        (RUN, "application/vnd.onnxfleet+json"),
        # OIP inference ignores Content-Type, as Triton does (tritonclient sends none, curl -d
        # sends a form type, KServe's client octet-stream with binary data)
        (V2, None),
        (V2, "application/json"),
        (V2, "application/octet-stream"),
        (V2, "application/x-www-form-urlencoded"),
        (V2, "text/plain"),
    ],
)
def test_content_types_accepted(served_after: Service, path: str, content_type: str | None) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    body = as_json({"inputs": [ROW]}) if path == RUN else v2()
    response = requests.post(served_after.url + path, data=body, headers=headers, timeout=10)
    assert response.status_code == 200, response.text


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
    assert body["code"] == "payload_too_large"


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
    assert body["code"] == "not_found"


@pytest.mark.parametrize("path", ["/", "/nope", "/run_model/", "/v2/models", "/v2/models/digits/infer/x"])
def test_unknown_path(served_after: Service, path: str) -> None:
    assert (
        check_error(requests.get(served_after.url + path, timeout=10), 404, "no route")["code"] == "not_found"
    )


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
    assert check_error(response, 405, "is not allowed")["code"] == "method_not_allowed"
    assert response.headers["Allow"]


@pytest.mark.parametrize("value", [b"NaN", b"Infinity", b"-Infinity", b"1e400", b"-1e400"])
@pytest.mark.parametrize("path", [RUN, V2])
def test_non_finite_inputs_are_refused(served_after: Service, path: str, value: bytes) -> None:
    """A model answers NaN or Infinity with confident nonsense: 422 naming the tensor."""
    row = b"[" + b"0, " * 5 + value + b", 0" * 58 + b"]"
    body = b'{"inputs": [' + row + b"]}"
    if path == V2:
        body = b'{"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": ' + row + b"}]}"
    response = requests.post(served_after.url + path, data=body, timeout=10)
    answer = check_error(response, 422, "input 'input' has ")
    assert "[0, 5]; only finite numbers are accepted" in answer["error"]
    assert answer["code"] == "invalid_input"


def test_non_finite_outputs_are_written_as_null(served_after: Service) -> None:
    """Answers stay strict JSON (a model may compute NaN from finite inputs)."""
    request = {"inputs": [[3e38] * 64]}  # finite FP32 values
    response = requests.post(served_after.url + RUN, json=request, timeout=10)
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
    assert body["code"] == "bad_request"
    assert "chunked encoding is malformed" in body["error"]
    assert "InvalidChunkSize" not in body["error"]  # no exception names or repr()
