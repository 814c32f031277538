#!/usr/bin/env python3
"""One worker's throughput and latency against onnxruntime called in-process.

    .venv/bin/python -m bench.worker [--batch 8] [--concurrency 1,4] [--duration 3]

Starts a real worker (gunicorn + onnxruntime, `onnxfleet worker`) on a loopback port,
sends the same digits batch to ``POST /run_model`` from ``c`` concurrent aiohttp clients,
then runs the same batch through the same onnxruntime session settings in this process
from ``c`` threads. Prints requests/s, p50 and p99 for both and the overhead ratios,
plus the HTTP floor: the same worker answering ``GET /healthz`` (no JSON, no model).
Each phase stops after ``--requests`` requests or ``--duration`` seconds, whichever
comes first. Client and worker share this machine's CPUs: the figures are a floor.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import aiohttp
import numpy as np
from sklearn.datasets import load_digits

from onnxfleet.worker.cpus import default_intra_op_threads
from onnxfleet.worker.model import Model
from tests.support import Service, free_port

ROOT = Path(__file__).resolve().parent.parent

WARM_UP_REQUESTS = 50
HTTP, FLOOR, LOCAL = "worker POST /run_model", "worker GET /healthz", "onnxruntime in-process"


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
    mode: str, url: str, body: bytes | None, *, concurrency: int, requests: int, duration: float
) -> Phase:
    """POST ``body`` to ``url`` (GET when there is no body) from ``concurrency`` clients."""
    method = "POST" if body is not None else "GET"
    headers = {"Content-Type": "application/json"}
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
    parser.add_argument("--json", type=Path, help="also write the figures there")
    args = parser.parse_args()
    concurrencies = [int(c) for c in args.concurrency.split(",")]

    samples = load_digits().data[: args.batch].astype(np.float32)
    body = json.dumps({"inputs": samples.tolist()}).encode()
    threads = str(args.intra_op_threads)

    phases: list[Phase] = []
    port = free_port()
    worker_args = ["worker", "--model", str(args.model), "--bind", f"127.0.0.1:{port}"]
    worker_args += ["--max-concurrency", str(args.max_concurrency), "--intra-op-threads", threads]
    worker_args += ["--container-name", "bench"]  # logging at info, one line per request, as deployed
    with Service(worker_args, port) as service:
        for c in concurrencies:
            url = service.url + "/run_model"
            phases.append(
                asyncio.run(
                    over_http(HTTP, url, body, concurrency=c, requests=args.requests, duration=args.duration)
                )
            )
        # The floor: the same server answering GET /healthz (no body, no JSON, no model).
        url = service.url + "/healthz"
        phases.append(
            asyncio.run(
                over_http(FLOOR, url, None, concurrency=1, requests=args.requests, duration=args.duration)
            )
        )
    model = Model(args.model, args.intra_op_threads)
    feeds = {model.signature.input_names[0]: samples}
    for c in concurrencies:
        phases.append(in_process(model, feeds, c, args.requests, args.duration))

    print(
        f"model {args.model.name}, batch {args.batch}, intra-op threads {threads}, "
        f"worker --max-concurrency {args.max_concurrency}, {os.cpu_count()} CPUs shared by client and worker"
    )
    print(f"{'mode':<24} {'c':>3} {'requests':>9} {'errors':>6} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8}")
    for p in phases:
        print(
            f"{p.mode:<24} {p.concurrency:>3} {p.requests:>9} {p.errors:>6} {p.per_second:>9.1f} "
            f"{p.p50_ms:>8.3f} {p.p99_ms:>8.3f}"
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
