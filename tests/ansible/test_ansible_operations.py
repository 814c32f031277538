"""Operations under load on the session's fleet (4 workers x 2 containers): every
scenario runs steady load through the orchestrator, counts every request, and none may
fail. In order: rollout, rollback, a broken rollout, a worker container killed, a worker
node stopped, scale out 4 -> 6, scale in 6 -> 3; then the orchestrator's own restart,
which is measured (not zero: its clients' connections break).

Each scenario's counts and durations are written to .cache/reports/operations.json (the
README's Operations figures come from there)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from onnxfleet.load.runner import BackgroundLoad, LoadPlan, Results
from tests.ansible.ansible_support import DeployedFleet, explain, recap, run
from tests.support import ROOT

pytestmark = [pytest.mark.docker, pytest.mark.slow]

REPORT = ROOT / ".cache" / "reports" / "operations.json"
MODEL = ROOT / "app" / "models" / "digits.onnx"
CARD = ROOT / "app" / "models" / "digits.json"
ORIGINAL = json.loads(CARD.read_text())["version"]
# Open loop: 40 requests a second whatever happens (a closed loop would starve the
# playbook of CPU on 2 cores), at most 8 at once.
RATE = 40.0
CONCURRENCY = 8


def docker(*args: str, check: bool = True) -> str:
    proc = subprocess.run(["docker", *args], capture_output=True, text=True, check=False, timeout=120)
    if check:
        assert proc.returncode == 0, f"docker {' '.join(args)}: {proc.stderr}"
    return proc.stdout.strip()


def status(fleet: DeployedFleet) -> dict[str, Any]:
    """The orchestrator's /status, {} while it does not answer."""
    try:
        with urllib.request.urlopen(fleet.url + "/status", timeout=5) as response:
            return json.loads(response.read())  # type: ignore[no-any-return]
    except (OSError, ValueError):
        return {}


def wait_until(what: str, predicate: Any, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout}s waiting until {what}")


def serving(fleet: DeployedFleet) -> dict[str, str]:
    """{container: state} as the orchestrator sees them."""
    return {c["name"]: c["state"] for c in status(fleet).get("containers", [])}


def all_up(fleet: DeployedFleet, count: int) -> bool:
    """``count`` containers, each ready or busy (serving a request)."""
    states = list(serving(fleet).values())
    return len(states) == count and set(states) <= {"ready", "busy"}


def report(name: str, results: Results, seconds: float, **extra: Any) -> dict[str, Any]:
    records = results.records
    entry = {
        "scenario": name,
        "requests": len(records),
        "failed": results.failed,
        "statuses": dict(Counter(str(r.status) for r in records)),
        "errors": dict(Counter(r.error or f"http_{r.status}" for r in records if not r.ok)),
        "versions": dict(Counter(r.version or "-" for r in records)),
        "seconds": round(seconds, 1),
        **extra,
    }
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    found = json.loads(REPORT.read_text()) if REPORT.exists() else {}
    found[name] = entry
    REPORT.write_text(json.dumps(found, indent=2) + "\n")
    print(json.dumps(entry))
    return entry


@contextmanager
def under_load(fleet: DeployedFleet) -> Iterator[BackgroundLoad]:
    """Steady load while the block changes the fleet."""
    plan = LoadPlan(fleet.url + "/run_model", n=0, concurrency=CONCURRENCY, rate=RATE, timeout=60)
    load = BackgroundLoad(plan)
    with load:
        wait_until("the load runs", lambda: len(load.records) >= 20, timeout=30)
        yield load
        time.sleep(2)  # and a little after the change


def playbook(fleet: DeployedFleet, *args: str, timeout: float = 1500) -> subprocess.CompletedProcess[str]:
    # the scenario's vars file first: later -e win
    return run(["ansible-playbook", "-e", fleet.vars_file, *args], env=fleet.env(), timeout=timeout)


def node_versions(fleet: DeployedFleet) -> dict[str, str]:
    """{node container: model version label of its worker container 0}."""
    found = {}
    for node in docker("ps", "--filter", f"label=onnxfleet.fleet={fleet.name}", "--filter",
                       "label=onnxfleet.role=worker", "--format", "{{.Names}}").split():  # fmt: skip
        found[node] = docker(
            "exec", node, "docker", "inspect", "-f", '{{index .Config.Labels "onnxfleet.model-version"}}',
            "onnxfleet-worker-0", check=False,
        )  # fmt: skip
    return found


