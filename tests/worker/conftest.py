"""Real workers (gunicorn + onnxruntime processes) shared by the worker tests."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import Service
from tests.worker.worker_support import DIGITS, multi_input_model, slow_model, worker


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("models")
    slow_model(path / "slow.onnx")
    multi_input_model(path / "multi.onnx")
    return path


@pytest.fixture(scope="session")
def digits_card() -> dict:
    return json.loads(DIGITS.with_suffix(".json").read_text())


@pytest.fixture(scope="session")
def digits_worker() -> Iterator[Service]:
    with worker(DIGITS, "--intra-op-threads", "1", container="digits-0") as service:
        yield service


@pytest.fixture(scope="session")
def multi_worker(models_dir: Path) -> Iterator[Service]:
    with worker(models_dir / "multi.onnx", "--intra-op-threads", "1", container="multi-0") as service:
        yield service


@pytest.fixture(scope="session")
def slow_worker(models_dir: Path) -> Iterator[Service]:
    """One slot, one waiting place: a third concurrent request is refused."""
    args = ["--max-concurrency", "1", "--max-waiting", "1", "--intra-op-threads", "1"]
    with worker(models_dir / "slow.onnx", *args, container="slow-0") as service:
        yield service
