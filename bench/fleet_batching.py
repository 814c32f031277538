#!/usr/bin/env python3
"""The fleet through the orchestrator with dynamic batching off and on, against onnxruntime in-process.

    .venv/bin/python -m bench.fleet_batching [--clients 8,32] [--duration 8] [--rounds 1]
    .venv/bin/python -m bench.fleet_batching --url https://127.0.0.1:8443 --token-file F --cacert F

By default starts 8 real workers (`onnxfleet worker`, the demo model, 2 per "node",
sized as the fleet sizes its containers on this machine: one slot, one onnxruntime
thread) and two real orchestrators on loopback in front of them, one without batching
and one with it (routing table: the card's model, ``batching`` as given by
``--max-batch-size``/``--max-delay-ms``). ``wrk`` (one thread, keep-alive) posts the
model card's example to ``/run_model`` from ``c`` clients; each phase is warmed up, then
measured for ``--duration`` seconds; with ``--rounds`` > 1 the modes alternate and each
keeps its best round. Prints requests/s, p50/p99 (wrk's), errors, the orchestrator's and
the workers' CPU time per request, the mean batch; the speed-up at each client count; and
the fraction of onnxruntime in-process (same model, one thread per core, batch 1 and batch
``--max-batch-size``) that the fleet reaches. With ``--url`` it measures a deployed
fleet as it is configured (run it with ``fleet_batching`` off and on). Asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import ssl
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

from bench.orchestrator_vs_haproxy import WRK_SCRIPT, cpu_seconds, worker_pid, wrk
from onnxfleet.worker.model import Model
from tests.support import ROOT, Service, free_port

CARD = json.loads((ROOT / "app" / "models" / "digits.json").read_text())
MODEL_FILE = ROOT / "app" / "models" / CARD["file"]
NODES, PER_NODE = 4, 2
# wrk's summary line, as bench/orchestrator_vs_haproxy.py prints it
DONE = "done = function" + WRK_SCRIPT.split("done = function", 1)[1]


def wrk_script(body: bytes, token: str | None) -> str:
    lines = ['wrk.method = "POST"', f"wrk.body = {json.dumps(body.decode())}"]
    lines.append('wrk.headers["Content-Type"] = "application/json"')
    if token:
        lines.append(f'wrk.headers["Authorization"] = "Bearer {token}"')
    return "\n".join(lines) + "\n" + DONE


def run_wrk(url: str, script: Path, clients: int, duration: float) -> dict[str, Any]:
    """One wrk run; its own CPU time per request too (is the load generator keeping up?)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = wrk(url, script, clients, duration)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    spent = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    result["wrk_cpu_us"] = spent / max(1, result["requests"]) * 1e6
    return result


def get_json(url: str, token: str | None = None, cacert: Path | None = None) -> Any:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    context = ssl.create_default_context(cafile=str(cacert)) if cacert else None
    with urllib.request.urlopen(request, timeout=10, context=context) as response:
        return json.loads(response.read())


def check_answer(url: str, body: bytes, token: str | None, cacert: Path | None) -> None:
    """The example gets the card's label: the fleet under test answers correctly."""
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})}
    context = ssl.create_default_context(cafile=str(cacert)) if cacert else None
    request = urllib.request.Request(url + "/run_model", body, headers, method="POST")
    with urllib.request.urlopen(request, timeout=10, context=context) as response:
        label = json.loads(response.read())["outputs"]["label"]
    if label != [CARD["example"]["label"]]:
        sys.exit(f"{url}: the card's example got label {label}, expected [{CARD['example']['label']}]")


