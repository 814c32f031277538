#!/usr/bin/env python3
"""One onnxfleet worker against MLServer 1.7, same model, same CPU, same client.

    .venv/bin/python -m bench.worker_vs_mlserver [--duration 8] [--concurrency 1,32]

Both serve the demo model with onnxruntime on one intra-op thread and answer Open
Inference Protocol v2 JSON. Each server runs on the same core (CPU affinity, inherited
by all its processes and threads) and the client (``wrk``, one thread) on the others, so
they get the same CPU share. MLServer runs
a minimal onnxruntime runtime (``bench/mlserver_runtime.py``) in its main process
(``parallel_workers: 0``, its cheapest set-up on one core), with adaptive batching on
(``--max-batch-size``, ``--max-batch-time-ms``) and, for reference, off. The worker runs as
the fleet runs it (``--max-concurrency 1``), with ``--max-waiting`` raised to twice the
largest client count so that it queues instead of answering 429. Each request is the model
card's example image (batch 1), the same JSON body for both. Prints requests/s, p50, p99,
errors and the server's CPU time per request (all its processes); asserts nothing.

MLServer and its dependencies live in their own venv, ``.cache/bench/mlserver``, created
on first use from ``bench/mlserver-requirements.txt`` with a Python 3.9-3.12 (MLServer
1.7 does not support 3.13); they never enter the controller venv.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import onnxruntime as ort

from bench.orchestrator_vs_haproxy import WRK_SCRIPT, wait_up, wrk
from bench.worker import cpu_seconds
from tests.support import ROOT, Service, free_port
from tests.worker.worker_support import DIGITS, find_python, pinned_venv, started

HERE = Path(__file__).resolve().parent
MLSERVER_VENV = ROOT / ".cache" / "bench" / "mlserver"
# The wrk script of the orchestrator benchmark, with this benchmark's body.
BODY_SCRIPT = """
local file = io.open("{body}", "rb")
wrk.body = file:read("*a")
file:close()
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
"""


def cores() -> tuple[set[int], set[int]]:
    """(server CPUs, client CPUs): the last CPU for the server, the others for the
    client; the same CPU for both on a one-CPU machine."""
    cpus = sorted(os.sched_getaffinity(0))
    return {cpus[-1]}, set(cpus[:-1] or cpus)


def v2_body(card: dict) -> bytes:
    rows = card["example"]["inputs"]
    tensor = {"name": "input", "shape": [len(rows), len(rows[0])], "datatype": "FP32", "data": rows}
    return json.dumps({"inputs": [tensor]}).encode()


def check_answer(url: str, body: bytes, expected_label: int) -> None:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        outputs = {o["name"]: o for o in json.loads(response.read())["outputs"]}
    label = outputs["label"]["data"]
    if np.array(label).reshape(-1).tolist() != [expected_label]:
        raise RuntimeError(f"{url} answered label {label}, expected {expected_label}")


class MLServer:
    """``mlserver start`` on a model folder with the ONNX runtime."""

    def __init__(self, work: Path, batch_size: int, batch_time_ms: float) -> None:
        self.port = free_port()
        self.work = work / f"mlserver-{batch_size}"
        model = self.work / "digits"
        model.mkdir(parents=True)
        shutil.copy(HERE / "mlserver_runtime.py", model / "mlserver_runtime.py")
        settings = {"name": "digits", "implementation": "mlserver_runtime.OnnxRuntime"}
        settings["parameters"] = {"uri": str(DIGITS)}
        if batch_size > 1:
            settings |= {"max_batch_size": batch_size, "max_batch_time": batch_time_ms / 1000}
        (model / "model-settings.json").write_text(json.dumps(settings))
        server = {"host": "127.0.0.1", "http_port": self.port, "grpc_port": free_port()}
        server |= {"metrics_port": free_port(), "parallel_workers": 0, "debug": False}
        (self.work / "settings.json").write_text(json.dumps(server))
        self.command = [str(MLSERVER_VENV / "bin" / "mlserver"), "start", str(self.work)]
        self.log = (work / f"mlserver-{batch_size}.log").open("w")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> MLServer:
        env = {**os.environ, "ONNXFLEET_BENCH_THREADS": "1", "PYTHONPATH": str(self.work / "digits")}
        self.proc = subprocess.Popen(self.command, stdout=self.log, stderr=subprocess.STDOUT, env=env)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.proc is not None
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self.log.close()


def measure(label: str, pid: int, url: str, script: Path, args: argparse.Namespace) -> list[dict]:
    rows = []
    for connections in args.concurrency:
        wrk(url, script, connections, 1.0)  # warm-up: connections, caches, batch sizes
        before = cpu_seconds(pid)
        result = wrk(url, script, connections, args.duration)
        result["cpu_us"] = (cpu_seconds(pid) - before) / max(1, result["requests"]) * 1e6
        rows.append({"server": label, "clients": connections, **result})
        print(
            f"{label:<40} {connections:>3} {result['rps']:>9.1f} {result['p50_us'] / 1000:>8.2f} "
            f"{result['p99_us'] / 1000:>8.2f} {result['errors']:>6} {result['cpu_us']:>10.0f}",
            flush=True,
        )
    return rows


def servers(args: argparse.Namespace, work: Path, script: Path, body: bytes, label: int) -> list[dict]:
    """The worker, then MLServer with and without adaptive batching, each on the server
    CPU (its processes inherit this process's affinity at start), wrk on the others."""
    server_cpus, client_cpus = cores()
    print(
        f"digits, OIP v2 JSON, batch 1 per request; servers on CPU {sorted(server_cpus)}, wrk -t1 on "
        f"CPU {sorted(client_cpus)}; onnxruntime 1 intra-op thread each; "
        f"load average {os.getloadavg()[0]:.1f} before"
    )
    print(
        f"{'server':<40} {'c':>3} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6} {'CPU µs/req':>10}"
    )
    rows: list[dict] = []
    port = free_port()
    worker_args = ["worker", "--model", str(DIGITS), "--bind", f"127.0.0.1:{port}", "--intra-op-threads", "1"]
    # Room for every client, twice: requests of a finished phase may still be in the worker
    # when the next phase's connections send theirs.
    worker_args += ["--max-waiting", str(2 * max(args.concurrency)), "--container-name", "bench"]
    os.sched_setaffinity(0, server_cpus)
    with started(Service(worker_args, port)) as worker:
        os.sched_setaffinity(0, client_cpus)
        worker.wait_ready()
        url = worker.url + "/v2/models/digits/infer"
        check_answer(url, body, label)
        assert worker.proc is not None
        rows += measure("onnxfleet worker", worker.proc.pid, url, script, args)
    for batch_size in (args.max_batch_size, 1):
        name = f"mlserver, adaptive batching {batch_size}/{args.max_batch_time_ms:g} ms"
        os.sched_setaffinity(0, server_cpus)
        with MLServer(work, batch_size, args.max_batch_time_ms) as server:
            os.sched_setaffinity(0, client_cpus)
            wait_up(server.url + "/v2/models/digits/ready", timeout=120)
            url = server.url + "/v2/models/digits/infer"
            check_answer(url, body, label)
            assert server.proc is not None
            rows += measure(
                name if batch_size > 1 else "mlserver, no batching", server.proc.pid, url, script, args
            )
    return rows


def ceiling(card: dict) -> float:
    """Inferences per second of onnxruntime in this process on the same example."""
    session = ort.InferenceSession(str(DIGITS), providers=["CPUExecutionProvider"])
    feeds = {"input": np.array(card["example"]["inputs"], np.float32)}
    runs, begun = 2000, time.perf_counter()
    for _ in range(runs):
        session.run(None, feeds)
    return runs / (time.perf_counter() - begun)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--duration", type=float, default=8.0, help="seconds per phase (default: %(default)s)"
    )
    parser.add_argument("--concurrency", default="1,32", help="client counts (default: %(default)s)")
    parser.add_argument("--max-batch-size", type=int, default=32, help="MLServer's (default: %(default)s)")
    parser.add_argument(
        "--max-batch-time-ms", type=float, default=2.0, help="MLServer's (default: %(default)s)"
    )
    parser.add_argument("--json", type=Path, help="also write the figures there")
    args = parser.parse_args()
    args.concurrency = [int(c) for c in args.concurrency.split(",")]
    if not shutil.which("wrk"):
        raise SystemExit("needs wrk (make setup installs it)")
    python = find_python(maximum=(3, 12))  # MLServer 1.7 does not run on 3.13
    print(
        f"MLServer venv: {pinned_venv(MLSERVER_VENV, HERE / 'mlserver-requirements.txt', python)}", flush=True
    )
    card = json.loads(DIGITS.with_suffix(".json").read_text())
    body = v2_body(card)
    with tempfile.TemporaryDirectory(prefix="onnxfleet-bench-") as tmp:
        work = Path(tmp)
        (work / "body.json").write_bytes(body)
        script = work / "load.lua"
        script.write_text(
            BODY_SCRIPT.format(body=work / "body.json") + WRK_SCRIPT[WRK_SCRIPT.index("done =") :]
        )
        rows = servers(args, work, script, body, card["example"]["label"])
    print(f"onnxruntime in-process (the ceiling, this process): {ceiling(card):,.0f} inferences/s of batch 1")
    print(f"load average after: {os.getloadavg()[0]:.1f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
