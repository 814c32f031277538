#!/usr/bin/env python3
"""The whole path against its parts, in one run (issue 19): a deployed local fleet through its
edge, the same orchestrator with the same workers on loopback, and a worker directly.

1. **through the edge**: `wrk` from this machine to the fleet's published HTTPS port, the
   fleet's client token, the demo model's example (bench/hop_cpu.py), at each ``--clients``;
   requests/s, p50/p99, errors, the orchestrator's mean batch; then the CPU per hop table of
   the last run.
2. **orchestrator on loopback**: 8 real `onnxfleet worker` processes (the demo model, one
   slot, one onnxruntime thread, as the fleet sizes its containers here) behind one real
   orchestrator with batching as the fleet runs it (bench/fleet_batching.LocalFleet),
   access log on as deployed; plain HTTP, no node, no TLS.
3. **a worker directly**: one of those workers, at 1 client (its slot holds one request).

    ONNXFLEET_FLEET=whole-path .venv/bin/python -m bench.whole_path [--clients 8 32] [--duration 8]

Without a deployed fleet (``--no-fleet``) only 2 and 3. Figures only, nothing asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench import hop_cpu
from bench.fleet_batching import CARD, LocalFleet, get_json, run_wrk, wrk_script
from bench.orchestrator_vs_haproxy import cpu_seconds, worker_pid


def through_edge(args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    for clients in args.clients:
        hop_args = argparse.Namespace(fleet=args.fleet, connections=clients, duration=args.duration)
        rows.append({"path": "through the edge", "clients": clients, **hop_cpu.run(hop_args)})
    return rows


def on_loopback(args: argparse.Namespace) -> list[dict[str, Any]]:
    body = json.dumps({"inputs": CARD["example"]["inputs"]}, separators=(",", ":")).encode()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="onnxfleet-bench-") as tmp:
        work = Path(tmp)
        script = work / "post.lua"
        script.write_text(wrk_script(body, None))
        fleet_args = argparse.Namespace(max_batch_size=32, max_delay_ms=0.0, access_log=True)
        with LocalFleet(fleet_args, work) as fleet:
            orch = fleet.orchestrators["on"]
            pid = worker_pid(orch)
            for clients in args.clients:
                run_wrk(orch.url + "/run_model", script, clients, 2)  # warm-up
                before = (cpu_seconds(pid), fleet.worker_cpu(), get_json(orch.url + "/status")["batching"])
                r = run_wrk(orch.url + "/run_model", script, clients, args.duration)
                after = get_json(orch.url + "/status")["batching"]
                requests = max(1, r["requests"])
                calls = after.get("calls", 0) - before[2].get("calls", 0)
                sent = after.get("requests", 0) - before[2].get("requests", 0)
                rows.append(
                    {
                        "path": "orchestrator on loopback",
                        "clients": clients,
                        **r,
                        "mean_batch": round(sent / calls, 2) if calls else None,
                        "orch_cpu_ms": (cpu_seconds(pid) - before[0]) / requests * 1e3,
                        "workers_cpu_ms": (fleet.worker_cpu() - before[1]) / requests * 1e3,
                    }
                )
            worker = fleet.workers[0]
            run_wrk(worker.url + "/run_model", script, 1, 2)
            r = run_wrk(worker.url + "/run_model", script, 1, args.duration)
            rows.append({"path": "one worker directly", "clients": 1, **r})
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fleet", default=os.environ.get("ONNXFLEET_FLEET") or "onnxfleet")
    parser.add_argument("--no-fleet", action="store_true", help="only the loopback parts")
    parser.add_argument("--clients", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--duration", type=int, default=8, help="seconds per measurement")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    edge = [] if args.no_fleet else through_edge(args)
    loopback = on_loopback(args)
    print(
        f"wrk -t1, {args.duration}s per run, the demo model's example; {os.cpu_count()} CPUs, "
        f"load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after"
    )
    names = f"{'req/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'errors':>6} {'mean batch':>10}"
    print(f"{'path':<26} {'clients':>7} {names}")
    for row in [*edge, *loopback]:
        batch = row.get("mean_batch")
        print(
            f"{row['path']:<26} {row['clients']:>7} {row['rps']:>8.1f} "
            f"{row.get('p50_ms', row.get('p50_us', 0) / 1000):>7.2f} "
            f"{row.get('p99_ms', row.get('p99_us', 0) / 1000):>7.2f} {row['errors']:>6} "
            f"{'' if batch is None else batch:>10}"
        )
    if edge:
        print(f"\nCPU per hop, through the edge at {edge[-1]['clients']} clients:")
        hop_cpu.print_table(edge[-1])
    for row in loopback:
        if "orch_cpu_ms" in row:
            print(
                f"loopback, {row['clients']} clients: orchestrator {row['orch_cpu_ms']:.3f}, "
                f"workers {row['workers_cpu_ms']:.3f} CPU s per 1,000 requests"
            )
    if args.json:
        args.json.write_text(json.dumps([*edge, *loopback], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
