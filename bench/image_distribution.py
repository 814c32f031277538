"""Bytes that leave the controller when a new app image goes to the fleet.

    python -m bench.image_distribution [--workers 4,8] [--keep]

For each worker count: deploys a local fleet (ONNXFLEET_FLEET=bench-image) with site.yml,
then makes a new image (a copy of app/ with one more file: another content hash, so every
node lacks it) and runs the app_image role alone on every node, reading the byte counters
of the fleet network's bridge on the controller around that run: `tx_bytes` is what the
controller sent into the fleet network (SSH to the nodes; traffic between nodes is
switched by the bridge and not counted there). Each node's own interface counters show
where the image came from. Prints the figures (and the archive's size); asserts nothing.
Run it under the heavy lock: it deploys fleets.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
FLEET = "bench-image"
IMAGE_PLAY = """
- name: Put the app image on every node
  hosts: onnxfleet
  become: true
  gather_facts: false
  roles:
    - role: onnxfleet.serving.app_image
"""


def ansible(*args: str) -> None:
    env = {
        "PATH": f"{BIN}:/usr/local/bin:/usr/bin:/bin",
        "HOME": str(Path.home()),
        "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"),
        "ONNXFLEET_FLEET": FLEET,
        "ANSIBLE_NOCOLOR": "1",
    }
    command = [str(BIN / "ansible-playbook"), *args]
    proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        sys.exit(f"ansible-playbook {' '.join(args)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-2000:]}")


def bridge() -> Path:
    network = subprocess.run(["docker", "network", "inspect", "-f", "{{.Id}}", FLEET],
                             check=True, capture_output=True, text=True).stdout.strip()  # fmt: skip
    return Path("/sys/class/net") / f"br-{network[:12]}" / "statistics"


def counter(path: Path, name: str) -> int:
    return int((path / name).read_text())


def node_bytes() -> dict[str, tuple[int, int]]:
    """{node: (received, sent)} on each node's fleet interface."""
    listing = ["docker", "ps", "--filter", f"label=onnxfleet.fleet={FLEET}", "--format", "{{.Names}}"]
    names = subprocess.run(listing, check=True, capture_output=True, text=True).stdout.split()
    found = {}
    for name in sorted(names):
        out = subprocess.run(["docker", "exec", name, "cat", "/sys/class/net/eth0/statistics/rx_bytes",
                              "/sys/class/net/eth0/statistics/tx_bytes"],
                             check=True, capture_output=True, text=True).stdout.split()  # fmt: skip
        found[name.removeprefix(FLEET + "-")] = (int(out[0]), int(out[1]))
    return found


def measure(workers: int, keep: bool) -> dict[str, object]:
    shape = ["-e", f"fleet_worker_count={workers}", "-e", "fleet_published_port="]
    started = time.monotonic()
    ansible("site.yml", *shape)
    deployed = time.monotonic() - started
    with tempfile.TemporaryDirectory(prefix="bench-image-") as tmp:
        context = Path(tmp) / "app"
        shutil.copytree(ROOT / "app", context, symlinks=True)
        (context / "bench-marker.txt").write_text(f"{time.time()}\n")
        (Path(tmp) / "image.yml").write_text(IMAGE_PLAY)
        stats, nodes_before = bridge(), node_bytes()
        sent, received = counter(stats, "tx_bytes"), counter(stats, "rx_bytes")
        started = time.monotonic()
        ansible(str(Path(tmp) / "image.yml"), *shape, "-e", f"app_image_context={context}")
        took = time.monotonic() - started
        sent, received = counter(stats, "tx_bytes") - sent, counter(stats, "rx_bytes") - received
        nodes_after = node_bytes()
    archives = sorted(
        (Path.home() / ".cache/onnxfleet/images").glob("onnxfleet-*.tar.gz"), key=lambda p: p.stat().st_mtime
    )
    result = {
        "workers": workers,
        "nodes": len(nodes_after),
        "archive_mb": round(archives[-1].stat().st_size / 1e6, 1) if archives else None,
        "controller_sent_mb": round(sent / 1e6, 1),
        "controller_received_mb": round(received / 1e6, 1),
        "image_play_s": round(took, 1),
        "first_deploy_s": round(deployed, 1),
        "node_received_mb": {
            n: round((nodes_after[n][0] - nodes_before[n][0]) / 1e6, 1) for n in nodes_after
        },
        "node_sent_mb": {n: round((nodes_after[n][1] - nodes_before[n][1]) / 1e6, 1) for n in nodes_after},
    }
    if not keep:
        ansible("playbooks/teardown.yml")
    return result


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workers", default="4,8", help="worker counts, comma-separated (default 4,8)")
    parser.add_argument("--keep", action="store_true", help="leave the last fleet deployed")
    args = parser.parse_args()
    counts = [int(n) for n in args.workers.split(",")]
    results = [measure(n, args.keep and n == counts[-1]) for n in counts]
    print(f"{'workers':>7} {'nodes':>5} {'archive MB':>10} {'controller sent MB':>18} {'image play s':>12}")
    for r in results:
        row = (r["workers"], r["nodes"], r["archive_mb"], r["controller_sent_mb"], r["image_play_s"])
        print("{:>7} {:>5} {!s:>10} {:>18} {:>12}".format(*row))
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
