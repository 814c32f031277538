#!/usr/bin/env python3
"""One worker's throughput and latency against onnxruntime called in-process.

    .venv/bin/python -m bench.worker [--batch 8] [--concurrency 1,4] [--duration 3]

Starts a real worker (gunicorn + onnxruntime, `onnxfleet worker`) on a loopback port,
sends the same digits batch from ``c`` concurrent aiohttp clients to ``POST /run_model``
and to ``POST /v2/models/digits/infer`` as OIP JSON and as Triton's binary tensors (what
tritonclient sends by default), then runs the same batch through the same onnxruntime
session settings in this process from ``c`` threads. Prints requests/s, p50 and p99 for
each and the overhead ratios, plus the HTTP floor: the same worker answering
``GET /healthz`` (no JSON, no model). Each phase stops after ``--requests`` requests or
``--duration`` seconds, whichever comes first. Client and worker share this machine's
CPUs: the figures are a floor.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import threading
import time
from collections.abc import Coroutine
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
from sklearn.datasets import load_digits

from bench.orchestrator_vs_haproxy import cpu_seconds as process_cpu_seconds
from onnxfleet import oip
from onnxfleet.worker.cpus import default_intra_op_threads
from onnxfleet.worker.model import Model
from onnxfleet.worker.settings import model_identity
from tests.support import Service, free_port

ROOT = Path(__file__).resolve().parent.parent

WARM_UP_REQUESTS = 50
HTTP, FLOOR, LOCAL = "worker POST /run_model", "worker GET /healthz", "onnxruntime in-process"
OIP_JSON, OIP_BINARY = "worker OIP JSON", "worker OIP binary"


@dataclass
class Phase:
    mode: str
    concurrency: int
    requests: int
    errors: int
    seconds: float
    per_second: float
    p50_ms: float
    p99_ms: float
    cpu_us: float | None = None  # the worker's CPU time (all its processes) per request


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and all its descendants so far."""
    total, pending = 0.0, [pid]
    while pending:
        current = pending.pop()
        try:
            total += process_cpu_seconds(current)
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except OSError:
            continue
        pending += [int(child) for child in children]
    return total


def measured(service: Service, phase: Coroutine[Any, Any, Phase]) -> Phase:
    """Run ``phase`` against ``service``, with the service's CPU time per request (warm-up
    requests included in both counts)."""
    assert service.proc is not None
    before = cpu_seconds(service.proc.pid)
    result = asyncio.run(phase)
    spent = cpu_seconds(service.proc.pid) - before
    result.cpu_us = round(spent / (result.requests + WARM_UP_REQUESTS) * 1e6)
    return result


def summarise(mode: str, concurrency: int, latencies: list[float], errors: int, seconds: float) -> Phase:
    ms = np.array(latencies) * 1000
    return Phase(
        mode,
        concurrency,
        len(latencies),
        errors,
        round(seconds, 2),
        round(len(latencies) / seconds, 1),
        round(float(np.percentile(ms, 50)), 3),
        round(float(np.percentile(ms, 99)), 3),
    )


def in_process(model: Model, feeds: dict, concurrency: int, requests: int, duration: float) -> Phase:
    """``concurrency`` threads calling session.run (it releases the GIL), like the worker's slots."""
    for _ in range(WARM_UP_REQUESTS):
        model.run(feeds)
    latencies: list[float] = []
    lock = threading.Lock()
    left = [requests]
    deadline = time.perf_counter() + duration

    def client() -> None:
        while time.perf_counter() < deadline:
            with lock:
                if left[0] <= 0:
                    return
                left[0] -= 1
            started = time.perf_counter()
            model.run(feeds)
            elapsed = time.perf_counter() - started
            with lock:
                latencies.append(elapsed)

    started = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return summarise(LOCAL, concurrency, latencies, 0, time.perf_counter() - started)


