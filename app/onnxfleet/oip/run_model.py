"""The worker's own format, ``POST /run_model``: ``{"inputs": [[...], ...]}`` (the
model's single input, nested) or ``{"inputs": {"<name>": [...], ...}}``; the answer is
``{"outputs": {"<name>": nested list}, "model", "version", "container"}``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from onnxfleet.oip.errors import InvalidInput
from onnxfleet.oip.jsonio import dumps, loads
from onnxfleet.oip.tensors import Signature, check_finite, from_nested

REQUEST_FORMAT = '{"inputs": [[...], ...]} or, for several inputs, {"inputs": {"<name>": [...], ...}}'


def parse_request(body: bytes, signature: Signature) -> dict[str, np.ndarray]:
    """The model's feeds from a ``/run_model`` body (datatypes from ``signature``)."""
    document = loads(body)
    if type(document) is not dict or "inputs" not in document:
        raise InvalidInput(f"expected a JSON object {REQUEST_FORMAT}")
    inputs = document["inputs"]
    if type(inputs) is dict:
        values = inputs
    elif len(signature.inputs) == 1:
        values = {signature.inputs[0].name: inputs}
    else:
        raise InvalidInput(
            f"the model has {len(signature.inputs)} inputs {list(signature.input_names)}: send "
            '{"inputs": {"<name>": [...], ...}} with each of them'
        )
    signature.check_names(values)
    feeds = {}
    for spec in signature.inputs:
        feeds[spec.name] = array = from_nested(values[spec.name], spec)
        check_finite(array, spec.name)
    return feeds


def encode_response(
    outputs: Mapping[str, np.ndarray], model_name: str, version: str, container: str
) -> bytes:
    document: dict[str, Any] = {"outputs": dict(outputs), "model": model_name, "version": version}
    document["container"] = container
    return dumps(document)
