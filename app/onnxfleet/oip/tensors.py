"""Typed tensors: JSON values in, checked numpy arrays out, and back; a model's signature.

Conversion is exact or refused: a value the datatype cannot hold, a ragged array, a
string among numbers, a NaN or an Infinity gets ``InvalidInput`` naming the tensor and
what was expected. Dynamic dimensions are ``-1``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from onnxfleet.oip.datatypes import DATATYPES, DTYPES, datatype_of
from onnxfleet.oip.errors import CodecError, InvalidInput

# JSON's names for what a JSON parser produces, for error messages.
_JSON_NAMES = {
    str: "string",
    bool: "boolean",
    type(None): "null",
    dict: "object",
    list: "array",
    int: "number",
    float: "number",
}
# how deeply a tensor's JSON array may nest: numpy's own limit on dimensions. Checked before
# walking it, so that no body reaches Python's recursion limit (a 2 KB body nests 1,000 deep).
MAX_DEPTH = 64


@dataclass(frozen=True)
class TensorSpec:
    """One input or output of a model: name, OIP datatype, shape (-1 = dynamic)."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    @property
    def dtype(self) -> np.dtype:
        return DTYPES[self.datatype]

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}

    def check_shape(self, shape: Sequence[int]) -> None:
        """InvalidInput unless ``shape`` has this spec's rank and fixed dimensions."""
        if len(shape) != len(self.shape):
            raise InvalidInput(
                f"input {self.name!r} expects rank {len(self.shape)} (shape {list(self.shape)}), "
                f"got shape {list(shape)}"
            )
        for axis, (want, got) in enumerate(zip(self.shape, shape, strict=True)):
            if want >= 0 and want != got:
                raise InvalidInput(
                    f"input {self.name!r} dimension {axis} must be {want} (shape {list(self.shape)}), "
                    f"got shape {list(shape)}"
                )


@dataclass(frozen=True)
class Signature:
    """A model's inputs and outputs; ``batch``: the first dimension of every input and
    output is a batch of independent rows (the model card says so), so requests may be
    merged along it and split back."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    batch: bool = False
    input_names: tuple[str, ...] = field(init=False, repr=False, compare=False)
    output_names: tuple[str, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "input_names", tuple(s.name for s in self.inputs))
        object.__setattr__(self, "output_names", tuple(s.name for s in self.outputs))

    def describe(self) -> dict[str, Any]:
        """``{"inputs": [{"name", "datatype", "shape"}], "outputs": [...]}``, as in OIP metadata."""
        return {
            "inputs": [spec.describe() for spec in self.inputs],
            "outputs": [spec.describe() for spec in self.outputs],
        }

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any], batch: bool = False) -> Signature:
        """From an OIP model metadata answer (``GET /v2/models/{name}``)."""

        def specs(key: str) -> tuple[TensorSpec, ...]:
            return tuple(
                TensorSpec(str(t["name"]), str(t["datatype"]), tuple(int(d) for d in t["shape"]))
                for t in metadata[key]
            )

        return cls(specs("inputs"), specs("outputs"), batch)

    def check_names(self, given: Iterable[str]) -> None:
        """InvalidInput unless ``given`` are exactly this model's input names."""
        given = set(given)
        unknown = sorted(given - set(self.input_names))
        missing = [name for name in self.input_names if name not in given]
        if unknown or missing:
            parts = [
                f"unknown input(s) {unknown}" if unknown else "",
                f"missing input(s) {missing}" if missing else "",
            ]
            raise InvalidInput(
                f"{'; '.join(p for p in parts if p)}; the model's inputs are {list(self.input_names)}"
            )

    def check_inputs(self, inputs: Mapping[str, np.ndarray]) -> None:
        """InvalidInput unless ``inputs`` are exactly this model's, each of its datatype
        and a shape it accepts."""
        self.check_names(inputs)
        for name, array in inputs.items():
            self.check_input(name, datatype_of(array), array.shape)

    def check_input(self, name: str, datatype: str, shape: Sequence[int]) -> None:
        """InvalidInput unless the model has an input ``name`` of ``datatype`` and ``shape``."""
        spec = next((s for s in self.inputs if s.name == name), None)
        if spec is None:
            raise InvalidInput(f"unknown input {name!r}; the model's inputs are {list(self.input_names)}")
        if datatype != spec.datatype:
            raise InvalidInput(f"input {name!r} is {spec.datatype}, got datatype {datatype}")
        spec.check_shape(shape)

    def check_outputs(self, names: Sequence[str]) -> None:
        unknown = sorted(set(names) - set(self.output_names))
        if unknown:
            raise InvalidInput(
                f"unknown output(s) {unknown}; the model's outputs are {list(self.output_names)}"
            )


