"""Helpers of the worker tests: small ONNX models built with onnx.helper (no training,
no files in git), real worker processes, Prometheus text parsing."""

from __future__ import annotations

import fcntl
import glob
import hashlib
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from tests.support import ROOT, Service, free_port

DIGITS = ROOT / "app" / "models" / "digits.onnx"

OPSET = [helper.make_opsetid("", 17)]


def _save(graph: onnx.GraphProto, path: Path) -> Path:
    model = helper.make_model(graph, opset_imports=OPSET, producer_name="onnxfleet-tests")
    model.ir_version = 8  # readable by any onnxruntime >= 1.10
    onnx.checker.check_model(model)
    path.write_bytes(model.SerializeToString())
    return path


def slow_model(path: Path, *, batch: int | None = None, width: int = 1024, layers: int = 40) -> Path:
    """``x`` FP32 [batch, 8] -> ``y`` FP32 [batch]: ``layers`` chained [width, width]
    MatMuls, so an inference takes about batch x layers x width^2 x 2 flops. The weights
    are ConstantOfShape nodes (folded at load time), which keeps the file tiny."""
    dim = batch if batch is not None else "N"
    nodes = [
        helper.make_node(
            "ConstantOfShape",
            ["shape_in"],
            ["w_in"],
            value=helper.make_tensor("v", TensorProto.FLOAT, [1], [0.01]),
        ),
        helper.make_node(
            "ConstantOfShape",
            ["shape_hidden"],
            ["w"],
            value=helper.make_tensor("v", TensorProto.FLOAT, [1], [1.0 / width]),
        ),
        helper.make_node("MatMul", ["x", "w_in"], ["h0"]),
    ]
    for i in range(layers):
        nodes.append(helper.make_node("MatMul", [f"h{i}", "w"], [f"h{i + 1}"]))
    nodes.append(helper.make_node("ReduceSum", [f"h{layers}", "axes"], ["y"], keepdims=0))
    graph = helper.make_graph(
        nodes,
        "slow",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [dim, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [dim])],
        initializer=[
            numpy_helper.from_array(np.array([8, width], dtype=np.int64), "shape_in"),
            numpy_helper.from_array(np.array([width, width], dtype=np.int64), "shape_hidden"),
            numpy_helper.from_array(np.array([1], dtype=np.int64), "axes"),
        ],
    )
    return _save(graph, path)


def multi_input_model(path: Path) -> Path:
    """Four inputs of four datatypes:
    ``a`` FP32 [N, 3] + ``b`` INT64 [N, 3] -> ``sum`` FP32 [N, 3];
    ``flags`` BOOL [N] -> ``inverted``; ``tag`` BYTES [N] -> ``tag_out`` (identity)."""
    graph = helper.make_graph(
        [
            helper.make_node("Cast", ["b"], ["b_float"], to=TensorProto.FLOAT),
            helper.make_node("Add", ["a", "b_float"], ["sum"]),
            helper.make_node("Not", ["flags"], ["inverted"]),
            helper.make_node("Identity", ["tag"], ["tag_out"]),
        ],
        "multi",
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, ["N", 3]),
            helper.make_tensor_value_info("b", TensorProto.INT64, ["N", 3]),
            helper.make_tensor_value_info("flags", TensorProto.BOOL, ["M"]),
            helper.make_tensor_value_info("tag", TensorProto.STRING, ["K"]),
        ],
        [
            helper.make_tensor_value_info("sum", TensorProto.FLOAT, ["N", 3]),
            helper.make_tensor_value_info("inverted", TensorProto.BOOL, ["M"]),
            helper.make_tensor_value_info("tag_out", TensorProto.STRING, ["K"]),
        ],
    )
    return _save(graph, path)


def worker(model: Path, *args: str, container: str = "test-worker") -> Service:
    """``onnxfleet worker`` on a free loopback port (start it with ``with``)."""
    port = free_port()
    return Service(
        [
            "worker",
            "--model",
            str(model),
            "--bind",
            f"127.0.0.1:{port}",
            "--container-name",
            container,
            *args,
        ],
        port,
    )


@contextmanager
def started(service: Service) -> Iterator[Service]:
    """The service started without waiting for it to be ready; stopped, and its log file
    removed, afterwards."""
    service.start()
    try:
        yield service
    finally:
        service.__exit__(None, None, None)


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text (0 when absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        if key == (f"{name}{{{want}}}" if labels else name):
            return float(value)
    return 0.0


def find_python(maximum: tuple[int, int]) -> str:
    """A Python interpreter of version 3.9 up to ``maximum`` (for a tool that does not run
    on the controller's Python): on PATH, in pyenv, or Debian's."""
    candidates = [f"python3.{minor}" for minor in range(maximum[1], 8, -1)]
    candidates += sorted(glob.glob(str(Path.home() / ".pyenv/versions/3.*/bin/python")), reverse=True)
    candidates += [sys.executable, "/usr/bin/python3"]
    check = f"import sys, venv; sys.exit(not (3, 9) <= sys.version_info[:2] <= {maximum})"
    for candidate in candidates:
        path = shutil.which(candidate)
        if path and subprocess.run([path, "-c", check], check=False, capture_output=True).returncode == 0:
            return path
    raise RuntimeError(f"no Python 3.9 to {maximum[0]}.{maximum[1]} found (pyenv install 3.12?)")


def pinned_venv(path: Path, requirements: Path, python: str = sys.executable) -> Path:
    """``path``, a venv with exactly ``requirements`` (created, under a lock, when missing
    or when the requirements file changed); returns its bin directory."""
    digest = hashlib.sha256(requirements.read_bytes()).hexdigest()
    stamp = path / ".requirements-sha256"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.parent / f"{path.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (stamp.exists() and stamp.read_text() == digest):
            subprocess.run([python, "-m", "venv", "--clear", str(path)], check=True)
            pip = [str(path / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
            subprocess.run([*pip, "-r", str(requirements)], check=True, timeout=900)
            stamp.write_text(digest)
    return path / "bin"
