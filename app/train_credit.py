#!/usr/bin/env python3
"""Train the two-input demo model and export it: models/credit.onnx and models/credit.json.

    python app/train_credit.py [--out DIR]

A model with two inputs of different datatypes: ``features`` (FP32 [N, 4]: income and debt
in thousands, years employed, missed payments last year) and ``region`` (INT64 [N, 1], a
region code 0..3). Outputs: ``label`` (INT64 [N], 1 = the applicant is predicted to default)
and ``score`` (FP32 [N, 1], the predicted probability of default).

The applicants are synthetic (no real data set of the kind ships with scikit-learn): drawn
from numpy's PCG64 with a fixed seed using uniform draws and integer draws only, combined
with additions and multiplications, so the same numpy gives the same data on any CPU (no
exp/log, whose SIMD kernels may differ in the last bit). Whether one defaults depends on
the features and on the region. A random forest (fixed seed, for the reason
app/train_digits.py gives) learns it from the five columns; skl2onnx exports it without the
ZipMap, and two nodes in front (Cast the region to float, Concat it to the features) give
the graph its two inputs. Needs the ``train`` extra (the controller venv has it).
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import skl2onnx
import sklearn
from onnx import TensorProto, helper
from skl2onnx import to_onnx
from skl2onnx.common.data_types import FloatTensorType
from sklearn.ensemble import RandomForestClassifier
from sklearn.model_selection import train_test_split

NAME = "credit"
VERSION = "1"
SEED = 0
SAMPLES = 2000
REGIONS = 4
TEST_SIZE = 0.25
FOREST = {"n_estimators": 12, "max_depth": 6, "criterion": "gini", "random_state": SEED, "n_jobs": 1}
OPSETS = {"": 17, "ai.onnx.ml": 3}
FEATURES = ["income_k", "debt_k", "years_employed", "missed_payments"]
# how much each region adds to the risk (the model learns it from the region column)
REGION_RISK = [0.0, 0.15, -0.1, 0.3]
# the risk above which an applicant defaults (a third of them do)
DEFAULT_ABOVE = 0.9


def applicants() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(features float32 [n, 4], region int64 [n, 1], defaulted int64 [n])."""
    rng = np.random.Generator(np.random.PCG64(SEED))
    income = np.round(20 + 100 * rng.random(SAMPLES), 1)
    debt = np.round(income * 1.2 * rng.random(SAMPLES), 1)
    years = rng.integers(0, 30, SAMPLES).astype(np.float64)
    missed = rng.integers(0, 5, SAMPLES).astype(np.float64)
    region = rng.integers(0, REGIONS, SAMPLES)
    risk = (
        0.9 * debt / income
        - 0.01 * years
        + 0.12 * missed
        + np.asarray(REGION_RISK)[region]
        + 0.4 * (rng.random(SAMPLES) - 0.5)
    )
    features = np.stack([income, debt, years, missed], axis=1).astype(np.float32)
    return features, region.reshape(-1, 1).astype(np.int64), (risk > DEFAULT_ABOVE).astype(np.int64)


def train() -> tuple[RandomForestClassifier, dict[str, Any]]:
    features, region, defaulted = applicants()
    columns = np.concatenate([features, region.astype(np.float32)], axis=1)
    indices = np.arange(SAMPLES)
    train_rows, test_rows = train_test_split(
        indices, test_size=TEST_SIZE, random_state=SEED, stratify=defaulted
    )
    forest = RandomForestClassifier(**FOREST).fit(columns[train_rows], defaulted[train_rows])
    predicted = forest.predict(columns[test_rows])
    # The first test applicant who defaults and is predicted to: the example shows both
    # inputs and an answer a golden check can compare.
    right = test_rows[(predicted == defaulted[test_rows]) & (defaulted[test_rows] == 1)]
    first = int(right[0])
    facts = {
        "test_accuracy": round(float(forest.score(columns[test_rows], defaulted[test_rows])), 4),
        "default_rate": round(float(defaulted.mean()), 4),
        "train_samples": len(train_rows),
        "test_samples": len(test_rows),
        "example": {
            "inputs": {
                "features": [[round(float(v), 1) for v in features[first]]],
                "region": [[int(region[first, 0])]],
            },
            "label": int(defaulted[first]),
        },
    }
    return forest, facts


