#!/usr/bin/env python3
"""The whole front door (edge + orchestrator, HTTPS) against HAProxy alone with TLS, same 8
backends; the plain-HTTP comparison of bench/orchestrator_vs_haproxy in the same run.

For each service time (1, 5, 20 ms) one `python -m tests.simbackend` process serves 8 fake
containers, and four paths lead to them:

- ``haproxy``: HAProxy alone, plain HTTP, `balance leastconn`, `maxconn 1` per server
  (bench/orchestrator_vs_haproxy's configuration, one thread);
- ``orchestrator``: the orchestrator's API listener, plain HTTP, with a client token;
- ``haproxy tls``: the same HAProxy with TLS on its listener (the edge's TLS settings);
- ``front door``: the edge as roles/edge renders it (TLS, limits, per-client tracking with
  a limit no client reaches, keep-alive to the orchestrator) in front of that same
  orchestrator.

`wrk` (one thread, ``--connections`` keep-alive clients, a small JSON POST with a bearer
token) drives each path in turn, alternating, best of ``--rounds``; then one connection at a
time through the orchestrator alone and through the front door, for the latency the edge
adds when nothing queues. Prints requests/s, efficiency (throughput / (8 / service time)),
p50/p99, errors, the CPU time per request of the proxy (for the front door: edge and
orchestrator apart), the ratio to HAProxy on the same transport, and what the edge adds.
Figures only, nothing asserted.

    flock /work/plan/heavy.lock .venv/bin/python -m bench.front_door [--duration 4] [--rounds 2]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from bench.orchestrator_vs_haproxy import (
    CONTAINERS,
    HAPROXY_CFG,
    TABLE,
    WRK_SCRIPT,
    arguments,
    cpu_seconds,
    print_header,
    require_tools,
    wait_up,
    worker_pid,
    wrk,
)
from tests.edge.edge_support import CLIENT_TOKEN, FrontDoor
from tests.edge.pki import Pki, make_pki
from tests.orchestrator.orch_support import SimFleet
from tests.support import free_port

ROLE_DEFAULTS = Path(__file__).resolve().parent.parent / "roles" / "edge" / "defaults" / "main.yml"
# per-client tracking stays on (its cost is part of the edge) with a limit wrk never reaches
EDGE = {"edge_rate_limit_requests": 10**9, "fleet_max_body_bytes": 8 * 1024 * 1024}


def tls_settings() -> str:
    """The edge's TLS settings (roles/edge's defaults), for HAProxy alone."""
    edge = yaml.safe_load(ROLE_DEFAULTS.read_text())
    lines = [
        f"ssl-default-bind-{name} " + ":".join(edge[f"edge_tls_{name}"])
        for name in ("ciphers", "ciphersuites", "curves")
    ]
    minimum = edge["edge_tls_min_version"]
    lines.append(f"ssl-default-bind-options prefer-client-ciphers ssl-min-ver {minimum} no-tls-tickets")
    return "".join(f"\n    {line}" for line in lines)


def haproxy_config(work: Path, name: str, port: int, servers: str, pem: Path | None) -> Path:
    text = HAPROXY_CFG.format(port=port, servers=servers)
    if pem is not None:
        text = text.replace("    nbthread 1", "    nbthread 1" + tls_settings())
        text = text.replace(f"bind 127.0.0.1:{port}", f"bind 127.0.0.1:{port} ssl crt {pem} alpn http/1.1")
    path = work / f"{name}.cfg"
    path.write_text(text)
    return path


def wait_listening(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def run_wrk(url: str, script: Path, connections: int, duration: float, pids: list[int]) -> dict[str, float]:
    """One wrk run; the CPU time per request of each of ``pids`` (the first: the proxy's)."""
    before = [cpu_seconds(pid) for pid in pids]
    result = wrk(url, script, connections, duration)
    requests = max(1, int(result["requests"]))
    cpu = [(cpu_seconds(pid) - b) / requests * 1e6 for pid, b in zip(pids, before, strict=True)]
    result["cpu_us"] = cpu[0]
    result["cpu2_us"] = cpu[1] if len(cpu) > 1 else float("nan")
    return result


def measure(service_ms: float, args: argparse.Namespace, pki: Pki, work: Path, script: Path) -> list[dict]:
    sim = SimFleet(size=CONTAINERS, service_ms=service_ms)
    servers = "\n".join(f"    server s{i} 127.0.0.1:{p} maxconn 1" for i, p in enumerate(sim.ports))
    plain_port, tls_port = free_port(), free_port()
    results: dict[str, dict[str, float]] = {}
    latency: dict[str, dict[str, float]] = {}
    with contextlib.ExitStack() as stack:
        stack.enter_context(sim.service)
        front = stack.enter_context(
            FrontDoor(
                pki,
                sim,
                containers=CONTAINERS,
                queue={"max_length": 10000, "timeout_s": 30},
                edge=EDGE,
                orchestrator_args=("--no-access-log",),
            )
        )
        haproxies = []
        for name, port, pem in (("plain", plain_port, None), ("tls", tls_port, pki.pem_file)):
            config = haproxy_config(work, name, port, servers, pem)
            process = subprocess.Popen(["haproxy", "-f", str(config)], stdout=subprocess.DEVNULL)
            stack.callback(process.wait, 10)
            stack.callback(process.terminate)
            haproxies.append(process)
        wait_up(f"http://127.0.0.1:{plain_port}/readyz")
        wait_listening(tls_port)
        orchestrator = worker_pid(front.blue)
        edge = front.haproxy.workers()[0]
        targets = [
            ("haproxy", f"http://127.0.0.1:{plain_port}/run_model", [haproxies[0].pid]),
            ("orchestrator", f"{front.blue.url}/run_model", [orchestrator]),
            ("haproxy tls", f"https://127.0.0.1:{tls_port}/run_model", [haproxies[1].pid]),
            ("front door", f"https://127.0.0.1:{front.ports.tls}/run_model", [edge, orchestrator]),
        ]
        for _, url, _ in targets:
            wrk(url, script, args.connections, 1)  # warm-up: connections, caches
        # alternate them and keep each one's best round: on a shared machine the least
        # disturbed round is the closest to what the path can do
        for _ in range(args.rounds):
            for name, url, pids in targets:
                r = run_wrk(url, script, args.connections, args.duration, pids)
                if name not in results or r["rps"] > results[name]["rps"]:
                    results[name] = r
            for name, url, pids in (targets[1], targets[3]):
                r = run_wrk(url, script, 1, args.duration, pids)
                if name not in latency or r["p50_us"] < latency[name]["p50_us"]:
                    latency[name] = r
    ideal = CONTAINERS / (service_ms / 1000.0)
    rows = []
    for name, r in results.items():
        base = results["haproxy tls" if name in ("haproxy tls", "front door") else "haproxy"]["rps"]
        rows.append(
            {
                "service_ms": service_ms,
                "path": name,
                "rps": round(r["rps"], 1),
                "efficiency": round(r["rps"] / ideal, 3),
                "p50_ms": r["p50_us"] / 1000.0,
                "p99_ms": r["p99_us"] / 1000.0,
                "errors": r["errors"],
                "cpu_us_per_request": round(r["cpu_us"]),
                "orchestrator_cpu_us_per_request": None if name != "front door" else round(r["cpu2_us"]),
                "vs_haproxy": round(r["rps"] / base, 3),
            }
        )
    alone, door = latency["orchestrator"], latency["front door"]
    added = {
        "service_ms": service_ms,
        "path": "edge adds (1 connection)",
        "p50_ms": (door["p50_us"] - alone["p50_us"]) / 1000.0,
        "p99_ms": (door["p99_us"] - alone["p99_us"]) / 1000.0,
        "orchestrator_alone_p50_ms": alone["p50_us"] / 1000.0,
        "front_door_p50_ms": door["p50_us"] / 1000.0,
        "edge_cpu_us_per_request": round(door["cpu_us"]),
    }
    return [*rows, added]


def main() -> int:
    args = arguments(__doc__.splitlines()[0], "path").parse_args()
    require_tools()
    load_before = os.getloadavg()[0]
    work = Path(tempfile.mkdtemp(prefix="onnxfleet-bench-"))
    script = work / "post.lua"
    token = f'\nwrk.headers["Authorization"] = "Bearer {CLIENT_TOKEN}"'
    content_type = 'wrk.headers["Content-Type"] = "application/json"'
    script.write_text(WRK_SCRIPT.replace(content_type, content_type + token))
    try:
        pki = make_pki(work / "pki")
        rows = [row for service_ms in args.service_ms for row in measure(service_ms, args, pki, work, script)]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    columns = {
        "path": 13,
        **{k: w for k, w in TABLE.items() if k != "vs HAProxy"},
        "+orch. µs": 9,
        "vs HAProxy": 10,
    }
    print_header(
        args, "HAProxy alone: 1 thread; edge: roles/edge defaults (a thread per CPU)", load_before, columns
    )
    for row in rows:
        if "rps" not in row:
            continue
        orchestrator_cpu = row["orchestrator_cpu_us_per_request"]
        print(
            f"{row['service_ms']:>6g}ms {row['path']:<13} {row['rps']:>9.1f} {row['efficiency']:>7.3f} "
            f"{row['p50_ms']:>8.2f} {row['p99_ms']:>8.2f} {row['errors']:>6} {row['cpu_us_per_request']:>10} "
            f"{'' if orchestrator_cpu is None else orchestrator_cpu:>9} {row['vs_haproxy']:>10.3f}"
        )
    print("\nwhat the edge adds (one connection, nothing queues: front door minus orchestrator alone)")
    for row in rows:
        if "rps" in row:
            continue
        print(
            f"{row['service_ms']:>6g}ms  p50 {row['p50_ms']:+.2f} ms "
            f"({row['orchestrator_alone_p50_ms']:.2f} -> {row['front_door_p50_ms']:.2f}), "
            f"p99 {row['p99_ms']:+.2f} ms, "
            f"edge CPU {row['edge_cpu_us_per_request']} µs/request"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
