"""Tensors as Triton's binary tensor data extension lays them out: little-endian,
row-major, no padding; BOOL one byte (0 or 1); BYTES each element as a ``<I`` length
followed by its bytes."""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence

import numpy as np

from onnxfleet.oip.datatypes import DTYPES
from onnxfleet.oip.errors import InvalidInput

_LENGTH = struct.Struct("<I")


def from_bytes(blob: bytes, shape: Sequence[int], name: str, datatype: str) -> np.ndarray:
    """The tensor ``blob`` holds, or InvalidInput when its size or contents do not fit."""
    count = math.prod(shape)
    if datatype == "BYTES":
        return _strings(blob, count, name).reshape(shape)
    dtype = DTYPES[datatype]
    if len(blob) != count * dtype.itemsize:
        raise InvalidInput(
            f"input {name!r}: shape {list(shape)} of {datatype} needs {count * dtype.itemsize} bytes "
            f"of binary data, binary_data_size is {len(blob)}"
        )
    if datatype == "BOOL":
        raw = np.frombuffer(blob, dtype=np.uint8)
        if bool(np.any(raw > 1)):
            raise InvalidInput(f"input {name!r} (BOOL) has a byte other than 0 or 1")
        return raw.view(np.bool_).reshape(shape)
    return np.frombuffer(blob, dtype=dtype).reshape(shape)


def _strings(blob: bytes, count: int, name: str) -> np.ndarray:
    out = np.empty(count, dtype=object)
    offset, end = 0, len(blob)
    for index in range(count):
        if offset + 4 > end:
            raise InvalidInput(
                f"input {name!r} (BYTES): binary data ends at element {index} of {count} "
                "(each element is a 4-byte little-endian length, then its bytes)"
            )
        (length,) = _LENGTH.unpack_from(blob, offset)
        offset += 4
        if offset + length > end:
            raise InvalidInput(
                f"input {name!r} (BYTES): element {index} announces {length} bytes, "
                f"{end - offset} are left in its binary data"
            )
        out[index] = blob[offset : offset + length]
        offset += length
    if offset != end:
        raise InvalidInput(
            f"input {name!r} (BYTES): {end - offset} bytes of binary data are left after its {count} elements"
        )
    return out


def to_bytes(array: np.ndarray) -> bytes:
    """``array``'s binary data (strings UTF-8 encoded for BYTES)."""
    if array.dtype.kind in "OUS":
        parts: list[bytes] = []
        for item in array.reshape(-1):
            data = item if isinstance(item, bytes) else str(item).encode()
            parts += (_LENGTH.pack(len(data)), data)
        return b"".join(parts)
    dtype = array.dtype.newbyteorder("<") if array.dtype.itemsize > 1 else array.dtype
    return np.ascontiguousarray(array, dtype=dtype).tobytes()
