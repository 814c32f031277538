"""Request bodies to model feeds, model outputs to answer bodies, for both protocols:

- ``POST /run_model``: ``{"inputs": [[...], ...]}`` (the model's single input) or
  ``{"inputs": {"name": [...], ...}}``; answers ``{"outputs": {name: nested list}, ...}``.
- ``POST /v2/models/{name}/infer`` (Open Inference Protocol v2): typed tensors
  ``{"name", "shape", "datatype", "data"}`` with data nested or flat, row-major.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from onnxfleet.worker.errors import InputError
from onnxfleet.worker.model import Model
from onnxfleet.worker.tensors import (
    DATATYPES,
    TensorSpec,
    datatype_of,
    flatten,
    nested_shape,
    to_array,
    to_json,
)

RUN_MODEL_FORMAT = '{"inputs": [[...], ...]} or, for several inputs, {"inputs": {"<name>": [...], ...}}'
V2_FORMAT = (
    '{"inputs": [{"name": ..., "shape": [...], "datatype": ..., "data": [...]}], "outputs"?: [{"name": ...}]}'
)


@dataclass
class Inference:
    """What a request asks the model: its feeds, the outputs wanted, the client's id."""

    feeds: dict[str, np.ndarray]
    outputs: list[str] | None = None  # None: all of them
    id: str | None = None

    @property
    def batch(self) -> int:
        """Rows of the first input (1 for a scalar input)."""
        first = next(iter(self.feeds.values()))
        return int(first.shape[0]) if first.ndim else 1


def nested_to_array(value: Any, spec: TensorSpec) -> np.ndarray:
    shape = nested_shape(value)
    spec.check_shape(shape)
    return to_array(flatten(value, shape, spec.name), shape, spec)


def run_model_request(body: Any, model: Model) -> Inference:
    if type(body) is not dict or "inputs" not in body:
        raise InputError(f"expected a JSON object {RUN_MODEL_FORMAT}")
    inputs = body["inputs"]
    if type(inputs) is dict:
        _check_names(set(inputs), model)
        values = inputs
    elif len(model.inputs) == 1:
        values = {model.inputs[0].name: inputs}
    else:
        raise InputError(
            f"the model has {len(model.inputs)} inputs {model.input_names}: send "
            '{"inputs": {"<name>": [...], ...}} with each of them'
        )
    return Inference({spec.name: nested_to_array(values[spec.name], spec) for spec in model.inputs})


def _check_names(given: set[str], model: Model) -> None:
    unknown = sorted(given - set(model.input_names))
    missing = [name for name in model.input_names if name not in given]
    if unknown or missing:
        parts = [
            f"unknown input(s) {unknown}" if unknown else "",
            f"missing input(s) {missing}" if missing else "",
        ]
        raise InputError(f"{'; '.join(p for p in parts if p)}; the model's inputs are {model.input_names}")


def run_model_answer(outputs: dict[str, np.ndarray], model_name: str, version: str, container: str) -> dict:
    return {
        "outputs": {name: to_json(array) for name, array in outputs.items()},
        "model": model_name,
        "version": version,
        "container": container,
    }


def v2_request(body: Any, model: Model) -> Inference:
    if type(body) is not dict or type(body.get("inputs")) is not list:
        raise InputError(f"expected a JSON object {V2_FORMAT}")
    specs = {spec.name: spec for spec in model.inputs}
    feeds: dict[str, np.ndarray] = {}
    for index, tensor in enumerate(body["inputs"]):
        if type(tensor) is not dict or type(tensor.get("name")) is not str:
            raise InputError(f'inputs[{index}] must be an object with a string "name"; {V2_FORMAT}')
        name = tensor["name"]
        if name not in specs:
            raise InputError(f"unknown input {name!r}; the model's inputs are {model.input_names}")
        if name in feeds:
            raise InputError(f"input {name!r} is given twice")
        feeds[name] = _v2_tensor(tensor, specs[name])
    _check_names(set(feeds), model)
    return Inference(feeds, _v2_outputs(body.get("outputs"), model), _v2_id(body.get("id")))


def _v2_tensor(tensor: dict[str, Any], spec: TensorSpec) -> np.ndarray:
    shape, datatype = tensor.get("shape"), tensor.get("datatype")
    if type(shape) is not list or not all(type(d) is int and d >= 0 for d in shape):
        raise InputError(f'input {spec.name!r}: "shape" must be a list of non-negative integers')
    if type(datatype) is not str or datatype not in DATATYPES:
        raise InputError(f'input {spec.name!r}: "datatype" must be one of {sorted(DATATYPES)}')
    if datatype != spec.datatype:
        raise InputError(f"input {spec.name!r} is {spec.datatype}, got datatype {datatype}")
    spec.check_shape(shape)
    if "data" not in tensor:
        raise InputError(f'input {spec.name!r} has no "data" (the binary tensor extension is not supported)')
    data = tensor["data"]
    flat = flatten(data, nested_shape(data), spec.name) if type(data) is list else [data]
    count = math.prod(shape)
    if len(flat) != count:
        raise InputError(f"input {spec.name!r}: shape {shape} needs {count} elements, data has {len(flat)}")
    return to_array(flat, shape, spec)


def _v2_outputs(requested: Any, model: Model) -> list[str] | None:
    if requested is None:
        return None
    if type(requested) is not list or not all(
        type(o) is dict and type(o.get("name")) is str for o in requested
    ):
        raise InputError('"outputs" must be a list of objects {"name": ...}')
    names = [o["name"] for o in requested]
    unknown = sorted(set(names) - set(model.output_names))
    if unknown:
        raise InputError(f"unknown output(s) {unknown}; the model's outputs are {model.output_names}")
    return list(dict.fromkeys(names)) or None


def _v2_id(value: Any) -> str | None:
    if value is not None and type(value) is not str:
        raise InputError('"id" must be a string')
    return value


def v2_answer(
    outputs: dict[str, np.ndarray], inference: Inference, model_name: str, version: str, container: str
) -> dict[str, Any]:
    answer: dict[str, Any] = {"model_name": model_name, "model_version": version}
    if inference.id is not None:
        answer["id"] = inference.id
    answer["parameters"] = {"container": container}
    answer["outputs"] = [
        {
            "name": name,
            "datatype": datatype_of(array),
            "shape": list(array.shape),
            "data": to_json(array.reshape(-1)),
        }
        for name, array in outputs.items()
    ]
    return answer


def v2_metadata(model: Model, model_name: str, version: str) -> dict[str, Any]:
    return {
        "name": model_name,
        "versions": [version],
        "platform": "onnxruntime_onnx",
        **model.signature(),
    }