def check_datatype(name: str, datatype: Any) -> str:
    if type(datatype) is not str or datatype not in DTYPES:
        raise InvalidInput(f'input {name!r}: "datatype" must be one of {list(DATATYPES)}')
    return datatype


def check_shape_value(name: str, shape: Any) -> tuple[int, ...]:
    if type(shape) is not list or not all(type(d) is int and d >= 0 for d in shape):
        raise InvalidInput(f'input {name!r}: "shape" must be a list of non-negative integers')
    return tuple(shape)


def nested_shape(value: Any) -> tuple[int, ...]:
    """The shape a nested list claims through its first elements (checked by ``flatten``)."""
    shape: list[int] = []
    while type(value) is list and len(shape) <= MAX_DEPTH:  # (deeper: flatten refuses it)
        shape.append(len(value))
        if not value:
            break
        value = value[0]
    return tuple(shape)


def flatten(value: Any, shape: Sequence[int], name: str) -> list[Any]:
    """The leaves of the nested list ``value`` in row-major order, checking that every
    level has the length ``shape`` says (the leaves' types are checked by ``to_array``)."""
    if not shape:
        return [value]
    if len(shape) > MAX_DEPTH:
        raise CodecError(
            f"input {name!r}: its data is nested more than {MAX_DEPTH} levels deep (arrays in "
            f"arrays); at most {MAX_DEPTH} are accepted"
        )
    out: list[Any] = []
    _collect(value, shape, 0, (), name=name, out=out)
    return out


def _collect(
    node: Any, shape: Sequence[int], depth: int, path: tuple[int, ...], *, name: str, out: list[Any]
) -> None:
    if type(node) is not list or len(node) != shape[depth]:
        where = "".join(f"[{i}]" for i in path)
        found = f"{len(node)} items" if type(node) is list else f"a {_JSON_NAMES.get(type(node), 'value')}"
        raise InvalidInput(
            f"input {name!r} is not a rectangular array: {name}{where} has {found}, "
            f"expected an array of {shape[depth]} items (shape {list(shape)} from the first elements)"
        )
    if depth == len(shape) - 1:
        out.extend(node)
        return
    for index, child in enumerate(node):
        _collect(child, shape, depth + 1, (*path, index), name=name, out=out)


def from_nested(value: Any, spec: TensorSpec) -> np.ndarray:
    """A nested JSON array (its shape from its nesting) as a ``spec`` tensor."""
    shape = nested_shape(value)
    spec.check_shape(shape)
    return to_array(flatten(value, shape, spec.name), shape, spec.name, spec.datatype)


def from_data(data: Any, shape: Sequence[int], name: str, datatype: str) -> np.ndarray:
    """OIP ``data`` (flat row-major, nested, or a scalar) as a tensor of ``shape``."""
    flat = flatten(data, nested_shape(data), name) if type(data) is list else [data]
    count = math.prod(shape)
    if len(flat) != count:
        raise InvalidInput(
            f"input {name!r}: shape {list(shape)} needs {count} elements, data has {len(flat)}"
        )
    return to_array(flat, shape, name, datatype)


