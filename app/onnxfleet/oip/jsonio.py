"""JSON in and out, the same way for every service (so answers are byte-identical
whoever encodes them): orjson, strict JSON out, numpy arrays written directly (NaN and
±Infinity as null, float32 with its own shortest digits)."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import orjson

from onnxfleet.oip.errors import CodecError
from onnxfleet.oip.tensors import to_json

_NUMPY = orjson.OPT_SERIALIZE_NUMPY


def loads(raw: bytes | memoryview, what: str = "the body") -> Any:
    """Parsed JSON, or CodecError (400) saying why not.

    orjson refuses NaN and Infinity literals and overflowing numbers (1e400); the standard
    parser then reads them (as floats), so that the tensor they are in can be named when
    it refuses them, and words the other errors."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        pass
    try:
        return json.loads(bytes(raw))
    except RecursionError:
        raise CodecError(f"{what} is nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, over-long integers
        raise CodecError(f"{what} is not valid JSON: {exc}") from None


def _default(value: Any) -> Any:
    if isinstance(value, np.ndarray):  # BYTES (object) arrays, 0-d arrays
        return to_json(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def dumps(value: Any) -> bytes:
    """Compact strict JSON (non-ASCII as UTF-8); numpy arrays as nested lists."""
    return orjson.dumps(value, option=_NUMPY, default=_default)
