"""Start-up (warm-up before ready, failures that stop the worker) and graceful stop."""

from __future__ import annotations

import json
import shutil
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from tests.support import Service, http_status
from tests.worker.worker_support import DIGITS, slow_model, started, worker


def log_entries(service: Service) -> list[dict]:
    return [json.loads(line) for line in service.log().splitlines() if line.startswith("{")]


def test_ready_only_after_warm_up(tmp_path: Path) -> None:
    """A model with a fixed batch of 512 rows: its warm-up inference takes about a
    second. Meanwhile the worker is alive, not ready, and refuses inferences (503)."""
    model = slow_model(tmp_path / "fixed.onnx", batch=512)
    with started(worker(model, "--intra-op-threads", "1", container="warm-0")) as service:
        seen: list[tuple[int | None, int | None]] = []
        refused = None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            live, ready = http_status(service.url + "/healthz"), http_status(service.url + "/readyz")
            seen.append((live, ready))
            if live == 200 and ready == 503 and refused is None:
                state = requests.get(service.url + "/readyz", timeout=5).json()["state"]
                refused = requests.post(
                    service.url + "/run_model", json={"inputs": [[0] * 8] * 512}, timeout=5
                )
            if ready == 200:
                break
            time.sleep(0.02)
        assert (200, 503) in seen, f"never saw alive-but-not-ready: {seen[-5:]}"
        assert seen[-1] == (200, 200)
        assert state in ("loading", "warming up")
        assert refused is not None
        assert refused.status_code == 503
        assert refused.json()["code"] == "not_ready"
        assert refused.headers["Retry-After"] == "1"
        entries = log_entries(service)
        ready_log = next(e for e in entries if e["msg"] == "model ready")
        assert ready_log["warm_up_ms"] > 100  # the warm-up really ran the slow model
        first_ready = next(e for e in entries if e.get("path") == "/readyz" and e.get("status") == 200)
        assert entries.index(ready_log) < entries.index(first_ready)
        assert requests.post(service.url + "/run_model", json={"inputs": [[0] * 8] * 512}, timeout=60).ok


def test_unloadable_model_stops_the_worker(tmp_path: Path) -> None:
    bad = tmp_path / "broken.onnx"
    bad.write_bytes(b"this is not an ONNX model")
    with started(worker(bad, container="broken-0")) as service:
        assert service.proc is not None
        code = service.proc.wait(timeout=60)
        assert code == 3  # gunicorn halts when its worker exits with 3 (boot error)
        errors = [e for e in log_entries(service) if e["level"] == "error"]
        assert any("cannot be served" in e["msg"] and "broken.onnx" in e["msg"] for e in errors), errors


def test_missing_model_file_is_a_usage_error(tmp_path: Path) -> None:
    with started(worker(tmp_path / "nowhere.onnx")) as service:
        assert service.proc is not None
        assert service.proc.wait(timeout=30) == 2
        assert "nowhere.onnx does not exist" in service.log()


def test_card_for_another_model_is_refused(tmp_path: Path) -> None:
    shutil.copy(DIGITS, tmp_path / "digits.onnx")
    card = json.loads(DIGITS.with_suffix(".json").read_text())
    (tmp_path / "digits.json").write_text(json.dumps({**card, "sha256": "0" * 64}))
    with started(worker(tmp_path / "digits.onnx")) as service:
        assert service.proc is not None
        assert service.proc.wait(timeout=30) == 2
        assert "update the card or pass --model-version" in service.log()


@pytest.mark.slow
def test_sigterm_finishes_the_inference_in_flight(models_dir: Path) -> None:
    with worker(models_dir / "slow.onnx", "--intra-op-threads", "1", container="stop-0") as service:
        with ThreadPoolExecutor(1) as pool:
            future = pool.submit(
                requests.post, service.url + "/run_model", json={"inputs": [[1.0] * 8] * 256}, timeout=60
            )
            deadline = time.monotonic() + 30
            while (
                "onnxfleet_worker_inferences_running 1.0"
                not in requests.get(service.url + "/metrics", timeout=5).text
            ):
                assert time.monotonic() < deadline
                time.sleep(0.01)
            service.signal(signal.SIGTERM)
            assert future.result().status_code == 200
        assert service.proc is not None
        assert service.proc.wait(timeout=30) == 0
