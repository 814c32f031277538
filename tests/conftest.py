"""Fixtures shared by every suite."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def onnxfleet_image() -> dict[str, str]:
    """The onnxfleet image (built once per content hash, like `make image`)."""
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "image.py"),
            "--archive-dir",
            str(ROOT / ".cache" / "images"),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout)
