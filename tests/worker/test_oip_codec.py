"""The OIP codec (``onnxfleet.oip``) on its own: round trips through our encoder and
parser (hypothesis, every datatype, JSON and binary), and against tritonclient's own
request builder, response reader and BYTES (de)serialisers."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import tritonclient.http as triton
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from tritonclient.http._utils import _get_inference_request
from tritonclient.utils import deserialize_bytes_tensor, serialize_byte_tensor

from onnxfleet import oip
from onnxfleet.oip import binary
from onnxfleet.oip.infer import RequestedOutput

NUMERIC = ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64"]
FLOATS = ["FP16", "FP32", "FP64"]
shapes = hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4)
texts = st.text(max_size=6)


@st.composite
def tensors(draw: st.DrawFn, finite: bool = True) -> np.ndarray:
    datatype = draw(st.sampled_from([*NUMERIC, *FLOATS, "BYTES"]))
    shape = draw(shapes)
    if datatype == "BYTES":
        return draw(hnp.arrays(object, shape, elements=texts))
    elements = None
    if datatype in FLOATS:
        elements = st.floats(allow_nan=not finite, allow_infinity=not finite, width=int(datatype[2:]))
    return draw(hnp.arrays(oip.DTYPES[datatype], shape, elements=elements))


named = st.dictionaries(st.text(min_size=1, max_size=5), tensors(), min_size=1, max_size=4)


def same(a: np.ndarray, b: np.ndarray) -> None:
    assert a.shape == b.shape
    assert oip.datatype_of(a) == oip.datatype_of(b)
    if a.dtype.kind == "O":
        as_text = np.vectorize(lambda v: v.decode() if isinstance(v, bytes) else v, otypes=[object])
        assert (as_text(a) == as_text(b)).all() if a.size else True
    else:
        np.testing.assert_array_equal(a, b)


def as_sent(array: np.ndarray, binary_data: bool) -> np.ndarray:
    """What a reader gets back: JSON carries NaN and ±Infinity as null, read as NaN."""
    if array.dtype.kind == "f" and not binary_data:
        return np.where(np.isfinite(array), array, np.nan).astype(array.dtype)
    return array


@settings(max_examples=300, deadline=None)
@given(named, st.booleans(), st.one_of(st.none(), texts))
def test_request_round_trip(inputs: dict[str, np.ndarray], binary_data: bool, request_id: str | None) -> None:
    body, headers = oip.encode_request(inputs, binary_data=binary_data, request_id=request_id)
    parsed = oip.parse_request(body, headers.get(oip.HEADER_LENGTH))
    assert list(parsed.inputs) == list(inputs)
    for name, array in inputs.items():
        same(parsed.inputs[name], array)
    assert parsed.id == request_id
    if binary_data and any(a.size or a.dtype.kind == "O" for a in inputs.values()):
        assert headers["Content-Type"] == oip.BINARY_TYPE


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(st.text(min_size=1, max_size=5), tensors(finite=False), min_size=1, max_size=4),
    st.data(),
)
def test_response_round_trip(outputs: dict[str, np.ndarray], data: st.DataObject) -> None:
    wanted = tuple(RequestedOutput(name, data.draw(st.none() | st.booleans())) for name in outputs)
    request = oip.InferRequest(
        {"x": np.zeros(1)}, wanted, "id-1", {"binary_data_output": data.draw(st.booleans())}
    )
    body, headers = oip.encode_response(request, outputs, "m", "7", {"container": "c"})
    answer = oip.decode_response(body, headers.get(oip.HEADER_LENGTH))
    assert (answer.model_name, answer.model_version, answer.id) == ("m", "7", "id-1")
    assert answer.parameters == {"container": "c"}
    assert list(answer.outputs) == list(outputs)
    for name, array in outputs.items():
        same(answer.outputs[name], as_sent(array, request.binary(name)))
        entry = next(o for o in json.loads(_header(body, headers))["outputs"] if o["name"] == name)
        assert ("binary_data_size" in entry.get("parameters", {})) == request.binary(name)


def _header(body: bytes, headers: dict[str, str]) -> bytes:
    length = headers.get(oip.HEADER_LENGTH)
    return body if length is None else body[: int(length)]


# --- against tritonclient ------------------------------------------------------------
@settings(max_examples=200, deadline=None)
@given(named, st.booleans())
def test_parses_what_tritonclient_sends(inputs: dict[str, np.ndarray], binary_data: bool) -> None:
    triton_inputs = []
    for name, array in inputs.items():
        tensor = triton.InferInput(name, list(array.shape), oip.datatype_of(array))
        tensor.set_data_from_numpy(array, binary_data=binary_data)
        triton_inputs.append(tensor)
    outputs = [triton.InferRequestedOutput("y", binary_data=False)]
    body, json_size = _get_inference_request(triton_inputs, "r-9", outputs, 0, False, False, 0, None, None)
    parsed = oip.parse_request(body, None if json_size is None else str(json_size))
    for name, array in inputs.items():
        same(parsed.inputs[name], array)
    assert parsed.id == "r-9"
    assert parsed.outputs == (RequestedOutput("y", False),)
    assert not parsed.binary("y")


def test_tritonclient_default_asks_binary_outputs() -> None:
    tensor = triton.InferInput("x", [2], "FP32")
    tensor.set_data_from_numpy(np.array([1, 2], np.float32))
    body, json_size = _get_inference_request([tensor], "", None, 0, False, False, 0, None, None)
    parsed = oip.parse_request(body, str(json_size))
    assert parsed.outputs is None
    assert parsed.binary("anything")


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(st.text(min_size=1, max_size=5), tensors(finite=False), min_size=1, max_size=4),
    st.booleans(),
)
def test_tritonclient_reads_our_answers(outputs: dict[str, np.ndarray], binary_output: bool) -> None:
    request = oip.InferRequest({"x": np.zeros(1)}, None, None, {"binary_data_output": binary_output})
    body, headers = oip.encode_response(request, outputs, "m", "1")
    length = headers.get(oip.HEADER_LENGTH)
    result = triton.InferResult.from_response_body(
        body, header_length=None if length is None else int(length)
    )
    for name, array in outputs.items():
        same(result.as_numpy(name), as_sent(array, binary_output))


@given(hnp.arrays(object, shapes, elements=st.binary(max_size=10)))
def test_bytes_layout_is_tritons(array: np.ndarray) -> None:
    ours = binary.to_bytes(array)
    theirs = serialize_byte_tensor(array)
    assert ours == (theirs.item() if theirs.size else b"")
    back = binary.from_bytes(ours, array.shape, "s", "BYTES")
    assert back.shape == array.shape
    assert list(back.reshape(-1)) == list(deserialize_bytes_tensor(ours)) == list(array.reshape(-1))


# --- refusals -------------------------------------------------------------------------
def binary_body(header: dict, *blobs: bytes) -> tuple[bytes, str]:
    text = json.dumps(header).encode()
    return text + b"".join(blobs), str(len(text))


def fp32_input(size: int, shape: list[int] | None = None) -> dict:
    return {"name": "x", "shape": shape or [2], "datatype": "FP32", "parameters": {"binary_data_size": size}}


TWO_FLOATS = struct.pack("<2f", 1.0, 2.0)


@pytest.mark.parametrize(
    ("body", "length", "error", "words"),
    [
        (*binary_body({"inputs": [fp32_input(8)]}, TWO_FLOATS + b"xx"), oip.CodecError, "2 bytes after"),
        (*binary_body({"inputs": [fp32_input(12)]}, TWO_FLOATS), oip.CodecError, "announces 12 bytes"),
        (*binary_body({"inputs": [fp32_input(4, [2])]}, TWO_FLOATS[:4]), oip.InvalidInput, "needs 8 bytes"),
        (*binary_body({"inputs": [fp32_input(-1)]}), oip.InvalidInput, "non-negative integer"),
        (
            *binary_body({"inputs": [{**fp32_input(8), "data": [1, 2]}]}, TWO_FLOATS),
            oip.InvalidInput,
            'both "data" and "binary_data_size"',
        ),
        (
            *binary_body({"inputs": [{**fp32_input(2), "datatype": "BOOL"}]}, b"\x01\x02"),
            oip.InvalidInput,
            "other than 0 or 1",
        ),
        (
            *binary_body({"inputs": [{**fp32_input(6), "datatype": "BYTES"}]}, b"\x05\x00\x00\x00ab"),
            oip.InvalidInput,
            "announces 5 bytes",
        ),
        (
            *binary_body({"inputs": [{**fp32_input(3), "datatype": "BYTES", "shape": [1]}]}, b"\x01\x00\x00"),
            oip.InvalidInput,
            "ends at element 0",
        ),
        (
            *binary_body({"inputs": [fp32_input(8)]}, struct.pack("<2f", 1.0, float("nan"))),
            oip.InvalidInput,
            "only finite numbers",
        ),
        (b'{"inputs": []}', "x1", oip.CodecError, "must be the length"),
        (b'{"inputs": []}', "99", oip.CodecError, "must be the length"),
        (b'{"inputs": []}', "²", oip.CodecError, "must be the length"),
        (b'{"inputs": [', None, oip.CodecError, "not valid JSON"),
        (b'{"inputs": []}', None, oip.InvalidInput, '"inputs" is empty'),
        (
            b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [Infinity]}]}',
            None,
            oip.InvalidInput,
            "'x' has inf",
        ),
        (
            b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP64", "data": [1e400]}]}',
            None,
            oip.InvalidInput,
            "only finite numbers",
        ),
        (
            b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}], '
            b'"outputs": [{"name": "y", "parameters": {"classification": 3}}]}',
            None,
            oip.InvalidInput,
            "classification",
        ),
        (
            b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}], '
            b'"parameters": {"binary_data_output": 1}}',
            None,
            oip.InvalidInput,
            "binary_data_output",
        ),
    ],
)
def test_refusals(body: bytes, length: str | None, error: type[Exception], words: str) -> None:
    with pytest.raises(error) as caught:
        oip.parse_request(body, length)
    assert type(caught.value) is error
    assert words in str(caught.value)


SINGLE = oip.Signature((oip.TensorSpec("x", "FP32", (-1, 2)),), (oip.TensorSpec("y", "FP32", (-1,)),))


def test_raw_binary_request_is_batch_one_of_the_only_input() -> None:
    parsed = oip.parse_request(TWO_FLOATS, "0", SINGLE)
    np.testing.assert_array_equal(parsed.inputs["x"], [[1.0, 2.0]])
    assert parsed.binary("y")
    with pytest.raises(oip.InvalidInput, match="needs 8 bytes"):
        oip.parse_request(TWO_FLOATS + TWO_FLOATS, "0", SINGLE)
    with pytest.raises(oip.CodecError, match="only for a model with one input"):
        oip.parse_request(TWO_FLOATS, "0")


def test_signature_checks() -> None:
    SINGLE.check_inputs({"x": np.zeros((3, 2), np.float32)})
    with pytest.raises(oip.InvalidInput, match="is FP32, got datatype FP64"):
        SINGLE.check_inputs({"x": np.zeros((3, 2))})
    with pytest.raises(oip.InvalidInput, match="dimension 1 must be 2"):
        SINGLE.check_inputs({"x": np.zeros((3, 3), np.float32)})
    with pytest.raises(oip.InvalidInput, match=r"unknown input\(s\) \['z'\]; missing input\(s\) \['x'\]"):
        SINGLE.check_inputs({"z": np.zeros((3, 2), np.float32)})
    with pytest.raises(oip.InvalidInput, match=r"unknown output\(s\) \['q'\]"):
        SINGLE.check_outputs(["y", "q"])
    assert oip.Signature.from_metadata(SINGLE.describe()) == SINGLE


def test_run_model_format() -> None:
    feeds = oip.run_model.parse_request(b'{"inputs": [[1, 2], [3, 4]]}', SINGLE)
    np.testing.assert_array_equal(feeds["x"], np.array([[1, 2], [3, 4]], np.float32))
    with pytest.raises(oip.InvalidInput, match="only finite numbers"):
        oip.run_model.parse_request(b'{"inputs": [[1, NaN]]}', SINGLE)
    with pytest.raises(oip.InvalidInput, match="only finite numbers"):
        oip.run_model.parse_request(b'{"inputs": [[1, -1e999]]}', SINGLE)
    answer = oip.run_model.encode_response({"y": np.array([0.5, np.nan], np.float32)}, "m", "1", "c")
    assert json.loads(answer) == {
        "outputs": {"y": [0.5, None]},
        "model": "m",
        "version": "1",
        "container": "c",
    }


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.integers(0, 4), min_size=1, max_size=4),
    st.sampled_from(["FP16", "FP32", "FP64", "INT64", "BOOL", "BYTES"]),
    st.data(),
)
def test_an_answer_split_from_a_merged_batch_is_byte_identical(
    rows: list[int], datatype: str, data: st.DataObject
) -> None:
    """What a batching orchestrator does: merge requests along the first dimension, get
    one binary answer from a worker, decode it, split it into each client's rows and
    encode each client's answer as the client asked. The bytes equal what the worker
    would have answered each request alone."""
    elements = st.floats(width=int(datatype[2:])) if datatype.startswith("FP") else None
    dtype = oip.DTYPES[datatype]
    shapes_ = [(n, 3) for n in rows]
    if datatype == "BYTES":
        outputs = [data.draw(hnp.arrays(object, shape, elements=texts)) for shape in shapes_]
    else:
        outputs = [data.draw(hnp.arrays(dtype, shape, elements=elements)) for shape in shapes_]
    merged = oip.InferRequest({"x": np.zeros(1)}, None, None, {"binary_data_output": True})
    body, headers = oip.encode_response(merged, {"y": np.concatenate(outputs)}, "m", "1", {"container": "c"})
    answer = oip.decode_response(body, headers[oip.HEADER_LENGTH])
    start = 0
    for index, alone in enumerate(outputs):
        request = oip.InferRequest(
            {"x": np.zeros(1)}, (RequestedOutput("y", data.draw(st.booleans())),), f"r{index}"
        )
        part = answer.outputs["y"][start : start + len(alone)]
        start += len(alone)
        assert oip.encode_response(request, {"y": part}, "m", "1", answer.parameters) == oip.encode_response(
            request, {"y": alone}, "m", "1", {"container": "c"}
        )
