#!/usr/bin/env python3
"""One model against three models on the same number of containers, through the orchestrator.

    .venv/bin/python -m bench.models [--clients 12] [--duration 5] [--rounds 2] [--json FILE]

Starts real `onnxfleet worker`s on loopback (one slot, one onnxruntime thread each, as
the fleet sizes its containers on this machine) and two real orchestrators, one per
set-up, each with a version-2 routing table (`models`) over 6 containers:

- A: digits on all 6 containers; load on digits only.
- B: digits, iris and credit on 2 containers each; load on the three at once, the same
  total client count split evenly.

Ten worker processes in all (6 digits, 2 iris, 2 credit): B's digits containers are two
of A's; the others idle while the other set-up runs (health checks only). ``wrk`` (one
thread per model, keep-alive) posts each model's card example to
``/run_model?model=NAME``; each phase is warmed up, then measured for ``--duration``
seconds; the set-ups alternate A, B, A, B for ``--rounds`` and each keeps its round with
the highest total throughput. Prints requests/s, p50/p99 (wrk's) and errors per model and
the totals per set-up. Asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from bench.fleet_batching import DONE
from tests.support import ROOT, Service, free_port

MODELS_DIR = ROOT / "app" / "models"
MODELS = ("digits", "iris", "credit")
CONTAINERS = 6
CARDS = {name: json.loads((MODELS_DIR / f"{name}.json").read_text()) for name in MODELS}


def body(model: str) -> bytes:
    return json.dumps({"inputs": CARDS[model]["example"]["inputs"]}).encode()


def wrk_script(model: str) -> str:
    lines = ['wrk.method = "POST"', f"wrk.body = {json.dumps(body(model).decode())}"]
    lines.append('wrk.headers["Content-Type"] = "application/json"')
    return "\n".join(lines) + "\n" + DONE


def wrk(url: str, script: Path, clients: int, duration: float) -> dict[str, Any]:
    """One wrk run of ``duration`` seconds. wrk takes whole seconds only, so it is given
    more and stopped by SIGINT, after which it still reports (its own measured duration)."""
    command = [
        "wrk",
        "-t1",
        f"-c{clients}",
        f"-d{int(duration) + 10}s",
        "--timeout",
        "10s",
        "-s",
        str(script),
        url,
    ]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        try:
            time.sleep(duration)
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=30)
        except BaseException:
            proc.kill()
            raise
    line = next((line for line in out.splitlines() if line.startswith("RESULT ")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({proc.returncode}) against {url}: {out[-1000:]}{err[-1000:]}")
    result: dict[str, Any] = json.loads(line[len("RESULT ") :])
    result["rps"] = result["requests"] / (result["duration_us"] / 1e6)
    return result


def check_answer(url: str, model: str) -> None:
    """The card's example gets the card's label from this model: the routing is right."""
    request = urllib.request.Request(
        f"{url}/run_model?model={model}", body(model), {"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        label = json.loads(response.read())["outputs"]["label"]
    if label != [CARDS[model]["example"]["label"]]:
        sys.exit(
            f"{model}: the card's example got label {label}, expected [{CARDS[model]['example']['label']}]"
        )


def split(total: int, parts: int) -> list[int]:
    """``total`` clients over ``parts`` models, as evenly as possible, at least 1 each."""
    return [max(1, total // parts + (1 if i < total % parts else 0)) for i in range(parts)]


class LocalFleet:
    """The workers and the two orchestrators (set-ups A and B) on loopback."""

    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        counts = {"digits": CONTAINERS, "iris": CONTAINERS // 3, "credit": CONTAINERS // 3}
        self.workers: dict[str, list[Service]] = {}
        for model, count in counts.items():
            self.workers[model] = []
            for index in range(count):
                port = free_port()
                command = ["worker", "--model", str(MODELS_DIR / CARDS[model]["file"])]
                command += [
                    "--bind",
                    f"127.0.0.1:{port}",
                    "--max-concurrency",
                    "1",
                    "--intra-op-threads",
                    "1",
                ]
                command += ["--container-name", f"worker/{model}/{index}"]
                self.workers[model].append(Service(command, port))
        share = CONTAINERS // len(MODELS)
        tables = {
            "A": [self.entry(args, "digits", self.workers["digits"], default=True)],
            "B": [
                self.entry(args, model, self.workers[model][:share], default=model == "digits")
                for model in MODELS
            ],
        }
        self.orchestrators: dict[str, Service] = {}
        for setup, models in tables.items():
            path = work / f"routes-{setup}.json"
            table = {"queue": {"max_length": 10000, "timeout_s": 30}, "models": models}
            path.write_text(json.dumps(table))
            port = free_port()
            command = ["orchestrator", "--routes", str(path), "--bind", f"127.0.0.1:{port}"]
            if not args.access_log:
                command.append("--no-access-log")
            self.orchestrators[setup] = Service(command, port)

    @staticmethod
    def entry(args: argparse.Namespace, model: str, workers: list[Service], default: bool) -> dict[str, Any]:
        containers = [
            {"name": f"worker/{model}/{i}", "url": w.url, "node": "worker"} for i, w in enumerate(workers)
        ]
        entry: dict[str, Any] = {"name": model, "containers": containers, "default": default}
        if args.max_batch_size > 0:
            entry["signature"] = {key: CARDS[model][key] for key in ("batch", "inputs", "outputs")}
            entry["batching"] = {"max_batch_size": args.max_batch_size, "max_delay_ms": args.max_delay_ms}
        return entry

    def all_workers(self) -> list[Service]:
        return [w for ws in self.workers.values() for w in ws]

    def __enter__(self) -> LocalFleet:
        try:
            for w in self.all_workers():  # all load their model at once
                w.start()
            for w in self.all_workers():
                w.wait_ready()
            for o in self.orchestrators.values():
                o.start().wait_ready()
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        for service in [*self.orchestrators.values(), *self.all_workers()]:
            service.__exit__(None, None, None)


def load(url: str, scripts: dict[str, Path], clients: dict[str, int], duration: float) -> dict[str, Any]:
    """One wrk per model, all at once; each model's figures."""
    results: dict[str, Any] = {}
    failures: list[BaseException] = []

    def run(model: str) -> None:
        try:
            results[model] = wrk(f"{url}/run_model?model={model}", scripts[model], clients[model], duration)
        except BaseException as exc:  # re-raised below, in the caller's thread
            failures.append(exc)

    threads = [threading.Thread(target=run, args=(model,)) for model in clients]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if failures:
        raise failures[0]
    return results


