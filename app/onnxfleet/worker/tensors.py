"""Typed tensors: JSON arrays in, checked numpy arrays out, and back.

Datatype names are the Open Inference Protocol v2 ones (FP32, INT64, BYTES...), which
KServe and Triton clients already speak; dynamic dimensions are ``-1``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from onnxfleet.worker.errors import InputError

# onnxruntime's type string -> (OIP v2 datatype, numpy dtype)
ORT_TYPES: dict[str, tuple[str, Any]] = {
    "tensor(float)": ("FP32", np.float32),
    "tensor(double)": ("FP64", np.float64),
    "tensor(float16)": ("FP16", np.float16),
    "tensor(int8)": ("INT8", np.int8),
    "tensor(int16)": ("INT16", np.int16),
    "tensor(int32)": ("INT32", np.int32),
    "tensor(int64)": ("INT64", np.int64),
    "tensor(uint8)": ("UINT8", np.uint8),
    "tensor(uint16)": ("UINT16", np.uint16),
    "tensor(uint32)": ("UINT32", np.uint32),
    "tensor(uint64)": ("UINT64", np.uint64),
    "tensor(bool)": ("BOOL", np.bool_),
    "tensor(string)": ("BYTES", np.object_),
}
NUMPY_TO_DATATYPE: dict[Any, str] = {
    np.dtype(dtype): name for name, dtype in ORT_TYPES.values() if dtype is not np.object_
}
DATATYPES = frozenset(name for name, _ in ORT_TYPES.values())

# JSON's names for what json.loads produced, for error messages.
_JSON_NAMES = {
    str: "string",
    bool: "boolean",
    type(None): "null",
    dict: "object",
    list: "array",
    int: "number",
    float: "number",
}


@dataclass(frozen=True)
class TensorSpec:
    """One input or output of the model: name, OIP v2 datatype, shape (-1 = dynamic)."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    @property
    def dtype(self) -> Any:
        return next(dtype for name, dtype in ORT_TYPES.values() if name == self.datatype)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}

    def check_shape(self, shape: Sequence[int]) -> None:
        """InputError unless ``shape`` has this spec's rank and fixed dimensions."""
        if len(shape) != len(self.shape):
            raise InputError(
                f"input {self.name!r} expects rank {len(self.shape)} (shape {list(self.shape)}), "
                f"got shape {list(shape)}"
            )
        for axis, (want, got) in enumerate(zip(self.shape, shape, strict=True)):
            if want >= 0 and want != got:
                raise InputError(
                    f"input {self.name!r} dimension {axis} must be {want} (shape {list(self.shape)}), "
                    f"got shape {list(shape)}"
                )


def nested_shape(value: Any) -> tuple[int, ...]:
    """The shape a nested list claims through its first elements (checked by ``flatten``)."""
    shape: list[int] = []
    while type(value) is list:
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
    out: list[Any] = []
    _collect(value, shape, 0, (), name=name, out=out)
    return out


def _collect(
    node: Any, shape: Sequence[int], depth: int, path: tuple[int, ...], *, name: str, out: list[Any]
) -> None:
    if type(node) is not list or len(node) != shape[depth]:
        where = "".join(f"[{i}]" for i in path)
        found = f"{len(node)} items" if type(node) is list else f"a {_JSON_NAMES.get(type(node), 'value')}"
        raise InputError(
            f"input {name!r} is not a rectangular array: {name}{where} has {found}, "
            f"expected an array of {shape[depth]} items (shape {list(shape)} from the first elements)"
        )
    if depth == len(shape) - 1:
        out.extend(node)
        return
    for index, child in enumerate(node):
        _collect(child, shape, depth + 1, (*path, index), name=name, out=out)


def to_array(flat: list[Any], shape: Sequence[int], spec: TensorSpec) -> np.ndarray:
    """A ``spec.dtype`` array of ``shape`` from JSON leaves, or InputError naming the
    first reason the values cannot be represented exactly in that dtype."""
    dtype = np.dtype(spec.dtype)
    if not flat:
        return np.empty(shape, dtype=dtype)
    types = set(map(type, flat))
    if list in types or dict in types:
        raise InputError(
            f"input {spec.name!r} has arrays or objects where {spec.datatype} values were expected "
            "(ragged or nested deeper than the shape)"
        )
    if dtype.kind == "O":
        _require(types <= {str}, spec, "strings", types)
        return np.array(flat, dtype=object).reshape(shape)
    if dtype.kind == "b":
        _require(types <= {bool}, spec, "booleans (true/false)", types)
        return np.array(flat, dtype=dtype).reshape(shape)
    _require(types <= {int, float}, spec, "numbers", types)
    if dtype.kind == "f":
        return _floats(flat, dtype, spec).reshape(shape)
    return _integers(flat, dtype, types, spec).reshape(shape)


def _require(ok: bool, spec: TensorSpec, what: str, types: set[type]) -> None:
    if not ok:
        got = sorted({_JSON_NAMES.get(t, t.__name__) for t in types})
        raise InputError(f"input {spec.name!r} ({spec.datatype}) expects {what}, got {', '.join(got)}")


def _floats(flat: list[Any], dtype: np.dtype, spec: TensorSpec) -> np.ndarray:
    try:
        wide = np.array(flat, dtype=np.float64)
    except OverflowError:
        raise InputError(
            f"input {spec.name!r} ({spec.datatype}) has an integer too large for a float"
        ) from None
    if dtype != np.float64:
        finite = wide[np.isfinite(wide)]
        limit = float(np.finfo(dtype).max)
        if finite.size and float(np.abs(finite).max()) > limit:
            raise InputError(
                f"input {spec.name!r} ({spec.datatype}) has a value beyond ±{limit:.6g}, "
                f"which {spec.datatype} cannot represent"
            )
    return wide.astype(dtype)


def _integers(flat: list[Any], dtype: np.dtype, types: set[type], spec: TensorSpec) -> np.ndarray:
    if float in types:
        for value in flat:
            if type(value) is float and not value.is_integer():
                raise InputError(f"input {spec.name!r} ({spec.datatype}) expects integers, got {value!r}")
        flat = [int(value) for value in flat]
    info = np.iinfo(dtype)
    low, high = min(flat), max(flat)
    if low < info.min or high > info.max:
        bad = low if low < info.min else high
        raise InputError(
            f"input {spec.name!r} ({spec.datatype}) holds integers in [{info.min}, {info.max}], got {bad}"
        )
    return np.array(flat, dtype=dtype)


def to_json(array: np.ndarray) -> Any:
    """Nested lists for JSON; NaN and ±Infinity (which JSON cannot carry) become null."""
    if array.dtype.kind == "f" and not bool(np.isfinite(array).all()):
        boxed = array.astype(object)
        boxed[~np.isfinite(array)] = None
        return boxed.tolist()
    return array.tolist()


def datatype_of(array: np.ndarray) -> str:
    return NUMPY_TO_DATATYPE.get(array.dtype, "BYTES")
