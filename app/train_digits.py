#!/usr/bin/env python3
"""Train the demo model and export it: models/digits.onnx and its card models/digits.json.

    python app/train_digits.py [--out DIR]

scikit-learn's 8x8 digits (shipped inside scikit-learn, no download), a fixed stratified
split, a random forest with a fixed seed, exported with skl2onnx without the ZipMap so
the outputs are plain tensors: ``label`` (INT64 [N]) and ``probabilities`` (FP32 [N, 10]).

Why a random forest rather than a logistic regression: growing trees only compares and
counts, so the same library versions give the same bytes on any CPU; lbfgs goes through
BLAS, whose kernels (AVX2, AVX-512...) change the last bits of the weights, and the
shipped file would not reproduce on another machine. Needs the ``train`` extra
(``pip install onnxfleet[train]``); the controller venv has it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
import skl2onnx
import sklearn
from skl2onnx import to_onnx
from skl2onnx.common.data_types import FloatTensorType
from sklearn.datasets import load_digits
from sklearn.ensemble import RandomForestClassifier
from sklearn.model_selection import train_test_split

NAME = "digits"
VERSION = "1"
SEED = 0
TEST_SIZE = 0.25
FOREST = {"n_estimators": 24, "max_depth": 8, "criterion": "gini", "random_state": SEED, "n_jobs": 1}
OPSETS = {"": 17, "ai.onnx.ml": 3}
FEATURES = 64


def train() -> tuple[RandomForestClassifier, dict]:
    digits = load_digits()
    x = digits.data.astype(np.float32)
    x_train, x_test, y_train, y_test = train_test_split(
        x, digits.target, test_size=TEST_SIZE, random_state=SEED, stratify=digits.target
    )
    forest = RandomForestClassifier(**FOREST).fit(x_train, y_train)
    facts = {
        "test_accuracy": round(float(forest.score(x_test, y_test)), 4),
        "train_samples": len(x_train),
        "test_samples": len(x_test),
        "example": {"inputs": [x_test[0].tolist()], "label": int(y_test[0])},
    }
    return forest, facts


def export(forest: RandomForestClassifier) -> bytes:
    model = to_onnx(
        forest,
        initial_types=[("input", FloatTensorType([None, FEATURES]))],
        options={id(forest): {"zipmap": False}},
        target_opset=OPSETS,
    )
    # Nothing time- or machine-dependent may reach the bytes.
    model.graph.name = NAME
    model.doc_string = ""
    model.graph.doc_string = ""
    model.model_version = int(VERSION)
    onnx.checker.check_model(model)
    return model.SerializeToString(deterministic=True)


def card(onnx_bytes: bytes, facts: dict) -> dict:
    classes = list(range(10))
    return {
        "name": NAME,
        "version": VERSION,
        "file": f"{NAME}.onnx",
        "sha256": hashlib.sha256(onnx_bytes).hexdigest(),
        "description": "Handwritten digit (0-9) from an 8x8 image of grey levels 0..16, row by row.",
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, FEATURES]}],
        "outputs": [
            {"name": "label", "datatype": "INT64", "shape": [-1]},
            {"name": "probabilities", "datatype": "FP32", "shape": [-1, len(classes)]},
        ],
        # Each row of the first dimension is an image of its own: requests may be merged
        # along it (the orchestrator's batching) and split back.
        "batch": True,
        "classes": classes,
        "metrics": {
            "test_accuracy": facts["test_accuracy"],
            "train_samples": facts["train_samples"],
            "test_samples": facts["test_samples"],
        },
        "training": {
            "dataset": "sklearn.datasets.load_digits (UCI optical recognition of handwritten digits, "
            "1797 images), shipped inside scikit-learn",
            "split": f"stratified train_test_split, test_size={TEST_SIZE}, random_state={SEED}",
            "estimator": "sklearn.ensemble.RandomForestClassifier",
            "params": FOREST,
            "script": "app/train_digits.py",
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
