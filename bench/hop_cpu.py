#!/usr/bin/env python3
"""Where the CPU goes per request on a running local fleet, hop by hop (issue 19).

Drives the fleet's edge from this machine with `wrk` (HTTPS, the fleet's client token, the
demo model's example), and reads /proc/<pid>/stat of every process before and after: each
process is put under its node (by the node container's id in its cgroup) and its part
(haproxy, orchestrator, each worker container, dockerd, docker-proxy, journald, ...).
/proc/stat gives the machine's kernel time (system, softirq) over the same run. Prints
CPU seconds per 1,000 requests per row, the throughput, p50/p99 and the orchestrator's mean
batch (its /status, through the edge).

    ONNXFLEET_FLEET=whole-path .venv/bin/python -m bench.hop_cpu [--connections 32]
        [--duration 20] [--json FILE]

Figures only, nothing asserted: the machine is shared, so run it when it is quiet and
read the "elsewhere" row (CPU outside the fleet during the run).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import ssl
import subprocess
import sys
import tempfile
import urllib.request
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.fleet_batching import wrk_script

ROOT = Path(__file__).resolve().parent.parent
TICK = os.sysconf("SC_CLK_TCK")
FORMAT = "{{.ID}}\t{{.Names}}"
# process name -> part (anything else on a node: "other")
PARTS = {
    "haproxy": "haproxy",
    "dockerd": "dockerd",
    "docker-proxy": "docker-proxy",
    "containerd": "containerd",
    "containerd-shim": "containerd-shim",
    "containerd-shim-runc-v2": "containerd-shim",
    "systemd-journal": "journald",
    "systemd-journald": "journald",
    "wrk": "wrk (load)",
}


@dataclass
class Sample:
    node: str
    part: str
    user: int  # ticks
    system: int


def fleet_nodes(fleet: str) -> dict[str, str]:
    """{full container id: node name} of the fleet's node containers."""
    out = subprocess.run(
        [
            "docker",
            "ps",
            "--no-trunc",
            "--filter",
            f"label=onnxfleet.fleet={fleet}",
            "--format",
            '{{.ID}}\t{{.Label "onnxfleet.node"}}',
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    nodes = dict(line.split("\t") for line in out.splitlines() if line)
    # The nodes' own engines put their containers in cgroups of their own (/docker/<id>,
    # beside the node's): named "<node>:<container>"
    for name in list(nodes.values()):
        inner = subprocess.run(
            [
                "docker",
                "exec",
                f"{fleet}-{name}",
                "docker",
                "ps",
                "--no-trunc",
                "--format",
                "{{.ID}}\t{{.Names}}",
            ],
            capture_output=True,
            text=True,
            check=False,
        ).stdout
        for line in inner.splitlines():
            cid, container = line.split("\t")
            nodes[cid] = f"{name}:{container}"
    return nodes


def classify(pid: str, nodes: dict[str, str], published: str) -> tuple[str, str] | None:
    """(node, part) of a process, or None for one outside the fleet and the load."""
    try:
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
        cgroup = Path(f"/proc/{pid}/cgroup").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return None
    where = next((name for cid, name in nodes.items() if cid in cgroup), None)
    node, _, container = (where or "").partition(":")
    if container:
        return (node, "orchestrator" if "orchestrator" in container else f"worker {container}")
    node = where
    if node is None:
        # on this machine: the load, and what forwards the published port to the edge
        proxy = comm == "docker-proxy" and f"-host-port {published}" in cmdline
        host = comm in {"wrk", "dockerd"} or proxy
        return ("host", PARTS[comm]) if host else None
    # gunicorn names its processes "gunicorn: worker [<proc_name>]": the workers' proc_name
    # is onnxfleet-worker-<container>, the orchestrator's the default
    worker = re.search(r"--container-name (\S+)|^gunicorn: \w+ \[onnxfleet-worker-(\S+)\]", cmdline)
    if comm in PARTS:
        part = PARTS[comm]
    elif worker:
        part = f"worker {worker.group(1) or worker.group(2)}"
    elif node == "orchestrator" and (cmdline.startswith("gunicorn: ") or "--routes" in cmdline):
        part = "orchestrator"
    else:
        part = "other"
    return (node, part)


def snapshot(nodes: dict[str, str], published: str) -> dict[str, Sample]:
    samples = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        where = classify(pid, nodes, published)
        if where is None:
            continue
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        samples[pid] = Sample(*where, int(fields[11]), int(fields[12]))
    return samples


def machine() -> dict[str, int]:
    """/proc/stat's first line: the machine's ticks by kind."""
    names = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")
    values = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    return {name: int(v) for name, v in zip(names, values, strict=False)}


def request_body() -> str:
    card = json.loads((ROOT / "app" / "models" / "digits.json").read_text())
    return json.dumps({"inputs": card["example"]["inputs"]}, separators=(",", ":"))


def status(url: str, token: str, ca: Path) -> dict[str, Any]:
    request = urllib.request.Request(f"{url}/status", headers={"Authorization": f"Bearer {token}"})
    context = ssl.create_default_context(cafile=str(ca))
    with urllib.request.urlopen(request, context=context, timeout=10) as answer:
        return dict(json.load(answer))


def published_url(fleet: str) -> str:
    command = ["docker", "port", f"{fleet}-orchestrator"]
    out = subprocess.run(command, capture_output=True, text=True, check=True)
    return "https://" + out.stdout.splitlines()[0].split("-> ")[1].strip()


def node_url(fleet: str) -> str:
    """The edge at the orchestrator node's own address (as a client reaches an EC2 node),
    not through this machine's docker-proxy for the published port."""
    node = f"{fleet}-orchestrator"
    inspect = ["docker", "inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}", node]
    address = subprocess.run(inspect, capture_output=True, text=True, check=True).stdout.split()[0]
    mapping = subprocess.run(["docker", "port", node], capture_output=True, text=True, check=True).stdout
    return f"https://{address}:{mapping.split('/', 1)[0].strip()}"


def run(args: argparse.Namespace) -> dict[str, Any]:
    fleet = args.fleet
    state = Path(os.environ.get("XDG_STATE_HOME", Path.home() / ".local" / "state")) / "onnxfleet" / fleet
    ca, token = state / "tls" / "ca.pem", (state / "tokens" / "default").read_text().strip()
    url = published_url(fleet)
    published = url.rsplit(":", 1)[1]
    nodes = fleet_nodes(fleet)
    if not nodes:
        sys.exit(f"no nodes labelled onnxfleet.fleet={fleet} (ONNXFLEET_FLEET / --fleet)")
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(wrk_script(request_body().encode(), token))
    target = node_url(fleet) if getattr(args, "node_address", False) else url
    wrk = [
        "wrk",
        "-t1",
        f"-c{args.connections}",
        "--timeout",
        "10s",
        "-s",
        script.name,
        f"{target}/run_model",
    ]
    try:
        subprocess.run([*wrk[:2], "-c4", "-d2s", *wrk[3:]], capture_output=True, check=True)  # warm-up
        batching_before = status(url, token, ca).get("batching", {})
        before, machine_before = snapshot(nodes, published), machine()
        out = subprocess.run([*wrk, f"-d{args.duration}s"], capture_output=True, text=True, check=True).stdout
        after, machine_after = snapshot(nodes, published), machine()
        batching_after = status(url, token, ca).get("batching", {})
    finally:
        os.unlink(script.name)
    result = json.loads(next(line for line in out.splitlines() if line.startswith("RESULT "))[7:])
    requests = max(1, result["requests"])
    per_k = 1000.0 / requests / TICK  # ticks -> CPU seconds per 1,000 requests
    rows: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0.0, 0.0])
    for pid, a in after.items():
        b = before.get(pid)
        user, system = (a.user - b.user, a.system - b.system) if b else (a.user, a.system)
        rows[(a.node, a.part)][0] += user * per_k
        rows[(a.node, a.part)][1] += system * per_k
    ticks = {k: machine_after[k] - machine_before[k] for k in machine_after}
    busy = sum(v for k, v in ticks.items() if k not in ("idle", "iowait"))
    calls = batching_after.get("calls", 0) - batching_before.get("calls", 0)
    sent = batching_after.get("requests", 0) - batching_before.get("requests", 0)
    counted = sum(u + s for u, s in rows.values())
    return {
        "fleet": fleet,
        "url": target,
        "connections": args.connections,
        "duration_s": result["duration_us"] / 1e6,
        "requests": result["requests"],
        "rps": round(result["requests"] / (result["duration_us"] / 1e6), 1),
        "errors": result["errors"],
        "p50_ms": result["p50_us"] / 1000.0,
        "p99_ms": result["p99_us"] / 1000.0,
        "mean_batch": round(sent / calls, 2) if calls else None,
        "rows": [
            {"node": node, "part": part, "user": round(u, 3), "system": round(s, 3), "total": round(u + s, 3)}
            for (node, part), (u, s) in sorted(rows.items())
        ],
        "machine": {
            "busy": round(busy * per_k, 3),
            "system": round(ticks["system"] * per_k, 3),
            "softirq_irq": round((ticks["softirq"] + ticks["irq"]) * per_k, 3),
            "counted_processes": round(counted, 3),
            "elsewhere": round(busy * per_k - counted, 3),
        },
    }


