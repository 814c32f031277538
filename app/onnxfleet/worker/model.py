"""The ONNX model: one onnxruntime session per process, its signature, warm-up, run."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from onnxruntime.capi import onnxruntime_pybind11_state as ort_state

from onnxfleet.worker.errors import ApiError
from onnxfleet.worker.tensors import ORT_TYPES, TensorSpec

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
        raise ModelError(f"{arg.name!r} has type {arg.type}, which the worker cannot exchange as JSON")
    # onnxruntime reports dynamic dimensions as None or as a symbolic name ("batch").
    shape = tuple(dim if isinstance(dim, int) and dim >= 0 else -1 for dim in arg.shape or ())
    return TensorSpec(arg.name, ORT_TYPES[arg.type][0], shape)


class Model:
    """An onnxruntime session (CPU) with ``intra_op_threads`` threads for one operator."""

    def __init__(self, path: str | Path, intra_op_threads: int) -> None:
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
        self.inputs = [_spec(arg) for arg in self.session.get_inputs()]
        self.outputs = [_spec(arg) for arg in self.session.get_outputs()]
        self.input_names = [spec.name for spec in self.inputs]
        self.output_names = [spec.name for spec in self.outputs]

    def signature(self) -> dict[str, Any]:
        return {
            "inputs": [spec.describe() for spec in self.inputs],
            "outputs": [spec.describe() for spec in self.outputs],
        }

    def run(
        self, feeds: dict[str, np.ndarray], outputs: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        """Outputs by name. Input that passed validation and still fails in the runtime
        (a dimension the graph constrains, an index out of range...) is the input's
        fault: 422 with the runtime's message, never a stack trace."""
        names = list(outputs) if outputs else self.output_names
        try:
            results = self.session.run(names, feeds)
        except MemoryError:
            raise ApiError("out of memory", "the input is too large for this worker", status=503) from None
        except ORT_ERRORS as exc:
            raise ApiError("inference failed", f"onnxruntime: {exc}", status=422) from None
        return dict(zip(names, results, strict=True))

    def warm_up_feeds(self) -> dict[str, np.ndarray]:
        """Zeros (empty strings) for every input, dynamic dimensions set to 1."""
        feeds = {}
        for spec in self.inputs:
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
            raise ModelError(f"warm-up inference failed: {exc.detail}") from None
        return time.perf_counter() - started
