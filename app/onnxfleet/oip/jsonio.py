"""JSON in and out, the same way for every service (so answers are byte-identical
whoever encodes them): strict JSON out, tensors written as nested lists."""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from onnxfleet.oip.errors import CodecError
from onnxfleet.oip.tensors import to_json


def loads(raw: bytes | memoryview, what: str = "the body") -> Any:
    """Parsed JSON, or CodecError (400) saying why not. NaN and Infinity literals parse
    (as floats), so that the tensor they are in can be named when it refuses them."""
    try:
        return json.loads(bytes(raw))
    except RecursionError:
        raise CodecError(f"{what} is nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, over-long integers
        raise CodecError(f"{what} is not valid JSON: {exc}") from None


def _default(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return to_json(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def dumps(value: Any) -> bytes:
    """Compact strict JSON; numpy arrays as nested lists (NaN and ±Infinity as null)."""
    return json.dumps(value, separators=(",", ":"), allow_nan=False, default=_default).encode()
