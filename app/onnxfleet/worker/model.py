"""The ONNX model: one onnxruntime session per process, its signature, warm-up, run."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from onnxruntime.capi import onnxruntime_pybind11_state as ort_state

from onnxfleet.oip import InvalidInput, Signature, TensorSpec
from onnxfleet.worker.errors import ApiError

log = logging.getLogger("onnxfleet.worker")

# onnxruntime's type string -> OIP datatype
ORT_TYPES = {
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(float16)": "FP16",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(bool)": "BOOL",
    "tensor(string)": "BYTES",
}

# Every exception class onnxruntime's binding raises (Fail, InvalidArgument, ...).
ORT_ERRORS: tuple[type[Exception], ...] = tuple(
    obj
    for obj in vars(ort_state).values()
    if isinstance(obj, type) and issubclass(obj, Exception) and obj.__module__ == ort_state.__name__
)


class ModelError(Exception):
    """The model cannot be served (unreadable, invalid, unsupported, warm-up failed)."""


def _spec(arg: Any) -> TensorSpec:
    if arg.type not in ORT_TYPES:
        raise ModelError(f"{arg.name!r} has type {arg.type}, which the worker cannot exchange")
    # onnxruntime reports dynamic dimensions as None or as a symbolic name ("batch").
    shape = tuple(dim if isinstance(dim, int) and dim >= 0 else -1 for dim in arg.shape or ())
    return TensorSpec(arg.name, ORT_TYPES[arg.type], shape)


class Model:
    """An onnxruntime session (CPU) with ``intra_op_threads`` threads for one operator."""

    def __init__(self, path: str | Path, intra_op_threads: int, batch: bool = False) -> None:
        # onnxruntime's own warnings are plain text on stderr (in a read-only container,
        # one about persisting a telemetry ID on every start): keep only its errors, the
        # worker's logs stay JSON lines.
        ort.set_default_logger_severity(3)
        ort.disable_telemetry_events()  # a serving container sends nothing but answers
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        # One operator at a time: concurrency comes from --max-concurrency, and the CPU
        # share of the container is what intra_op_threads was sized for.
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except ORT_ERRORS as exc:
            raise ModelError(f"onnxruntime cannot load {path}: {exc}") from exc
        self.signature = Signature(
            tuple(_spec(arg) for arg in self.session.get_inputs()),
            tuple(_spec(arg) for arg in self.session.get_outputs()),
            batch,
        )

    def run(
        self, feeds: dict[str, np.ndarray], outputs: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        """Outputs by name. Input that passed validation and still fails in the runtime
        (a dimension the graph constrains, an index out of range...) is the input's
        fault: 422 saying what the model expects; onnxruntime's own words go to the log."""
        names = list(outputs) if outputs else list(self.signature.output_names)
        feeds = {name: _text(name, array) for name, array in feeds.items()}
        try:
            results = self.session.run(names, feeds)
        except MemoryError:
            raise ApiError(
                "the input is too large for this worker's memory; send fewer rows per request",
                "out_of_memory",
                503,
            ) from None
        except ORT_ERRORS as exc:
            log.warning("onnxruntime refused an input: %s", exc)
            shapes = {name: list(array.shape) for name, array in feeds.items()}
            raise ApiError(
                f"the model cannot compute an answer for inputs of shapes {shapes}: they pass the "
                "signature's checks but disagree with what the model computes (for example two inputs "
                "that need the same batch size); see expected",
                "inference_failed",
                422,
                expected=self.signature.describe(),
            ) from None
        return dict(zip(names, results, strict=True))

    def warm_up_feeds(self) -> dict[str, np.ndarray]:
        """Zeros (empty strings) for every input, dynamic dimensions set to 1."""
        feeds = {}
        for spec in self.signature.inputs:
            shape = tuple(1 if dim < 0 else dim for dim in spec.shape)
            if spec.datatype == "BYTES":
                feeds[spec.name] = np.full(shape, "", dtype=object)
            else:
                feeds[spec.name] = np.zeros(shape, dtype=spec.dtype)
        return feeds

    def warm_up(self) -> float:
        """Run once on ``warm_up_feeds`` (first-run allocations happen here, not in a
        client's request); seconds taken. ModelError when the model cannot even do that."""
        started = time.perf_counter()
        try:
            self.run(self.warm_up_feeds())
        except ApiError as exc:
            raise ModelError(f"warm-up inference failed: {exc.message}") from None
        return time.perf_counter() - started


def _text(name: str, array: np.ndarray) -> np.ndarray:
    """onnxruntime takes strings, not bytes (it would feed it "b'...'"): BYTES that came
    as binary data are decoded as UTF-8, or refused."""
    if array.dtype.kind != "O" or not any(isinstance(item, bytes) for item in array.flat):
        return array
    text = np.empty(array.shape, dtype=object)
    for index, item in enumerate(array.flat):
        try:
            text.flat[index] = item.decode() if isinstance(item, bytes) else item
        except UnicodeDecodeError:
            raise InvalidInput(
                f"input {name!r} element {index} is not UTF-8 text; this model's strings are text"
            ) from None
    return text