async def over_http(
    mode: str,
    url: str,
    body: bytes | None,
    *,
    concurrency: int,
    requests: int,
    duration: float,
    headers: dict[str, str] | None = None,
) -> Phase:
    """POST ``body`` to ``url`` (GET when there is no body) from ``concurrency`` clients."""
    method = "POST" if body is not None else "GET"
    headers = headers or {"Content-Type": "application/json"}
    latencies: list[float] = []
    errors = 0
    left = requests
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        for _ in range(WARM_UP_REQUESTS):
            async with session.request(method, url, data=body, headers=headers) as response:
                await response.read()
        deadline = time.perf_counter() + duration

        async def client() -> None:
            nonlocal left, errors
            while left > 0 and time.perf_counter() < deadline:
                left -= 1
                started = time.perf_counter()
                async with session.request(method, url, data=body, headers=headers) as response:
                    await response.read()
                    errors += response.status != 200
                latencies.append(time.perf_counter() - started)

        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        seconds = time.perf_counter() - started
    return summarise(mode, concurrency, latencies, errors, seconds)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=ROOT / "app" / "models" / "digits.onnx")
    parser.add_argument("--batch", type=int, default=8, help="digits per request (default: %(default)s)")
    parser.add_argument(
        "--concurrency", default="1,4", help="comma-separated client counts (default: %(default)s)"
    )
    parser.add_argument("--requests", type=int, default=5000, help="per phase at most (default: %(default)s)")
    parser.add_argument(
        "--duration", type=float, default=3.0, help="seconds per phase at most (default: %(default)s)"
    )
    parser.add_argument("--max-concurrency", type=int, default=1, help="the worker's (default: %(default)s)")
    parser.add_argument("--intra-op-threads", type=int, default=default_intra_op_threads(1))
    parser.add_argument(
        "--worker-app",
        type=Path,
        metavar="DIR",
        help="run the worker from another checkout's app/ (e.g. main's), for an A/B comparison",
    )
    parser.add_argument("--json", type=Path, help="also write the figures there")
    args = parser.parse_args()
    concurrencies = [int(c) for c in args.concurrency.split(",")]

    samples = load_digits().data[: args.batch].astype(np.float32)
    body = json.dumps({"inputs": samples.tolist()}).encode()
    model = Model(args.model, args.intra_op_threads)
    feeds = {model.signature.input_names[0]: samples}
    oip_json, _ = oip.encode_request(feeds, binary_data=False)
    oip_binary, binary_headers = oip.encode_request(feeds, binary_output=True)
    infer = f"/v2/models/{model_identity(args.model)[0]}/infer"
    variants = [
        (HTTP, "/run_model", body, None),
        (OIP_JSON, infer, oip_json, None),
        (OIP_BINARY, infer, oip_binary, binary_headers),
    ]
    threads = str(args.intra_op_threads)

    phases: list[Phase] = []
    port = free_port()
    worker_args = ["worker", "--model", str(args.model), "--bind", f"127.0.0.1:{port}"]
    worker_args += ["--max-concurrency", str(args.max_concurrency), "--intra-op-threads", threads]
    worker_args += ["--container-name", "bench"]  # logging at info, one line per request, as deployed
    env = {"PYTHONPATH": str(args.worker_app.resolve())} if args.worker_app else None
    with Service(worker_args, port, env=env) as service:
        for c in concurrencies:
            for mode, path, data, headers in variants:
                phase = over_http(
                    mode,
                    service.url + path,
                    data,
                    concurrency=c,
                    requests=args.requests,
                    duration=args.duration,
                    headers=headers,
                )
                phases.append(measured(service, phase))
        # The floor: the same server answering GET /healthz (no body, no JSON, no model).
        url = service.url + "/healthz"
        floor = over_http(FLOOR, url, None, concurrency=1, requests=args.requests, duration=args.duration)
        phases.append(measured(service, floor))
    for c in concurrencies:
        phases.append(in_process(model, feeds, c, args.requests, args.duration))

    print(
        f"model {args.model.name}, batch {args.batch}, intra-op threads {threads}, "
        f"worker --max-concurrency {args.max_concurrency}, {os.cpu_count()} CPUs shared by client and worker"
    )
    print(
        f"{'mode':<24} {'c':>3} {'requests':>9} {'errors':>6} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'worker CPU µs/req':>17}"
    )
    for p in phases:
        print(
            f"{p.mode:<24} {p.concurrency:>3} {p.requests:>9} {p.errors:>6} {p.per_second:>9.1f} "
            f"{p.p50_ms:>8.3f} {p.p99_ms:>8.3f} {'' if p.cpu_us is None else p.cpu_us:>17}"
        )
    for c in concurrencies:
        http = next(p for p in phases if p.concurrency == c and p.mode == HTTP)
        local = next(p for p in phases if p.concurrency == c and p.mode == LOCAL)
        print(
            f"c={c}: worker/in-process p50 x{http.p50_ms / local.p50_ms:.1f}, "
            f"p99 x{http.p99_ms / local.p99_ms:.1f}, throughput x{http.per_second / local.per_second:.3f}"
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps([asdict(p) for p in phases], indent=2) + "\n")
    return 1 if any(p.errors for p in phases) else 0


if __name__ == "__main__":
    raise SystemExit(main())