def in_process(batch: int, threads: int, duration: float) -> float:
    """Rows per second of onnxruntime called in-process from ``threads`` threads, one
    intra-op thread each (the ceiling: the same model and cores, no serving at all)."""
    model = Model(MODEL_FILE, 1, True)
    example = np.array(CARD["example"]["inputs"], dtype=np.float32)
    feeds = {model.signature.input_names[0]: np.repeat(example, batch, axis=0)}
    for _ in range(50):
        model.run(feeds)
    counts = [0] * threads
    deadline = time.perf_counter() + duration

    def loop(index: int) -> None:
        while time.perf_counter() < deadline:
            model.run(feeds)
            counts[index] += 1

    started = time.perf_counter()
    workers = [threading.Thread(target=loop, args=(i,)) for i in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    return sum(counts) * batch / (time.perf_counter() - started)


class LocalFleet:
    """8 workers and two orchestrators (batching off, on) on loopback."""

    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.workers = []
        for node in range(1, NODES + 1):
            for index in range(PER_NODE):
                port = free_port()
                command = ["worker", "--model", str(MODEL_FILE), "--bind", f"127.0.0.1:{port}"]
                command += ["--max-concurrency", "1", "--intra-op-threads", "1"]
                command += ["--container-name", f"worker-{node}/{index}"]
                self.workers.append(Service(command, port))
        containers = [
            {"name": f"worker-{n}/{i}", "url": w.url, "node": f"worker-{n}"}
            for (n, i), w in zip(
                ((n, i) for n in range(1, NODES + 1) for i in range(PER_NODE)), self.workers, strict=True
            )
        ]
        base = {"containers": containers, "queue": {"max_length": 10000, "timeout_s": 30}}
        model = {key: CARD[key] for key in ("name", "batch", "inputs", "outputs")}
        batching = {"max_batch_size": args.max_batch_size, "max_delay_ms": args.max_delay_ms}
        self.orchestrators: dict[str, Service] = {}
        for mode, table in (("off", base), ("on", {**base, "model": model, "batching": batching})):
            path = work / f"routes-{mode}.json"
            path.write_text(json.dumps(table))
            port = free_port()
            command = ["orchestrator", "--routes", str(path), "--bind", f"127.0.0.1:{port}"]
            if not args.access_log:
                command.append("--no-access-log")
            self.orchestrators[mode] = Service(command, port)

    def __enter__(self) -> LocalFleet:
        try:
            for w in self.workers:  # all load their model at once
                w.start()
            for w in self.workers:
                w.wait_ready()
            for o in self.orchestrators.values():
                o.start().wait_ready()
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        for service in [*self.orchestrators.values(), *self.workers]:
            service.__exit__(None, None, None)

    def worker_cpu(self) -> float:
        return sum(cpu_seconds(worker_pid(w)) for w in self.workers)


def measure_local(args: argparse.Namespace, work: Path, script: Path) -> list[dict[str, Any]]:
    best: dict[tuple[str, int], dict[str, Any]] = {}
    with LocalFleet(args, work) as fleet:
        check_answer(fleet.orchestrators["on"].url, example_body(), None, None)
        for _ in range(args.rounds):
            for clients in args.clients:
                for mode, orch in fleet.orchestrators.items():
                    url = orch.url + "/run_model"
                    run_wrk(url, script, clients, args.warm_up)
                    pid = worker_pid(orch)
                    before = (
                        cpu_seconds(pid),
                        fleet.worker_cpu(),
                        get_json(orch.url + "/status")["batching"],
                    )
                    r = run_wrk(url, script, clients, args.duration)
                    status = get_json(orch.url + "/status")["batching"]
                    requests = max(1, r["requests"])
                    r["orch_cpu_us"] = (cpu_seconds(pid) - before[0]) / requests * 1e6
                    r["workers_cpu_us"] = (fleet.worker_cpu() - before[1]) / requests * 1e6
                    calls = status.get("calls", 0) - before[2].get("calls", 0)
                    sent = status.get("requests", 0) - before[2].get("requests", 0)
                    r["mean_batch"] = sent / calls if calls else 1.0
                    key = (mode, clients)
                    if key not in best or r["rps"] > best[key]["rps"]:
                        best[key] = {"mode": f"batching {mode}", "clients": clients, **r}
    return [best[(mode, c)] for c in args.clients for mode in ("off", "on")]


def measure_url(args: argparse.Namespace, script: Path) -> list[dict[str, Any]]:
    token = args.token_file.read_text().strip() if args.token_file else None
    check_answer(args.url, example_body(), token, args.cacert)
    rows = []
    for clients in args.clients:
        url = args.url + "/run_model"
        run_wrk(url, script, clients, args.warm_up)
        best = max(
            (run_wrk(url, script, clients, args.duration) for _ in range(args.rounds)), key=lambda r: r["rps"]
        )
        rows.append({"mode": "as deployed", "clients": clients, **best})
    return rows


def example_body() -> bytes:
    return json.dumps({"inputs": CARD["example"]["inputs"]}).encode()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", default="8,32", help="comma-separated (default: %(default)s)")
    parser.add_argument(
        "--duration", type=float, default=8.0, help="seconds per phase (default: %(default)s)"
    )
    parser.add_argument(
        "--warm-up", type=float, default=2.0, help="seconds before each phase (default: %(default)s)"
    )
    parser.add_argument(
        "--rounds", type=int, default=1, help="alternating rounds, best kept (default: %(default)s)"
    )
    parser.add_argument("--max-batch-size", type=int, default=32, help="batching on (default: %(default)s)")
    parser.add_argument("--max-delay-ms", type=float, default=0.0, help="batching on (default: %(default)s)")
    parser.add_argument("--access-log", action="store_true", help="orchestrator request log on, as deployed")
    parser.add_argument("--url", help="measure this deployed fleet instead (https://HOST:PORT)")
    parser.add_argument("--token-file", type=Path, help="with --url: a client token")
    parser.add_argument("--cacert", type=Path, help="with --url: the fleet's CA (checks the first answer)")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()
    args.clients = [int(c) for c in args.clients.split(",")]
    if shutil.which("wrk") is None:
        sys.exit("wrk is missing: make setup installs it (apt-get install wrk)")
    load_before = os.getloadavg()[0]
    work = Path(tempfile.mkdtemp(prefix="onnxfleet-bench-"))
    script = work / "post.lua"
    token = args.token_file.read_text().strip() if args.token_file else None
    script.write_text(wrk_script(example_body(), token))
    try:
        rows = measure_url(args, script) if args.url else measure_local(args, work, script)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    cores = os.cpu_count() or 1
    ceiling_1 = in_process(1, cores, 3.0)
    ceiling_n = in_process(args.max_batch_size, cores, 3.0)

    target = (
        args.url
        or f"{NODES * PER_NODE} workers (1 slot, 1 onnxruntime thread each) + orchestrator on loopback"
    )
    print(
        f"{target}; model {CARD['name']} (card example, /run_model JSON); wrk -t1, "
        f"{args.duration:g}s phases, "
        f"best of {args.rounds}; batching on = max_batch_size {args.max_batch_size}, max_delay_ms "
        f"{args.max_delay_ms:g}; orchestrator access log {'on' if args.access_log else 'off'}; {cores} CPUs "
        f"shared by everything; load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after"
    )
    header = (
        f"{'mode':<14} {'c':>3} {'req/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'errors':>6} {'mean batch':>10}"
    )
    header += f" {'orch µs/req':>11} {'workers µs/req':>14} {'wrk µs/req':>10}"
    print(header)
    for r in rows:
        print(
            f"{r['mode']:<14} {r['clients']:>3} {r['rps']:>8.1f} {r['p50_us'] / 1000:>7.2f} "
            f"{r['p99_us'] / 1000:>7.2f} {r['errors']:>6} {r.get('mean_batch', float('nan')):>10.2f} "
            f"{r.get('orch_cpu_us', float('nan')):>11.0f} {r.get('workers_cpu_us', float('nan')):>14.0f} "
            f"{r['wrk_cpu_us']:>10.0f}"
        )
    if not args.url:
        for c in args.clients:
            off = next(r for r in rows if r["clients"] == c and r["mode"] == "batching off")
            on = next(r for r in rows if r["clients"] == c and r["mode"] == "batching on")
            print(
                f"c={c}: batching on/off throughput x{on['rps'] / off['rps']:.2f}, "
                f"p99 {on['p99_us'] / 1000:.1f} vs {off['p99_us'] / 1000:.1f} ms"
            )
    print(
        f"onnxruntime in-process, {cores} threads: {ceiling_1:,.0f} rows/s at batch 1, "
        f"{ceiling_n:,.0f} rows/s at batch {args.max_batch_size}"
    )
    for r in rows:
        print(
            f"{r['mode']} c={r['clients']}: {r['rps'] / ceiling_1:.1%} of batch 1, "
            f"{r['rps'] / ceiling_n:.1%} of batch {args.max_batch_size}"
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
