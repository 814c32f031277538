"""JSON values to typed arrays (unit level; the HTTP tests cover the same rules end to end)."""

from __future__ import annotations

import numpy as np
import pytest

from onnxfleet.oip import InvalidInput, TensorSpec
from onnxfleet.oip.tensors import flatten, from_nested, nested_shape, to_array, to_json


@pytest.mark.parametrize(
    ("value", "shape"),
    [(5, ()), ([], (0,)), ([[]], (1, 0)), ([1, 2], (2,)), ([[1, 2]] * 3, (3, 2)), ([[[1]]], (1, 1, 1))],
)
def test_nested_shape(value: object, shape: tuple[int, ...]) -> None:
    assert nested_shape(value) == shape


def test_flatten_row_major() -> None:
    assert flatten([[1, 2], [3, 4]], (2, 2), "x") == [1, 2, 3, 4]
    assert flatten(7, (), "x") == [7]


def test_flatten_names_the_ragged_element() -> None:
    with pytest.raises(InvalidInput, match=r"x\[1\]\[0\] has 1 items, expected an array of 2 items"):
        flatten([[[1, 2]], [[3]]], (2, 1, 2), "x")


@pytest.mark.parametrize(
    ("datatype", "values", "expected"),
    [
        ("FP32", [1, 2.5, -3], np.array([1, 2.5, -3], np.float32)),
        ("FP16", [0.5, 65504], np.array([0.5, 65504], np.float16)),
        # the decimal JSON writes for FP32's largest value is a hair above it as a float64
        ("FP32", [3.4028235e38], np.array([np.finfo(np.float32).max])),
        ("FP64", [1e300], np.array([1e300])),
        ("INT8", [-128, 127], np.array([-128, 127], np.int8)),
        ("UINT8", [0, 255.0], np.array([0, 255], np.uint8)),
        ("INT64", [2**63 - 1, -(2**63)], np.array([2**63 - 1, -(2**63)], np.int64)),
        ("UINT64", [2**64 - 1], np.array([2**64 - 1], np.uint64)),
        ("BOOL", [True, False], np.array([True, False])),
        ("BYTES", ["a", ""], np.array(["a", ""], dtype=object)),
        ("FP32", [float("nan")], np.array([np.nan], np.float32)),
    ],
)
def test_representable_values(datatype: str, values: list, expected: np.ndarray) -> None:
    array = to_array(values, (len(values),), "x", datatype)
    assert array.dtype == expected.dtype
    np.testing.assert_array_equal(array, expected)


@pytest.mark.parametrize(
    ("datatype", "values", "words"),
    [
        ("FP16", [70000], "FP16 cannot represent"),
        ("FP32", [-1e39], "FP32 cannot represent"),
        ("FP64", [10**400], "too large for a float"),
        ("INT8", [128], "holds integers in [-128, 127], got 128"),
        ("UINT8", [-1], "got -1"),
        ("UINT64", [2**64], "got 18446744073709551616"),
        ("INT32", [0.5], "expects integers, got 0.5"),
        ("INT32", [float("nan")], "expects integers, got nan"),
        ("INT64", [float("inf")], "expects integers, got inf"),
        ("BOOL", [0, 1], "expects booleans"),
        ("BYTES", [b"raw"], "expects strings"),
        ("FP32", [None], "got null"),
        ("FP32", [[1]], "ragged or nested"),
        ("FP32", [{"a": 1}], "ragged or nested"),
    ],
)
def test_unrepresentable_values(datatype: str, values: list, words: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        to_array(values, (len(values),), "x", datatype)
    assert words in caught.value.message
    assert caught.value.status == 422


def test_empty_batch_keeps_its_shape() -> None:
    array = from_nested([[]], TensorSpec("x", "FP32", (-1, -1)))
    assert array.shape == (1, 0)
    assert array.dtype == np.float32


def test_scalar_input() -> None:
    array = from_nested(3, TensorSpec("k", "INT64", ()))
    assert array.shape == ()
    assert array == 3


def test_to_json_writes_non_finite_as_null() -> None:
    assert to_json(np.array([[1.5, np.nan], [np.inf, -np.inf]], np.float32)) == [[1.5, None], [None, None]]
    assert to_json(np.array([1, 2], np.int64)) == [1, 2]
