"""Open Inference Protocol v2 inference requests and responses, JSON or with Triton's
binary tensor data extension.

A body with binary data is a JSON header followed by the tensors' bytes, in the order
the tensors appear in the header; the ``Inference-Header-Content-Length`` header gives
the JSON's length. Without that header the whole body is JSON. ``Content-Type`` plays no
part (tritonclient sends none). ``Inference-Header-Content-Length: 0`` is a raw binary
request: the body is the one input of a one-input model, batch 1.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from onnxfleet.oip import binary
from onnxfleet.oip.datatypes import datatype_of
from onnxfleet.oip.errors import CodecError, InvalidInput
from onnxfleet.oip.jsonio import dumps, loads
from onnxfleet.oip.tensors import (
    MAX_DEPTH,
    Signature,
    check_datatype,
    check_finite,
    check_shape_value,
    from_data,
)

HEADER_LENGTH = "Inference-Header-Content-Length"
JSON_TYPE = "application/json"
BINARY_TYPE = "application/octet-stream"
REQUEST_FORMAT = (
    '{"id"?: ..., "inputs": [{"name": ..., "shape": [...], "datatype": ..., "data": [...] '
    '(or "parameters": {"binary_data_size": N})}], "outputs"?: [{"name": ..., '
    '"parameters"?: {"binary_data": true|false}}], "parameters"?: {"binary_data_output": true|false}}'
)


@dataclass(frozen=True)
class RequestedOutput:
    name: str
    binary: bool | None = None  # None: as the request's binary_data_output says


@dataclass
class InferRequest:
    """What an inference request asks: its input tensors (in the request's order), the
    outputs it wants (None: all of them), its id and its request-level parameters."""

    inputs: dict[str, np.ndarray]
    outputs: tuple[RequestedOutput, ...] | None = None
    id: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)

    @property
    def batch(self) -> int:
        """Rows of the first input (1 for a scalar)."""
        first = next(iter(self.inputs.values()))
        return int(first.shape[0]) if first.ndim else 1

    def output_names(self, signature: Signature) -> list[str]:
        if self.outputs is None:
            return list(signature.output_names)
        return [output.name for output in self.outputs]

    def binary(self, name: str) -> bool:
        """Whether output ``name`` goes back as binary data."""
        for output in self.outputs or ():
            if output.name == name and output.binary is not None:
                return output.binary
        return self.parameters.get("binary_data_output") is True


@dataclass
class InferResponse:
    model_name: str
    model_version: str | None
    outputs: dict[str, np.ndarray]
    id: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)


def header_length(value: str | None, body_length: int) -> int | None:
    """``Inference-Header-Content-Length`` as a number (None when absent), or CodecError."""
    if value is None:
        return None
    text = value.strip()
    if not (text.isascii() and text.isdigit() and int(text) <= body_length):
        raise CodecError(
            f"{HEADER_LENGTH} must be the length of the body's JSON header, an integer from 0 to "
            f"the body's length {body_length}; got {value[:40]!r}"
        )
    return int(text)


class _Blobs:
    """The binary part of a body, handed out in order."""

    def __init__(self, body: bytes, start: int) -> None:
        self.body, self.offset = body, start

    def take(self, size: Any, name: str) -> bytes:
        if type(size) is not int or size < 0:
            raise InvalidInput(f'{name!r}: "binary_data_size" must be a non-negative integer')
        end = self.offset + size
        if end > len(self.body):
            raise CodecError(
                f"{name!r} announces {size} bytes of binary data, the body has "
                f"{len(self.body) - self.offset} left after the JSON header and the tensors before it"
            )
        blob = self.body[self.offset : end]
        self.offset = end
        return blob

    def finish(self) -> None:
        if self.offset != len(self.body):
            raise CodecError(
                f"the body has {len(self.body) - self.offset} bytes after the JSON header that no "
                '"binary_data_size" accounts for'
            )


def _parameters(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if type(value) is not dict:
        raise InvalidInput(f'{where}: "parameters" must be an object')
    return value


def _tensor(
    entry: Any, index: int, blobs: _Blobs, kind: str, signature: Signature | None = None
) -> tuple[str, np.ndarray]:
    if type(entry) is not dict or type(entry.get("name")) is not str:
        raise InvalidInput(f'{kind}s[{index}] must be an object with a string "name"; {REQUEST_FORMAT}')
    name = entry["name"]
    shape = check_shape_value(name, entry.get("shape"))
    datatype = check_datatype(name, entry.get("datatype"))
    if signature is not None:
        signature.check_input(name, datatype, shape)
    parameters = _parameters(entry.get("parameters"), f"{kind} {name!r}")
    if "binary_data_size" in parameters:
        if "data" in entry:
            raise InvalidInput(f'{kind} {name!r} has both "data" and "binary_data_size"; send one of them')
        return name, binary.from_bytes(
            blobs.take(parameters["binary_data_size"], name), shape, name, datatype
        )
    if "data" not in entry:
        raise InvalidInput(f'{kind} {name!r} has neither "data" nor "parameters": {{"binary_data_size": N}}')
    return name, from_data(entry["data"], shape, name, datatype)


def parse_request(
    body: bytes, header_length_value: str | None = None, signature: Signature | None = None
) -> InferRequest:
    """The request in ``body``, its binary part located by the
    ``Inference-Header-Content-Length`` header's value. The tensors must fit their own
    shape and datatype and be finite; with ``signature``, they must also be exactly the
    model's inputs (checked before their data is converted). A raw binary request needs
    ``signature``."""
    length = header_length(header_length_value, len(body))
    if length == 0:
        return _raw_request(body, signature)
    header = loads(body if length is None else memoryview(body)[:length], "the JSON header")
    if type(header) is not dict or type(header.get("inputs")) is not list:
        raise InvalidInput(f"expected a JSON object {REQUEST_FORMAT}")
    blobs = _Blobs(body, len(body) if length is None else length)
    inputs: dict[str, np.ndarray] = {}
    for index, entry in enumerate(header["inputs"]):
        name, array = _tensor(entry, index, blobs, "input", signature)
        if name in inputs:
            raise InvalidInput(f"input {name!r} is given twice")
        check_finite(array, name)
        inputs[name] = array
    blobs.finish()
    if signature is not None:
        signature.check_names(inputs)
    if not inputs:
        raise InvalidInput(f'"inputs" is empty; {REQUEST_FORMAT}')
    request_id = header.get("id")
    if request_id is not None and type(request_id) is not str:
        raise InvalidInput('"id" must be a string')
    parameters = _parameters(header.get("parameters"), "the request")
    if type(parameters.get("binary_data_output", False)) is not bool:
        raise InvalidInput('"binary_data_output" must be true or false')
    return InferRequest(inputs, _requested_outputs(header.get("outputs")), request_id, parameters)


def _requested_outputs(value: Any) -> tuple[RequestedOutput, ...] | None:
    if value is None:
        return None
    if type(value) is not list or not all(type(o) is dict and type(o.get("name")) is str for o in value):
        raise InvalidInput('"outputs" must be a list of objects {"name": ..., "parameters"?: {...}}')
    outputs: dict[str, RequestedOutput] = {}
    for entry in value:
        name = entry["name"]
        parameters = _parameters(entry.get("parameters"), f"output {name!r}")
        if "classification" in parameters:
            raise InvalidInput(f"output {name!r}: the classification extension is not supported")
        binary_data = parameters.get("binary_data")
        if binary_data is not None and type(binary_data) is not bool:
            raise InvalidInput(f'output {name!r}: "binary_data" must be true or false')
        outputs.setdefault(name, RequestedOutput(name, binary_data))
    return tuple(outputs.values()) or None


def _raw_request(body: bytes, signature: Signature | None) -> InferRequest:
    if signature is None or len(signature.inputs) != 1:
        raise CodecError(
            f"{HEADER_LENGTH}: 0 (a raw binary request) is only for a model with one input; "
            "send a JSON header with the inputs"
        )
    spec = signature.inputs[0]
    shape = tuple(1 if axis == 0 and dim < 0 else dim for axis, dim in enumerate(spec.shape))
    if any(dim < 0 for dim in shape):
        raise InvalidInput(
            f"a raw binary request needs input {spec.name!r} to have a fixed shape after its batch "
            f"dimension, it has {list(spec.shape)}; send a JSON header with its shape"
        )
    array = binary.from_bytes(body, shape, spec.name, spec.datatype)
    check_finite(array, spec.name)
    return InferRequest({spec.name: array}, None, None, {"binary_data_output": True})


def _write(
    entries: list[dict[str, Any]], blobs: list[bytes], name: str, array: np.ndarray, wire_binary: bool
) -> None:
    entry: dict[str, Any] = {"name": name, "datatype": datatype_of(array), "shape": list(array.shape)}
    if wire_binary:
        blob = binary.to_bytes(array)
        entry["parameters"] = {"binary_data_size": len(blob)}
        blobs.append(blob)
    else:
        entry["data"] = array.reshape(-1)  # jsonio.dumps writes numpy arrays directly
    entries.append(entry)


def _framed(document: dict[str, Any], blobs: list[bytes]) -> tuple[bytes, dict[str, str]]:
    header = dumps(document)
    if not blobs:
        return header, {"Content-Type": JSON_TYPE}
    return b"".join([header, *blobs]), {"Content-Type": BINARY_TYPE, HEADER_LENGTH: str(len(header))}


def encode_response(
    request: InferRequest,
    outputs: Mapping[str, np.ndarray],
    model_name: str,
    model_version: str,
    parameters: Mapping[str, Any] | None = None,
) -> tuple[bytes, dict[str, str]]:
    """The answer to ``request`` (its id echoed, each output JSON or binary as it asked):
    body and the headers that go with it (Content-Type, and
    Inference-Header-Content-Length when any output is binary)."""
    document: dict[str, Any] = {"model_name": model_name, "model_version": model_version}
    if request.id is not None:
        document["id"] = request.id
    if parameters:
        document["parameters"] = dict(parameters)
    entries: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for name, array in outputs.items():
        _write(entries, blobs, name, array, request.binary(name))
    document["outputs"] = entries
    return _framed(document, blobs)


def encode_request(
    inputs: Mapping[str, np.ndarray],
    outputs: Sequence[RequestedOutput] | None = None,
    *,
    binary_data: bool = True,
    binary_output: bool = False,
    request_id: str | None = None,
) -> tuple[bytes, dict[str, str]]:
    """An inference request for ``inputs`` (their data binary or JSON): body and headers."""
    document: dict[str, Any] = {}
    if request_id is not None:
        document["id"] = request_id
    entries: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for name, array in inputs.items():
        _write(entries, blobs, name, array, binary_data)
    document["inputs"] = entries
    if outputs is not None:
        document["outputs"] = [
            {"name": o.name, **({"parameters": {"binary_data": o.binary}} if o.binary is not None else {})}
            for o in outputs
        ]
    if binary_output:
        document["parameters"] = {"binary_data_output": True}
    return _framed(document, blobs)


def decode_response(body: bytes, header_length_value: str | None = None) -> InferResponse:
    """An inference answer (for a client of a worker, e.g. a batching orchestrator).
    JSON nulls in float outputs come back as NaN."""
    length = header_length(header_length_value, len(body))
    header = loads(body if length is None else memoryview(body)[: length or 0], "the JSON header")
    if type(header) is not dict or type(header.get("outputs")) is not list:
        raise CodecError('expected an inference answer {"model_name": ..., "outputs": [...]}')
    blobs = _Blobs(body, len(body) if length is None else length)
    outputs: dict[str, np.ndarray] = {}
    for index, entry in enumerate(header["outputs"]):
        floats = type(entry) is dict and entry.get("datatype") in ("FP16", "FP32", "FP64") and "data" in entry
        tensor = {**entry, "data": _nan_for_null(entry["data"])} if floats else entry
        name, array = _tensor(tensor, index, blobs, "output")
        outputs[name] = array
    blobs.finish()
    return InferResponse(
        str(header.get("model_name")),
        header.get("model_version"),
        outputs,
        header.get("id"),
        _parameters(header.get("parameters"), "the answer"),
    )


def _nan_for_null(data: Any, depth: int = 0) -> Any:
    if type(data) is list:
        if depth >= MAX_DEPTH:
            raise CodecError(f"an output's data is nested more than {MAX_DEPTH} levels deep")
        return [_nan_for_null(item, depth + 1) for item in data]
    return math.nan if data is None else data