def new_model(directory: Path, version: str, broken: bool = False) -> Path:
    """A copy of the demo model under another version: other bytes (its doc_string, or
    garbage when broken) and a card that matches them."""
    directory.mkdir(parents=True, exist_ok=True)
    model = directory / "digits.onnx"
    if broken:
        model.write_bytes(b"this is not an ONNX model\n" * 100)
    else:
        import onnx

        proto = onnx.load(str(MODEL))
        proto.doc_string = f"digits, released as version {version}"
        onnx.save(proto, str(model))
    card = json.loads(CARD.read_text())
    card.update(version=version, sha256=hashlib.sha256(model.read_bytes()).hexdigest())
    (directory / "digits.json").write_text(json.dumps(card))
    return model


@pytest.fixture(scope="module")
def ops(fleet: DeployedFleet) -> DeployedFleet:
    assert fleet.molecule.returncode == 0, "the fleet scenario failed: " + explain(fleet.molecule)
    wait_until("all 8 containers are ready", lambda: all_up(fleet, 8))
    return fleet


def test_rollout_switches_the_version_with_no_failed_request(ops: DeployedFleet, tmp_path: Path) -> None:
    model = new_model(tmp_path / "v2", "2")
    started = time.monotonic()
    with under_load(ops) as load:
        proc = playbook(ops, "playbooks/rollout.yml", "-e", f"model_path={model}")
    took = time.monotonic() - started
    results = load.results
    assert proc.returncode == 0, explain(proc)
    report("rollout", results, took)
    assert results.failed == 0, [r.to_json() for r in results.records if not r.ok][:5]
    versions = [r.version for r in results.records]
    assert versions[0] == ORIGINAL
    assert versions[-20:] == ["2"] * 20
    assert set(node_versions(ops).values()) == {"2"}


def test_rollback_returns_to_the_previous_version(ops: DeployedFleet) -> None:
    started = time.monotonic()
    with under_load(ops) as load:
        proc = playbook(ops, "playbooks/rollback.yml")
    took = time.monotonic() - started
    results = load.results
    assert proc.returncode == 0, explain(proc)
    report("rollback", results, took)
    assert results.failed == 0, [r.to_json() for r in results.records if not r.ok][:5]
    assert results.records[-1].version == ORIGINAL
    assert set(node_versions(ops).values()) == {ORIGINAL}


def test_a_broken_model_stops_the_rollout_and_the_node_is_restored(
    ops: DeployedFleet, tmp_path: Path
) -> None:
    model = new_model(tmp_path / "broken", "broken", broken=True)
    started = time.monotonic()
    with under_load(ops) as load:
        proc = playbook(
            ops, "playbooks/rollout.yml", "-e", f"model_path={model}", "-e", "model_worker_ready_timeout=15"
        )
    took = time.monotonic() - started
    results = load.results
    assert proc.returncode != 0, "the rollout of a broken model must fail"
    assert "the rollout stopped on" in proc.stdout, explain(proc)
    hosts = recap(proc.stdout)
    assert [h for h, r in hosts.items() if r["failed"]] == [f"{ops.name}-worker-1"], hosts
    assert f"{ops.name}-worker-2" not in hosts, "the rollout went on past the failed node"
    report("broken rollout", results, took)
    assert results.failed == 0, [r.to_json() for r in results.records if not r.ok][:5]
    assert {r.version for r in results.records} == {ORIGINAL}
    assert set(node_versions(ops).values()) == {ORIGINAL}
    wait_until("all 8 containers serve again", lambda: all_up(ops, 8), 60)


