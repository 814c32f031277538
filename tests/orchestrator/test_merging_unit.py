"""merging.py's pure functions at their edges: a part's states and what it keeps, the exact
bytes of a merged call, the limits (inclusive), and the answers that do not split."""

from __future__ import annotations

import json

import numpy as np
import pytest

from onnxfleet import oip
from onnxfleet.orchestrator import merging
from onnxfleet.orchestrator.merging import INFER, RUN_MODEL, Part, merged_request, read, split
from onnxfleet.orchestrator.upstream import Response
from tests.orchestrator.test_batching_unit import ECHO

assert ECHO is not None
SIGNATURE = ECHO.signature


def run_model(rows: list[list[float]]) -> bytes:
    return json.dumps({"inputs": rows}).encode()


def read_part(
    body: bytes, max_rows: int = 8, max_bytes: int = 1 << 20, request_id: bytes | None = None
) -> Part:
    assert ECHO is not None
    part = Part(RUN_MODEL, len(body), ECHO, request_id=request_id)
    read(part, body, SIGNATURE, max_rows, max_bytes)
    return part


def test_a_new_part_is_unread_and_holds_nothing() -> None:
    assert ECHO is not None
    part = Part(INFER, 10, ECHO)
    assert (part.state, part.read, part.mergeable) == (merging._UNREAD, False, False)
    assert (part.rows, part.nbytes, part.key, part.inputs, part.request) == (0, 0, (), {}, None)


def test_a_part_sent_alone_drops_what_was_read_of_it() -> None:
    body, headers = oip.encode_request({"x": np.ones((2, 3), np.float32)})
    assert ECHO is not None
    part = Part(INFER, len(body), ECHO, header=headers[oip.HEADER_LENGTH].encode())
    read(part, body, SIGNATURE, 8, 1 << 20)
    assert part.mergeable
    assert part.request is not None
    assert set(part.inputs) == {"x"}
    part.alone()
    assert (part.state, part.read, part.mergeable) == (merging._ALONE, True, False)
    assert part.inputs == {}
    assert part.request is None
    assert part.rows == 2  # (counted as the rows it sends alone)


def test_a_part_the_checks_refuse_is_alone_and_keeps_no_arrays() -> None:
    refused = read_part(b"{not json")
    assert refused.state == merging._ALONE
    too_many = read_part(run_model([[1.0]] * 3), max_rows=2)
    assert too_many.state == merging._ALONE
    assert (too_many.rows, too_many.inputs, too_many.request) == (3, {}, None)


def test_the_row_and_byte_limits_are_inclusive() -> None:
    body = run_model([[1.0, 2.0]] * 4)  # 4 rows of 2 float32: 32 bytes
    assert read_part(body, max_rows=4).mergeable
    assert not read_part(body, max_rows=3).mergeable
    assert read_part(body, max_bytes=32).mergeable
    assert not read_part(body, max_bytes=31).mergeable


@pytest.mark.parametrize(
    ("content_type", "json_type"),
    [
        (None, True),
        (b"", True),
        (b"Application/JSON", True),
        (b"application/json; charset=utf-8; x=1", True),
        (b"application/problem+json", True),
        (b"text/plain; x=application/json", False),
        (b"application/jsonx", False),
    ],
)
def test_what_run_model_takes_as_json(content_type: bytes | None, json_type: bool) -> None:
    assert merging._json_type(content_type) is json_type


def test_the_wire_size_of_bytes_tensors_counts_each_elements_length_prefix() -> None:
    strings = np.array([b"ab", "cde"], dtype=object)
    assert merging._wire_size(strings) == (4 + 2) + (4 + 3)
    assert merging._wire_size(np.zeros((2, 3), np.float32)) == 24


def merged(parts: list[Part], model: str = "echo") -> tuple[bytes, bytes]:
    data = merged_request(model, SIGNATURE, parts)
    head, _, body = data.partition(b"\r\n\r\n")
    return head + b"\r\n", body


