"""The worker image as the fleet runs it: read-only root, tmpfs /tmp, one CPU, no
capabilities, no privilege escalation, published on loopback only."""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from collections.abc import Iterator

import numpy as np
import onnxruntime as ort
import pytest
import requests
from sklearn.datasets import load_digits

from tests.worker.worker_support import DIGITS

pytestmark = [pytest.mark.docker, pytest.mark.slow]


def docker(*args: str, check: bool = True) -> str:
    done = subprocess.run(["docker", *args], check=False, capture_output=True, text=True, timeout=120)
    if check and done.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)}: {done.stderr}")
    return done.stdout.strip()


@pytest.fixture(scope="module")
def container(onnxfleet_image: dict[str, str]) -> Iterator[str]:
    name = f"onnxfleet-test-worker-{uuid.uuid4().hex[:8]}"
    try:
        docker(
            "run", "--detach", "--name", name,
            "--read-only", "--tmpfs", "/tmp",
            "--cpus", "1",
            "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
            "--publish", "127.0.0.1::5000",
            "--env", "ONNXFLEET_CONTAINER_NAME=worker-9/0",
            # the image's own check, asked every 2 s instead of its 30 s
            "--health-interval", "2s",
            onnxfleet_image["image"],
        )  # fmt: skip
        deadline = time.monotonic() + 120
        while (health := docker("inspect", "--format", "{{.State.Health.Status}}", name)) != "healthy":
            state = docker("inspect", "--format", "{{.State.Status}}", name)
            if state != "running" or time.monotonic() > deadline:
                raise AssertionError(f"container {state}/{health}:\n{docker('logs', name, check=False)}")
            time.sleep(0.5)
        yield name
    finally:
        docker("rm", "--force", name, check=False)


@pytest.fixture(scope="module")
def url(container: str) -> str:
    host_port = docker("port", container, "5000/tcp").splitlines()[0]
    assert host_port.startswith("127.0.0.1:")  # not published on every interface
    return f"http://{host_port}"


def test_predicts_the_digits(url: str) -> None:
    digits = load_digits()
    samples = digits.data[-25:].astype(np.float32)
    session = ort.InferenceSession(str(DIGITS), providers=["CPUExecutionProvider"])
    (expected,) = session.run(["label"], {"input": samples})
    response = requests.post(url + "/run_model", json={"inputs": samples.tolist()}, timeout=30)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["outputs"]["label"] == expected.tolist()
    assert np.mean(expected == digits.target[-25:]) >= 0.8
    assert (body["model"], body["version"], body["container"]) == ("digits", "1", "worker-9/0")
    assert response.headers["X-Model-Version"] == "1"
    assert response.headers["X-Container"] == "worker-9/0"


def test_runs_as_uid_10001_without_writable_root(container: str) -> None:
    assert docker("exec", container, "id", "-u") == "10001"
    assert docker("exec", container, "id", "-g") == "10001"
    denied = subprocess.run(
        ["docker", "exec", container, "touch", "/opt/onnxfleet/x"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert denied.returncode != 0
    assert "Read-only file system" in denied.stderr


def test_threads_follow_the_cpu_quota(url: str) -> None:
    """--cpus 1 on this 2-CPU machine: the cgroup quota, not the host, sizes onnxruntime."""
    ready = requests.get(url + "/readyz", timeout=10).json()
    assert ready["ready"] is True
    assert ready["intra_op_threads"] == 1


def test_logs_are_json_lines(container: str) -> None:
    logs = subprocess.run(["docker", "logs", container], capture_output=True, text=True, check=True)
    lines = (logs.stdout + logs.stderr).splitlines()
    assert lines
    entries = [json.loads(line) for line in lines]
    assert any(e["msg"] == "model ready" for e in entries)