def measure(args: argparse.Namespace, work: Path) -> dict[str, list[dict[str, Any]]]:
    scripts = {}
    for model in MODELS:
        scripts[model] = work / f"{model}.lua"
        scripts[model].write_text(wrk_script(model))
    clients = {
        "A": {"digits": args.clients},
        "B": dict(zip(MODELS, split(args.clients, len(MODELS)), strict=True)),
    }
    best: dict[str, list[dict[str, Any]]] = {}
    with LocalFleet(args, work) as fleet:
        for setup, orch in fleet.orchestrators.items():
            for model in clients[setup]:
                check_answer(orch.url, model)
        for _ in range(args.rounds):
            for setup, orch in fleet.orchestrators.items():
                if args.warm_up > 0:
                    load(orch.url, scripts, clients[setup], args.warm_up)
                results = load(orch.url, scripts, clients[setup], args.duration)
                rows = [
                    {"setup": setup, "model": m, "clients": clients[setup][m], **results[m]}
                    for m in clients[setup]
                ]
                if setup not in best or total(rows)["rps"] > total(best[setup])["rps"]:
                    best[setup] = rows
    return best


def total(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The set-up's sums; wrk's percentiles cannot be merged, so the worst model's p99."""
    return {
        "setup": rows[0]["setup"],
        "model": "total",
        "clients": sum(r["clients"] for r in rows),
        "requests": sum(r["requests"] for r in rows),
        "rps": sum(r["rps"] for r in rows),
        "errors": sum(r["errors"] for r in rows),
        "p50_us": max(r["p50_us"] for r in rows),
        "p99_us": max(r["p99_us"] for r in rows),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--clients", type=int, default=12, help="total, split over B's models (default: %(default)s)"
    )
    parser.add_argument(
        "--duration", type=float, default=5.0, help="seconds per phase (default: %(default)s)"
    )
    parser.add_argument(
        "--warm-up", type=float, default=1.0, help="seconds before each phase (default: %(default)s)"
    )
    parser.add_argument("--rounds", type=int, default=2, help="A,B rounds, best kept (default: %(default)s)")
    parser.add_argument(
        "--max-batch-size",
        type=int,
        default=0,
        help="orchestrator batching per model, 0 = off (default: %(default)s)",
    )
    parser.add_argument(
        "--max-delay-ms", type=float, default=0.0, help="with batching (default: %(default)s)"
    )
    parser.add_argument("--access-log", action="store_true", help="orchestrator request log on, as deployed")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()
    if args.clients < len(MODELS) or args.rounds < 1 or args.duration <= 0:
        parser.error(f"--clients must be at least {len(MODELS)}, --rounds at least 1, --duration above 0")
    if shutil.which("wrk") is None:
        sys.exit("wrk is missing: make setup installs it (apt-get install wrk)")
    load_before = os.getloadavg()[0]
    work = Path(tempfile.mkdtemp(prefix="onnxfleet-bench-models-"))
    try:
        best = measure(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    rows = [row for setup in ("A", "B") for row in (*best[setup], total(best[setup]))]
    batching = (
        f"batching {args.max_batch_size}/{args.max_delay_ms:g} ms" if args.max_batch_size else "no batching"
    )
    print(
        f"{CONTAINERS} containers (workers: 1 slot, 1 onnxruntime thread each) + orchestrator on loopback; "
        f"A = digits on {CONTAINERS}, B = {'/'.join(MODELS)} on {CONTAINERS // len(MODELS)} each; "
        f"card examples to /run_model?model=; wrk -t1 per model, {args.clients} clients in all; "
        f"{args.duration:g}s phases, best of {args.rounds} alternating rounds; {batching}; "
        f"access log {'on' if args.access_log else 'off'}; {os.cpu_count()} CPUs shared by everything; "
        f"load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after"
    )
    print(
        f"{'setup':<5} {'model':<7} {'c':>3} {'requests':>8} {'req/s':>8} "
        f"{'p50 ms':>7} {'p99 ms':>7} {'errors':>6}"
    )
    for r in rows:
        print(
            f"{r['setup']:<5} {r['model']:<7} {r['clients']:>3} {r['requests']:>8} {r['rps']:>8.1f} "
            f"{r['p50_us'] / 1000:>7.2f} {r['p99_us'] / 1000:>7.2f} {r['errors']:>6}"
        )
    a, b = total(best["A"]), total(best["B"])
    print(
        f"B/A total throughput x{b['rps'] / a['rps']:.2f}; digits alone {best['A'][0]['rps']:.1f} req/s on "
        f"{CONTAINERS} containers, beside iris and credit {best['B'][0]['rps']:.1f} req/s on "
        f"{CONTAINERS // 3} (totals: p50/p99 are the worst model's)"
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