def to_array(flat: list[Any], shape: Sequence[int], name: str, datatype: str) -> np.ndarray:
    """A ``datatype`` array of ``shape`` from JSON leaves, or InvalidInput naming the first
    reason the values cannot be represented exactly in that datatype."""
    dtype = DTYPES[datatype]
    if not flat:
        return np.empty(shape, dtype=dtype)
    types = set(map(type, flat))
    if list in types or dict in types:
        raise InvalidInput(
            f"input {name!r} has arrays or objects where {datatype} values were expected "
            "(ragged or nested deeper than the shape)"
        )
    if dtype.kind == "O":
        _require(types <= {str}, name, datatype, "strings", types)
        return np.array(flat, dtype=object).reshape(shape)
    if dtype.kind == "b":
        _require(types <= {bool}, name, datatype, "booleans (true/false)", types)
        return np.array(flat, dtype=dtype).reshape(shape)
    _require(types <= {int, float}, name, datatype, "numbers", types)
    if dtype.kind == "f":
        return _floats(flat, dtype, name, datatype).reshape(shape)
    return _integers(flat, dtype, types, name, datatype).reshape(shape)


def _require(ok: bool, name: str, datatype: str, what: str, types: set[type]) -> None:
    if not ok:
        got = sorted({_JSON_NAMES.get(t, t.__name__) for t in types})
        raise InvalidInput(f"input {name!r} ({datatype}) expects {what}, got {', '.join(got)}")


def check_finite(array: np.ndarray, name: str) -> None:
    """NaN and ±Infinity (in JSON also a number such as 1e400, which overflows to
    Infinity) are refused in inputs: a model would answer them with confident nonsense.
    (Outputs may hold them; JSON answers write them as null.)"""
    if array.dtype.kind == "f" and not bool(np.isfinite(array).all()):
        index = np.unravel_index(int(np.argmin(np.isfinite(array))), array.shape)
        raise InvalidInput(
            f"input {name!r} has {array[index]} at {list(map(int, index))}; "
            "only finite numbers are accepted (no NaN, Infinity or values beyond the float range)"
        )


def _floats(flat: list[Any], dtype: np.dtype, name: str, datatype: str) -> np.ndarray:
    try:
        wide = np.array(flat, dtype=np.float64)
    except OverflowError:
        raise InvalidInput(f"input {name!r} ({datatype}) has an integer too large for a float") from None
    if dtype == np.float64:
        return wide
    # Judged after the cast: a decimal that rounds to the type's largest value (as JSON
    # writes FP32's max) is fine, one that rounds to infinity is not.
    with np.errstate(over="ignore"):
        narrow = wide.astype(dtype)
    if not np.isfinite(narrow[np.isfinite(wide)]).all():
        limit = float(np.finfo(dtype).max)
        raise InvalidInput(
            f"input {name!r} ({datatype}) has a value beyond ±{limit:.6g}, which {datatype} cannot represent"
        )
    return narrow


def _integers(flat: list[Any], dtype: np.dtype, types: set[type], name: str, datatype: str) -> np.ndarray:
    if float in types:
        for value in flat:
            if type(value) is float and not value.is_integer():
                raise InvalidInput(f"input {name!r} ({datatype}) expects integers, got {value!r}")
        flat = [int(value) for value in flat]
    info = np.iinfo(dtype)
    low, high = min(flat), max(flat)
    if low < info.min or high > info.max:
        bad = low if low < info.min else high
        raise InvalidInput(
            f"input {name!r} ({datatype}) holds integers in [{info.min}, {info.max}], got {bad}"
        )
    return np.array(flat, dtype=dtype)


def to_json(array: np.ndarray) -> Any:
    """Nested lists for JSON; NaN and ±Infinity (which JSON cannot carry) become null;
    BYTES elements that arrive as bytes are decoded as UTF-8 (invalid bytes replaced)."""
    if array.dtype.kind == "f" and not bool(np.isfinite(array).all()):
        boxed = array.astype(object)
        boxed[~np.isfinite(array)] = None
        return boxed.tolist()
    if array.dtype.kind == "O":
        return np.vectorize(_text, otypes=[object])(array).tolist() if array.size else array.tolist()
    return array.tolist()


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