def test_a_killed_worker_container_costs_no_request(ops: DeployedFleet) -> None:
    node = f"{ops.name}-worker-3"
    started = time.monotonic()
    with under_load(ops) as load:
        pid = docker("exec", node, "docker", "inspect", "-f", "{{.State.Pid}}", "onnxfleet-worker-1")
        docker("exec", node, "sh", "-c", f"kill -KILL {pid}")  # a crash: the restart policy applies
        wait_until("it is down", lambda: serving(ops).get("worker-3/1") == "down", 30)
        wait_until(
            "it is back (restart policy)", lambda: serving(ops).get("worker-3/1") in ("ready", "busy"), 90
        )
    took = time.monotonic() - started
    results = load.results
    report("worker container killed", results, took)
    assert results.failed == 0, [r.to_json() for r in results.records if not r.ok][:5]
    assert docker("exec", node, "docker", "inspect", "-f", "{{.RestartCount}}", "onnxfleet-worker-1") != "0"


def test_a_stopped_worker_node_costs_no_request_and_site_yml_brings_it_back_while_scaling_out(
    ops: DeployedFleet,
) -> None:
    node = f"{ops.name}-worker-2"
    started = time.monotonic()
    with under_load(ops) as load:
        docker("stop", "--time", "1", node)
        wait_until(
            "its containers are down",
            lambda: [serving(ops).get(f"worker-2/{i}") for i in (0, 1)] == ["down", "down"],
            30,
        )
        time.sleep(5)
    took = time.monotonic() - started
    results = load.results
    report("worker node stopped", results, took)
    assert results.failed == 0, [r.to_json() for r in results.records if not r.ok][:5]

    # Scale out 4 -> 6; the same run starts the stopped node's engine again.
    docker("start", node)
    started = time.monotonic()
    with under_load(ops) as load:
        proc = playbook(ops, "site.yml", "-e", "fleet_worker_count=6")
        assert proc.returncode == 0, explain(proc)
        wait_until("12 containers serve", lambda: all_up(ops, 12), 60)
    took = time.monotonic() - started
    results = load.results
    served = Counter(r.container for r in results.records[-400:])
    report("scale out 4 -> 6", results, took, served_last_400=dict(served))
    assert results.failed == 0, [r.to_json() for r in results.records if not r.ok][:5]
    assert {"worker-5/0", "worker-5/1", "worker-6/0", "worker-6/1", "worker-2/0"} <= set(served), served


def test_scale_in_drains_the_nodes_before_they_go(ops: DeployedFleet) -> None:
    started = time.monotonic()
    with under_load(ops) as load:
        proc = playbook(ops, "site.yml", "-e", "fleet_worker_count=3")
    took = time.monotonic() - started
    results = load.results
    assert proc.returncode == 0, explain(proc)
    report("scale in 6 -> 3", results, took)
    assert results.failed == 0, [r.to_json() for r in results.records if not r.ok][:5]
    assert sorted(serving(ops)) == [f"worker-{n}/{i}" for n in (1, 2, 3) for i in (0, 1)]
    nodes = docker("ps", "-a", "--filter", f"label=onnxfleet.fleet={ops.name}", "--format", "{{.Names}}")
    assert sorted(nodes.split()) == sorted(
        f"{ops.name}-{n}" for n in ("orchestrator", "worker-1", "worker-2", "worker-3")
    )
    again = playbook(ops, "site.yml", "-e", "fleet_worker_count=3")
    assert again.returncode == 0, explain(again)
    assert {h: r["changed"] for h, r in recap(again.stdout).items() if r["changed"]} == {}, explain(again)


def test_the_orchestrators_own_restart_is_measured(ops: DeployedFleet) -> None:
    node = f"{ops.name}-orchestrator"
    with under_load(ops) as load:
        restarted = time.monotonic()
        docker("exec", node, "docker", "restart", "--time", "10", "onnxfleet-orchestrator")
        wait_until("it serves again", lambda: status(ops).get("ready") is True, 60)
        back = time.monotonic() - restarted
    results = load.results
    failed = [r for r in results.records if not r.ok]
    outage = max((r.start_s + r.latency_s for r in failed), default=0.0) - min(
        (r.start_s for r in failed), default=0.0
    )
    report(
        "orchestrator restart",
        results,
        back,
        load_per_second=RATE,
        failed_kinds=dict(Counter(r.error or f"http_{r.status}" for r in failed)),
        failing_window_s=round(outage, 2),
    )
    # measured, not a goal: it comes back and serves
    assert back < 60
    assert results.records[-1].ok
