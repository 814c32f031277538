"""app/train_digits.py reproduces the shipped demo model and card byte for byte."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

from tests.support import ROOT

MODELS = ROOT / "app" / "models"


def test_training_reproduces_the_shipped_files(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, str(ROOT / "app" / "train_digits.py"), "--out", str(tmp_path)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    for name in ("digits.onnx", "digits.json"):
        fresh, shipped = (tmp_path / name).read_bytes(), (MODELS / name).read_bytes()
        assert fresh == shipped, f"{name} differs from app/models/{name}: re-run app/train_digits.py?"


def test_card_describes_the_file() -> None:
    card = json.loads((MODELS / "digits.json").read_text())
    assert card["sha256"] == hashlib.sha256((MODELS / "digits.onnx").read_bytes()).hexdigest()
    assert (card["name"], card["version"]) == ("digits", "1")
    assert card["classes"] == list(range(10))
    assert card["metrics"]["test_accuracy"] >= 0.9
    assert {"scikit-learn", "skl2onnx", "onnx"} <= set(card["versions"])
    assert [i["name"] for i in card["inputs"]] == ["input"]
    assert [o["name"] for o in card["outputs"]] == ["label", "probabilities"]
    assert card["batch"] is True
