"""Bad variants of the iris model for canary tests (tests only, not shipped): each has the
signature of app/models/iris.onnx (``input`` FP32 [N, 4] -> ``label`` INT64 [N],
``probabilities`` FP32 [N, 3]) and is written with a card beside it (name ``iris``, the
version given, the shipped card's example), so a worker serves it as a version of iris.

- ``failing_iris``: warms up (the worker's warm-up feeds zeros) and then fails in
  onnxruntime for every input that is not all zeros.
- ``slow_iris``: the iris forest's own answers, plus a chain of MatMuls that makes each
  inference take milliseconds instead of microseconds (by default about 24 ms of one core
  per row, against iris's 0.01 ms; a request to a worker then takes about 10 times as long
  as iris's, test_more_models.py measures it).

Both are the shipped iris graph with nodes added, so their answers (when they answer) are
iris version 1's.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from tests.support import ROOT

IRIS = ROOT / "app" / "models" / "iris.onnx"


def _iris() -> onnx.ModelProto:
    return onnx.load_model_from_string(IRIS.read_bytes())


def _rename_uses(graph: onnx.GraphProto, old: str, new: str) -> None:
    for node in graph.node:
        for index, name in enumerate(node.input):
            if name == old:
                node.input[index] = new


def _rename_output(graph: onnx.GraphProto, old: str, new: str) -> None:
    for node in graph.node:
        for index, name in enumerate(node.output):
            if name == old:
                node.output[index] = new


def _write(model: onnx.ModelProto, directory: Path, version: str, description: str) -> Path:
    """``directory/iris-<version>.onnx`` and its card ``iris-<version>.json``."""
    onnx.checker.check_model(model, full_check=True)
    data = model.SerializeToString(deterministic=True)
    path = directory / f"iris-{version}.onnx"
    path.write_bytes(data)
    card = json.loads(IRIS.with_suffix(".json").read_text())
    card.update(
        version=version,
        file=path.name,
        sha256=hashlib.sha256(data).hexdigest(),
        description=description,
        training={"script": "tests/support_models.py"},
    )
    card.pop("metrics", None)
    path.with_suffix(".json").write_text(json.dumps(card, indent=2) + "\n")
    return path


def failing_iris(directory: Path, version: str = "failing") -> Path:
    """Iris whose input goes through a Reshape to [N, 4 + (1 if any value != 0)]: zeros
    (the warm-up) pass, any real flower makes onnxruntime fail at run time."""
    model = _iris()
    graph = model.graph
    _rename_uses(graph, "input", "input_checked")
    nodes = [
        helper.make_node("Shape", ["input"], ["input_shape"]),
        helper.make_node("Slice", ["input_shape", "zero", "one"], ["rows"]),
        helper.make_node("Abs", ["input"], ["magnitudes"]),
        helper.make_node("ReduceMax", ["magnitudes"], ["largest"], keepdims=0),
        helper.make_node("Greater", ["largest", "zero_float"], ["nonzero"]),
        helper.make_node("Cast", ["nonzero"], ["extra"], to=TensorProto.INT64),
        helper.make_node("Add", ["four", "extra"], ["width"]),
        helper.make_node("Concat", ["rows", "width"], ["target"], axis=0),
        helper.make_node("Reshape", ["input", "target"], ["input_checked"]),
    ]
    graph.initializer.extend(
        [
            numpy_helper.from_array(np.array([0], dtype=np.int64), "zero"),
            numpy_helper.from_array(np.array([1], dtype=np.int64), "one"),
            numpy_helper.from_array(np.array([4], dtype=np.int64), "four"),
            numpy_helper.from_array(np.array(0.0, dtype=np.float32), "zero_float"),
        ]
    )
    _prepend(graph, nodes)
    return _write(
        model, directory, version, "iris that fails in onnxruntime on any input but zeros (canary tests)"
    )


def slow_iris(directory: Path, version: str = "slow", *, width: int = 1024, layers: int = 192) -> Path:
    """Iris plus ``layers`` chained [width, width] MatMuls started from the input, their sum
    times zero added to the probabilities (so the answers are iris version 1's): about
    N x layers x width^2 x 2 flops more per inference. The weights are ConstantOfShape nodes
    (folded when onnxruntime loads the model), which keeps the file small (9 KB).

    The default is heavier than the "3 times iris" the canary tests need on an idle machine:
    when the machine is busy, waiting for a core adds the same milliseconds to every request, fast or slow,
    and the ratio of their latencies shrinks (4 with half these layers on a loaded run)."""
    model = _iris()
    graph = model.graph
    _rename_output(graph, "probabilities", "forest_probabilities")
    _rename_uses(graph, "probabilities", "forest_probabilities")
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
        helper.make_node("MatMul", ["input", "w_in"], ["h0"]),
    ]
    nodes += [helper.make_node("MatMul", [f"h{i}", "w"], [f"h{i + 1}"]) for i in range(layers)]
    nodes += [
        helper.make_node("ReduceSum", [f"h{layers}", "axis1"], ["chain"], keepdims=1),
        helper.make_node("Mul", ["chain", "zero_float"], ["nothing"]),
        helper.make_node("Add", ["forest_probabilities", "nothing"], ["probabilities"]),
    ]
    graph.initializer.extend(
        [
            numpy_helper.from_array(np.array([4, width], dtype=np.int64), "shape_in"),
            numpy_helper.from_array(np.array([width, width], dtype=np.int64), "shape_hidden"),
            numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1"),
            numpy_helper.from_array(np.array(0.0, dtype=np.float32), "zero_float"),
        ]
    )
    graph.node.extend(nodes)
    return _write(
        model,
        directory,
        version,
        f"iris plus {layers} chained {width}x{width} MatMuls per row: iris's answers, slowly (canary tests)",
    )


def _prepend(graph: onnx.GraphProto, nodes: list[onnx.NodeProto]) -> None:
    existing = list(graph.node)
    del graph.node[:]
    graph.node.extend([*nodes, *existing])