def summarize(rows: list[dict[str, Any]]) -> dict[str, list[float]]:
    """The table's hops: rows of the same part on every node added up (workers apart)."""
    hops: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0, 0])
    for row in rows:
        part = row["part"]
        if part.startswith("worker "):
            key = "workers (all containers)"
        elif row["node"] == "host":
            key = f"host {part}"
        elif part in ("haproxy", "orchestrator"):
            key = part
        else:
            key = f"{part} (nodes)"
        hops[key][0] += row["user"]
        hops[key][1] += row["system"]
        hops[key][2] += 1
    return hops


def print_table(figures: dict[str, Any]) -> None:
    """The hops' CPU seconds per 1,000 requests, most first; then the machine's."""
    print(f"{'CPU s per 1,000 requests':<34} {'user':>7} {'system':>7} {'total':>7}")
    hops = summarize(figures["rows"])
    for key, (user, system, _) in sorted(hops.items(), key=lambda kv: -(kv[1][0] + kv[1][1])):
        print(f"{key:<34} {user:>7.3f} {system:>7.3f} {user + system:>7.3f}")
    m = figures["machine"]
    irq = m["softirq_irq"]
    print(f"{'kernel: softirq + irq (/proc/stat)':<34} {'':>7} {irq:>7.3f} {irq:>7.3f}")
    print(f"{'machine busy (/proc/stat)':<34} {'':>7} {m['system']:>7.3f} {m['busy']:>7.3f}")
    print(f"{'elsewhere (busy - processes above)':<34} {'':>7} {'':>7} {m['elsewhere']:>7.3f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fleet", default=os.environ.get("ONNXFLEET_FLEET") or "onnxfleet")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--duration", type=int, default=20, help="seconds of load")
    parser.add_argument(
        "--node-address",
        action="store_true",
        help="wrk to the orchestrator node's address, not the port published on this machine",
    )
    parser.add_argument("--rows", action="store_true", help="also every (node, part) row")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    figures = run(args)
    print(
        f"fleet {figures['fleet']}: wrk -t1 -c{figures['connections']} {figures['duration_s']:.0f}s to "
        f"{figures['url']}: {figures['requests']} requests, {figures['rps']} req/s, "
        f"p50 {figures['p50_ms']:.1f} ms, "
        f"p99 {figures['p99_ms']:.1f} ms, errors {figures['errors']}, mean batch {figures['mean_batch']}; "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}"
    )
    print_table(figures)
    if args.rows:
        for row in figures["rows"]:
            where = f"{row['node']:<14} {row['part']:<26}"
            print(f"  {where} {row['user']:>7.3f} {row['system']:>7.3f} {row['total']:>7.3f}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