def test_the_merged_call_is_binary_in_and_out_with_exact_framing() -> None:
    parts = [read_part(run_model([[1.0, 2.0]]), request_id=b"a"), read_part(run_model([[3.0, 4.0]] * 2))]
    head, body = merged(parts, "e/cho")
    length = next(
        line for line in head.split(b"\r\n") if line.startswith(b"Inference-Header-Content-Length: ")
    )
    assert head == (
        b"POST /v2/models/e%2Fcho/infer HTTP/1.1\r\nHost: onnxfleet\r\n"
        b"Content-Type: application/octet-stream\r\n" + length + b"\r\n"
        b"X-Request-Id: a\r\nContent-Length: %d\r\n" % len(body)
    )
    size = int(length.split(b": ")[1])
    header = json.loads(body[:size])
    assert header["inputs"] == [
        {"name": "x", "shape": [3, 2], "datatype": "FP32", "parameters": {"binary_data_size": 24}}
    ]
    assert header["parameters"] == {"binary_data_output": True}
    assert np.frombuffer(body[size:], np.float32).tolist() == [1.0, 2.0, 3.0, 4.0, 3.0, 4.0]


def test_the_merged_call_lists_ids_only_when_there_are_some_and_the_list_is_short() -> None:
    def ids(*request_ids: bytes | None) -> list[bytes]:
        head, _ = merged([read_part(run_model([[1.0]]), request_id=i) for i in request_ids])
        return [line for line in head.split(b"\r\n") if line.startswith(b"X-Request-Id")]

    assert ids(None, None) == []
    assert ids(b"a", None, b"b") == [b"X-Request-Id: a,b"]
    assert ids(b"a" * 2048, b"b" * 2047) == [b"X-Request-Id: " + b"a" * 2048 + b"," + b"b" * 2047]  # 4096
    assert ids(b"a" * 2048, b"b" * 2048) == []  # 4097


def answer(
    rows: int, *, version: str | None = "7", container: str | None = "c", headers: list | None = None
) -> Response:
    parameters = {"container": container} if container is not None else {}
    document: dict = {
        "model_name": "echo",
        "outputs": [
            {"name": "y", "shape": [rows, 1], "datatype": "FP32", "data": [float(i) for i in range(rows)]},
            {"name": "n", "shape": [rows], "datatype": "INT64", "data": [1] * rows},
        ],
        "parameters": parameters,
    }
    if version is not None:
        document["model_version"] = version
    return Response(200, headers or [], json.dumps(document).encode(), True)


def two_parts() -> list[Part]:
    return [read_part(run_model([[1.0]])), read_part(run_model([[2.0]]))]


@pytest.mark.parametrize(("version", "container"), [(None, "c"), ("7", None)])
def test_an_answer_without_its_version_or_container_does_not_split(
    version: str | None, container: str | None
) -> None:
    assert (
        split(answer(2, version=version, container=container), two_parts(), [True, True], SIGNATURE) is None
    )
    assert split(answer(2), two_parts(), [True, True], SIGNATURE) is not None


def test_a_member_whose_client_left_gets_no_answer() -> None:
    answers = split(answer(2), two_parts(), [True, False], SIGNATURE)
    assert answers is not None
    assert answers[1] is None
    first = answers[0]
    assert first is not None
    assert first.keep_alive is True
    assert json.loads(first.body)["outputs"]["y"] == [[0.0]]
    with pytest.raises(ValueError, match="zip"):
        split(answer(2), two_parts(), [True], SIGNATURE)


def test_the_content_headers_go_where_the_container_wrote_them_or_first() -> None:
    kept = [(b"X-Model-Version", b"7"), (b"X-A", b"1")]
    without = split(answer(2, headers=kept), two_parts(), [True, True], SIGNATURE)
    assert without is not None
    assert without[0] is not None
    assert [k for k, _ in without[0].headers] == [b"Content-Type", b"X-Model-Version", b"X-A"]
    placed = [(b"X-Model-Version", b"7"), (b"content-type", b"application/json"), (b"X-A", b"1")]
    within = split(answer(2, headers=placed), two_parts(), [True, True], SIGNATURE)
    assert within is not None
    assert within[0] is not None
    assert [k for k, _ in within[0].headers] == [b"X-Model-Version", b"Content-Type", b"X-A"]