def export(forest: RandomForestClassifier) -> bytes:
    model = to_onnx(
        forest,
        initial_types=[("columns", FloatTensorType([None, len(FEATURES) + 1]))],
        options={id(forest): {"zipmap": False}},
        target_opset=OPSETS,
    )
    graph = model.graph
    # The forest reads one float matrix: make "columns" from the two inputs instead.
    del graph.input[:]
    graph.input.extend(
        [
            helper.make_tensor_value_info("features", TensorProto.FLOAT, [None, len(FEATURES)]),
            helper.make_tensor_value_info("region", TensorProto.INT64, [None, 1]),
        ]
    )
    front = [
        helper.make_node("Cast", ["region"], ["region_float"], to=TensorProto.FLOAT, name="region_cast"),
        helper.make_node("Concat", ["features", "region_float"], ["columns"], axis=1, name="columns"),
    ]
    # The probability of class 1 as a column: score [N, 1].
    back = [
        helper.make_node("Slice", ["probabilities", "one", "two", "one"], ["score"], name="score"),
    ]
    graph.initializer.extend(
        [
            onnx.numpy_helper.from_array(np.array([1], dtype=np.int64), "one"),
            onnx.numpy_helper.from_array(np.array([2], dtype=np.int64), "two"),
        ]
    )
    nodes = front + list(graph.node) + back
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.output[:]
    graph.output.extend(
        [
            helper.make_tensor_value_info("label", TensorProto.INT64, [None]),
            helper.make_tensor_value_info("score", TensorProto.FLOAT, [None, 1]),
        ]
    )
    # Nothing time- or machine-dependent may reach the bytes.
    graph.name = NAME
    model.doc_string = ""
    graph.doc_string = ""
    model.model_version = int(VERSION)
    onnx.checker.check_model(model, full_check=True)
    data: bytes = model.SerializeToString(deterministic=True)
    return data


def card(onnx_bytes: bytes, facts: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": NAME,
        "version": VERSION,
        "file": f"{NAME}.onnx",
        "sha256": hashlib.sha256(onnx_bytes).hexdigest(),
        "description": "Whether a loan applicant defaults (label 1) and how likely (score), from "
        f"features {FEATURES} and a region code 0..{REGIONS - 1}. Synthetic applicants.",
        "inputs": [
            {"name": "features", "datatype": "FP32", "shape": [-1, len(FEATURES)]},
            {"name": "region", "datatype": "INT64", "shape": [-1, 1]},
        ],
        "outputs": [
            {"name": "label", "datatype": "INT64", "shape": [-1]},
            {"name": "score", "datatype": "FP32", "shape": [-1, 1]},
        ],
        # Each row (of both inputs) is an applicant of its own: requests may be merged
        # along the first dimension.
        "batch": True,
        "classes": [0, 1],
        "feature_names": FEATURES,
        "metrics": {
            "test_accuracy": facts["test_accuracy"],
            "default_rate": facts["default_rate"],
            "train_samples": facts["train_samples"],
            "test_samples": facts["test_samples"],
        },
        "training": {
            "dataset": f"synthetic: {SAMPLES} applicants from numpy PCG64 seed {SEED} "
            "(app/train_credit.py, applicants())",
            "split": f"stratified train_test_split, test_size={TEST_SIZE}, random_state={SEED}",
            "estimator": "sklearn.ensemble.RandomForestClassifier on the features and the region",
            "params": FOREST,
            "script": "app/train_credit.py",
        },
        "example": facts["example"],
        "opsets": OPSETS,
        "versions": {
            "scikit-learn": sklearn.__version__,
            "skl2onnx": skl2onnx.__version__,
            "onnx": onnx.__version__,
            "numpy": np.__version__,
        },
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "models")
    args = parser.parse_args()
    forest, facts = train()
    onnx_bytes = export(forest)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{NAME}.onnx").write_bytes(onnx_bytes)
    (args.out / f"{NAME}.json").write_text(json.dumps(card(onnx_bytes, facts), indent=2) + "\n")
    print(f"{args.out / NAME}.onnx: test accuracy {facts['test_accuracy']}, {len(onnx_bytes)} bytes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
