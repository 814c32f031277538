#!/usr/bin/env python3
"""Train the iris classifier, two versions, and export them with their cards:
models/iris.onnx + iris.json (version 1) and models/iris-2.onnx + iris-2.json (version 2).

    python app/train_iris.py [--out DIR]

scikit-learn's iris (150 flowers, shipped inside scikit-learn, no download), a fixed
stratified split, a small random forest with a fixed seed, exported with skl2onnx without
the ZipMap: input ``input`` (FP32 [N, 4]: sepal length, sepal width, petal length, petal
width in cm), outputs ``label`` (INT64 [N]) and ``probabilities`` (FP32 [N, 3]).

The two versions have the same signature and card name and differ by their forests (trees,
depth, seed), so their probabilities differ: a fleet can serve both side by side and a
client can tell which one answered. A random forest for the reason app/train_digits.py
gives: trees only compare and count, so the bytes are the same on any CPU. Needs the
``train`` extra (the controller venv has it).
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
from skl2onnx import to_onnx
from skl2onnx.common.data_types import FloatTensorType
from sklearn.datasets import load_iris
from sklearn.ensemble import RandomForestClassifier
from sklearn.model_selection import train_test_split

NAME = "iris"
SPLIT_SEED = 0
TEST_SIZE = 0.3
OPSETS = {"": 17, "ai.onnx.ml": 3}
FEATURES = 4
# version -> (file stem, forest parameters)
VERSIONS: dict[str, tuple[str, dict[str, Any]]] = {
    "1": ("iris", {"n_estimators": 8, "max_depth": 3, "criterion": "gini", "random_state": 0, "n_jobs": 1}),
    "2": (
        "iris-2",
        {"n_estimators": 16, "max_depth": 5, "criterion": "entropy", "random_state": 1, "n_jobs": 1},
    ),
}


def split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    iris = load_iris()
    x_train, x_test, y_train, y_test = train_test_split(
        iris.data, iris.target, test_size=TEST_SIZE, random_state=SPLIT_SEED, stratify=iris.target
    )
    return x_train, x_test, y_train, y_test


def train(params: dict[str, Any]) -> tuple[RandomForestClassifier, dict[str, Any]]:
    x_train, x_test, y_train, y_test = split()
    # float32 as the model will see them; the card's example keeps the dataset's own
    # decimals (6.3, not 6.300000190734863), which JSON readers turn into the same float32.
    forest = RandomForestClassifier(**params).fit(x_train.astype(np.float32), y_train)
    predicted = forest.predict(x_test.astype(np.float32))
    # The example is the first test flower the forest classifies right: the fleet's golden
    # check and smoke test expect the card's label back.
    first = int(np.flatnonzero(predicted == y_test)[0])
    facts = {
        "test_accuracy": round(float(forest.score(x_test.astype(np.float32), y_test)), 4),
        "train_samples": len(x_train),
        "test_samples": len(x_test),
        "example": {"inputs": [x_test[first].tolist()], "label": int(y_test[first])},
    }
    return forest, facts


def export(forest: RandomForestClassifier, version: str) -> bytes:
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
    model.model_version = int(version)
    onnx.checker.check_model(model)
    data: bytes = model.SerializeToString(deterministic=True)
    return data


def card(
    version: str, stem: str, params: dict[str, Any], onnx_bytes: bytes, facts: dict[str, Any]
) -> dict[str, Any]:
    names = [str(name) for name in load_iris().target_names]
    classes = list(range(len(names)))
    return {
        "name": NAME,
        "version": version,
        "file": f"{stem}.onnx",
        "sha256": hashlib.sha256(onnx_bytes).hexdigest(),
        "description": "Iris species (0 setosa, 1 versicolor, 2 virginica) from sepal length, "
        "sepal width, petal length and petal width in cm.",
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, FEATURES]}],
        "outputs": [
            {"name": "label", "datatype": "INT64", "shape": [-1]},
            {"name": "probabilities", "datatype": "FP32", "shape": [-1, len(classes)]},
        ],
        # Each row is a flower of its own: requests may be merged along the first dimension.
        "batch": True,
        "classes": classes,
        "class_names": names,
        "metrics": {
            "test_accuracy": facts["test_accuracy"],
            "train_samples": facts["train_samples"],
            "test_samples": facts["test_samples"],
        },
        "training": {
            "dataset": "sklearn.datasets.load_iris (Fisher's iris, 150 flowers), shipped inside scikit-learn",
            "split": f"stratified train_test_split, test_size={TEST_SIZE}, random_state={SPLIT_SEED}",
            "estimator": "sklearn.ensemble.RandomForestClassifier",
            "params": params,
            "script": "app/train_iris.py",
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
    args.out.mkdir(parents=True, exist_ok=True)
    for version, (stem, params) in VERSIONS.items():
        forest, facts = train(params)
        onnx_bytes = export(forest, version)
        (args.out / f"{stem}.onnx").write_bytes(onnx_bytes)
        document = card(version, stem, params, onnx_bytes, facts)
        (args.out / f"{stem}.json").write_text(json.dumps(document, indent=2) + "\n")
        print(
            f"{args.out / stem}.onnx: version {version}, test accuracy {facts['test_accuracy']}, "
            f"{len(onnx_bytes)} bytes"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
