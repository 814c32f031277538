"""The Open Inference Protocol v2 datatypes and their numpy dtypes (little-endian, as the
binary tensor extension lays them out)."""

from __future__ import annotations

import numpy as np

DTYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype("u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    "BYTES": np.dtype(object),
}
DATATYPES = tuple(DTYPES)
_BY_DTYPE = {dtype.newbyteorder("="): name for name, dtype in DTYPES.items() if name != "BYTES"}


def datatype_of(array: np.ndarray) -> str:
    """The OIP datatype of a numpy array: strings, bytes and other objects are BYTES."""
    return _BY_DTYPE.get(array.dtype.newbyteorder("="), "BYTES")
