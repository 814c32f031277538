"""Operations under load on the session's fleet (4 workers x 2 containers): every
scenario runs steady load through the orchestrator, counts every request, and none may
fail. In order: rollout to version 2; a worker node stopped; scale out 4 -> 6 in the
run that brings the stopped node back (site.yml keeps version 2 in service and replaces
no serving container; the new nodes join at version 2, with version 1 to roll back to);
a broken rollout; a worker container killed; scale in 6 -> 3 (by `onnxfleet autoscale --once`,
site.yml underneath); rollback of the three to
version 1; then the orchestrator's restart (after which site.yml changes nothing) and an
upgrade of its image, each a blue/green hand-over behind the edge. The load goes through
the edge (HTTPS, the client token).

"0 failed" alone could hide a drain that never happened (retries, queueing), so the
orchestrator's /status is sampled four times a second during each scenario: the nodes a
playbook switched must have been seen draining, and a container that is draining with
nothing in flight must get no request (its served counter stays, and no answer of the
load came from it in that window).

Each scenario's counts, latencies (p50, p99) and durations are written to
.cache/reports/operations.json (the README's Operations figures come from there)."""

from __future__ import annotations

import hashlib
import json
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
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
SAMPLE_EVERY_S = 0.25
VERSION_LABEL = '{{index .Config.Labels "onnxfleet.model-version"}}'


def docker(*args: str, check: bool = True) -> str:
    proc = subprocess.run(["docker", *args], capture_output=True, text=True, check=False, timeout=120)
    if check:
        assert proc.returncode == 0, f"docker {' '.join(args)}: {proc.stderr}"
    return proc.stdout.strip()


def status(fleet: DeployedFleet) -> dict[str, Any]:
    """The orchestrator's /status through the edge (HTTPS, the client token), {} while it
    does not answer."""
    token = {"Authorization": f"Bearer {fleet.token}"}
    request = urllib.request.Request(fleet.url + "/status", headers=token)
    try:
        with urllib.request.urlopen(request, timeout=5, context=fleet.tls()) as response:
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


@dataclass
class Sampler:
    """/status every SAMPLE_EVERY_S seconds: (wall time, {container: its status entry})."""

    fleet: DeployedFleet
    samples: list[tuple[float, dict[str, dict[str, Any]]]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        while not self._stop.wait(SAMPLE_EVERY_S):
            found = status(self.fleet).get("containers")
            if found is not None:
                self.samples.append((time.time(), {c["name"]: c for c in found}))

    def drained_nodes(self) -> set[str]:
        """Nodes all of whose containers were seen draining at the same time."""
        nodes: dict[str, list[dict[str, Any]]] = {}
        drained = set()
        for _when, containers in self.samples:
            nodes.clear()
            for entry in containers.values():
                nodes.setdefault(entry["node"], []).append(entry)
            drained |= {n for n, es in nodes.items() if all(e["state"] == "draining" for e in es)}
        return drained

    def idle_draining_windows(self) -> list[tuple[str, float, float, dict[str, Any], dict[str, Any]]]:
        """(container, from, to, its entry then, its entry later) for consecutive samples in
        which it was draining, with nothing in flight at the first."""
        windows = []
        for (t1, before), (t2, after) in zip(self.samples, self.samples[1:], strict=False):
            for name, then in before.items():
                later = after.get(name)
                if (
                    then["state"] == "draining"
                    and then["in_flight"] == 0
                    and later
                    and later["state"] == "draining"
                ):
                    windows.append((name, t1, t2, then, later))
        return windows


def drain_violations(sampler: Sampler, results: Results) -> list[str]:
    """Requests a draining, idle container took: by the orchestrator's counters, and by
    the answers the load got (sent after the window opened, answered before it closed)."""
    found = []
    for name, t1, t2, then, later in sampler.idle_draining_windows():
        if later["served"] != then["served"] or later["in_flight"] != 0:
            found.append(f"{name} took requests while draining ({t1:.2f}-{t2:.2f}): {then} -> {later}")
        found += [
            f"{name} answered a request sent at {results.started_at + r.start_s:.2f} while draining"
            for r in results.records
            if r.container == name and results.started_at + r.start_s >= t1
            and results.started_at + r.start_s + r.latency_s <= t2
        ]  # fmt: skip
    return found


def percentile(values: list[float], share: int) -> float:
    if len(values) < 2:
        return values[0] if values else 0.0
    return statistics.quantiles(values, n=100, method="inclusive")[share - 1]


def report(name: str, results: Results, seconds: float, sampler: Sampler | None = None, **extra: Any) -> None:
    records = results.records
    latencies = [r.latency_s * 1000 for r in records if r.ok]
    entry = {
        "scenario": name,
        "requests": len(records),
        "failed": results.failed,
        "statuses": dict(Counter(str(r.status) for r in records)),
        "errors": dict(Counter(r.error or f"http_{r.status}" for r in records if not r.ok)),
        "versions": dict(Counter(r.version or "-" for r in records)),
        "latency_ms": {
            "p50": round(percentile(latencies, 50), 1),
            "p99": round(percentile(latencies, 99), 1),
        },
        "seconds": round(seconds, 1),
        **({"drained_nodes": sorted(sampler.drained_nodes())} if sampler else {}),
        **extra,
    }
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    found = json.loads(REPORT.read_text()) if REPORT.exists() else {}
    found[name] = entry
    REPORT.write_text(json.dumps(found, indent=2) + "\n")
    print(json.dumps(entry))


@dataclass
class Watched:
    load: BackgroundLoad
    sampler: Sampler
    started: float

    @property
    def results(self) -> Results:
        return self.load.results

    def check(
        self,
        name: str,
        must_drain: frozenset[str] = frozenset(),
        **extra: Any,
    ) -> None:
        """Report, then: no failed request (also where a node or container stopped
        without a drain: a request it closed on unanswered is sent once more, elsewhere),
        the nodes named were drained, and no request went to a draining container."""
        report(name, self.results, time.monotonic() - self.started, self.sampler, **extra)
        failed = [r for r in self.results.records if not r.ok]
        assert failed == [], [r.to_json() for r in failed][:5]
        assert must_drain <= self.sampler.drained_nodes(), self.sampler.drained_nodes()
        assert drain_violations(self.sampler, self.results) == []


def more_answers(load: BackgroundLoad, count: int, timeout: float = 60) -> None:
    """Wait until ``count`` more requests have been answered (rather than sleep)."""
    target = len(load.records) + count
    wait_until(f"{count} more answers", lambda: len(load.records) >= target, timeout)


@contextmanager
def under_load(fleet: DeployedFleet) -> Iterator[Watched]:
    """Steady load, and /status sampled, while the block changes the fleet."""
    plan = LoadPlan(
        fleet.url + "/run_model",
        n=0,
        concurrency=CONCURRENCY,
        rate=RATE,
        timeout=60,
        token=fleet.token,
        cacert=str(fleet.cacert),
    )
    sampler = Sampler(fleet)
    thread = threading.Thread(target=sampler.run, name="status-sampler", daemon=True)
    load = BackgroundLoad(plan)
    watched = Watched(load, sampler, time.monotonic())
    thread.start()
    try:
        with load:
            wait_until("the load runs", lambda: len(load.records) >= 20, timeout=30)
            yield watched
            more_answers(load, 40)  # and a second of traffic after the change
    finally:
        sampler._stop.set()
        thread.join(5)


def playbook(fleet: DeployedFleet, *args: str, timeout: float = 1500) -> subprocess.CompletedProcess[str]:
    # the scenario's vars file first: later -e win
    return run(["ansible-playbook", "-e", fleet.vars_file, *args], env=fleet.env(), timeout=timeout)


def worker_nodes(fleet: DeployedFleet) -> list[str]:
    found = docker("ps", "--filter", f"label=onnxfleet.fleet={fleet.name}", "--filter",
                   "label=onnxfleet.role=worker", "--format", "{{.Names}}")  # fmt: skip
    return sorted(found.split())


def node_state(node: str) -> dict[str, Any]:
    """A worker node's model state (the local fact model_worker keeps), {} without one."""
    text = docker("exec", node, "cat", "/etc/ansible/facts.d/onnxfleet_model.fact", check=False)
    return json.loads(text) if text else {}


def node_versions(fleet: DeployedFleet) -> dict[str, str]:
    """{node container: the version its state names}, checked against what container 0 runs."""
    found = {}
    for node in worker_nodes(fleet):
        label = docker(
            "exec", node, "docker", "inspect", "-f", VERSION_LABEL, "onnxfleet-worker-0", check=False
        )
        found[node] = node_state(node).get("version", "-")
        assert label == found[node], f"{node}: its state says {found[node]}, container 0 runs {label}"
    return found


def container_ids(node: str) -> list[str]:
    return sorted(
        docker("exec", node, "docker", "ps", "-q", "--filter", "label=onnxfleet.service=worker").split()
    )


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


def test_rollout_switches_the_version_node_by_node_drained(ops: DeployedFleet, tmp_path_factory: Any) -> None:
    model = new_model(tmp_path_factory.mktemp("v2"), "2")
    with under_load(ops) as watched:
        proc = playbook(ops, "playbooks/rollout.yml", "-e", f"model_path={model}")
    assert proc.returncode == 0, explain(proc)
    watched.check("rollout", must_drain=frozenset({"worker-1", "worker-2", "worker-3", "worker-4"}))
    versions = [r.version for r in watched.results.records]
    assert versions[0] == ORIGINAL
    assert versions[-20:] == ["2"] * 20
    assert set(node_versions(ops).values()) == {"2"}
    # the drain answers were checked by the playbook itself, node by node, in order
    drained = [
        line.split("drain ")[1].split(":")[0] for line in proc.stdout.splitlines() if "'drain worker-" in line
    ]
    assert list(dict.fromkeys(drained)) == ["worker-1", "worker-2", "worker-3", "worker-4"]


def test_site_yml_after_a_rollout_keeps_it_and_a_new_node_joins_at_it(ops: DeployedFleet) -> None:
    """A stopped node comes back and the fleet scales out 4 -> 6 in one site.yml run:
    the serving nodes keep version 2 (no container replaced), the new ones join at 2."""
    before = {node: container_ids(node) for node in worker_nodes(ops)}
    stopped = f"{ops.name}-worker-2"
    with under_load(ops) as watched:
        docker("stop", "--time", "1", stopped)
        down = lambda: [serving(ops).get(f"worker-2/{i}") for i in (0, 1)] == ["down"] * 2  # noqa: E731
        wait_until("its containers are down", down, 30)
        more_answers(watched.load, 120)  # three seconds of traffic without it
    watched.check("worker node stopped")

    docker("start", stopped)
    with under_load(ops) as watched:
        proc = playbook(ops, "site.yml", "-e", "fleet_worker_count=6")
        assert proc.returncode == 0, explain(proc)
        wait_until("12 containers serve", lambda: all_up(ops, 12), 90)
    served = Counter(r.container for r in watched.results.records)
    watched.check("scale out 4 -> 6", served=dict(served))
    assert {r.version for r in watched.results.records} == {"2"}
    # nodes, not containers: with batching a few containers can carry 8 clients, and the
    # last in the table may get none in a short run (all 12 are ready: all_up above)
    assert {"worker-5", "worker-6", "worker-2"} <= {name.split("/")[0] for name in served}, served
    assert set(node_versions(ops).values()) == {"2"}
    for node, ids in before.items():
        if node != stopped:
            assert container_ids(node) == ids, f"{node}: its serving containers were replaced"
    for new in ("worker-5", "worker-6"):  # a rollback would take them back to it, as any node
        assert node_state(f"{ops.name}-{new}")["previous"] == ORIGINAL


def test_a_broken_model_stops_the_rollout_and_the_node_is_restored(
    ops: DeployedFleet, tmp_path: Path
) -> None:
    model = new_model(tmp_path / "broken", "broken", broken=True)
    with under_load(ops) as watched:
        proc = playbook(
            ops, "playbooks/rollout.yml", "-e", f"model_path={model}", "-e", "model_worker_ready_timeout=15"
        )
    assert proc.returncode != 0, "the rollout of a broken model must fail"
    assert "did not switch to version broken and serves 2 again" in proc.stdout, explain(proc)
    hosts = recap(proc.stdout)
    assert [h for h, r in hosts.items() if r["failed"]] == [f"{ops.name}-worker-1"], hosts
    assert f"{ops.name}-worker-2" not in hosts, "the rollout went on past the failed node"
    watched.check("broken rollout", must_drain=frozenset({"worker-1"}))
    assert {r.version for r in watched.results.records} == {"2"}
    assert set(node_versions(ops).values()) == {"2"}
    wait_until("all 12 containers serve again", lambda: all_up(ops, 12), 60)


def test_a_killed_worker_container_costs_no_request(ops: DeployedFleet) -> None:
    node = f"{ops.name}-worker-3"

    def restarts() -> int:
        return int(docker("exec", node, "docker", "inspect", "-f", "{{.RestartCount}}", "onnxfleet-worker-1"))

    before = restarts()
    with under_load(ops) as watched:
        pid = docker("exec", node, "docker", "inspect", "-f", "{{.State.Pid}}", "onnxfleet-worker-1")
        docker("exec", node, "sh", "-c", f"kill -KILL {pid}")  # a crash: the restart policy applies
        # (the engine may restart it within the orchestrator's two failed checks, unseen)
        wait_until("it is restarted (restart policy)", lambda: restarts() > before, 30)
        wait_until("it serves again", lambda: serving(ops).get("worker-3/1") in ("ready", "busy"), 90)
        more_answers(watched.load, 120)
    watched.check("worker container killed")


def autoscale_once(
    fleet: DeployedFleet, directory: Path, **settings: Any
) -> subprocess.CompletedProcess[str]:
    """``onnxfleet autoscale --once`` with its real actuator (site.yml, the scenario's vars
    file first), reading /status through the edge with the client token."""
    (directory / "token").write_text(fleet.token)
    (directory / "settings.json").write_text(json.dumps({"fleet_autoscaling": {"enabled": True, **settings}}))
    return run(
        [
            sys.executable, "-m", "onnxfleet", "autoscale", "--once", "--fleet", fleet.name,
            "--url", fleet.url, "--cacert", str(fleet.cacert), "--token-file", str(directory / "token"),
            "--settings", str(directory / "settings.json"), "--state-dir", str(directory / "state"),
            "--project-dir", str(ROOT), "--playbook-arg=-e", f"--playbook-arg={fleet.vars_file}",
        ],
        env=fleet.env(),
        timeout=1500,
    )  # fmt: skip


def test_scale_in_drains_the_nodes_before_they_go(ops: DeployedFleet, tmp_path: Path) -> None:
    """The scale in is the autoscaler's: at most 8 requests at once on 12 containers is
    well under 2 per container, so target tracking wants the minimum, 3, in one step."""
    with under_load(ops) as watched:
        proc = autoscale_once(ops, tmp_path, min_workers=3, max_workers=6, max_step=3, scale_in_delay_s=0)
    assert proc.returncode == 0, explain(proc)
    assert "autoscaler: scaling 6 \\u2192 3 because" in proc.stderr, explain(proc)
    assert "playbooks/site.yml -e fleet_worker_count=3" in proc.stderr, explain(proc)
    # An idle container leaves the table at once, between two /status samples: the drain is
    # proven by no failed request (checked here) and by the retire play having waited for
    # the orchestrator to let go of them before the nodes were removed.
    watched.check("scale in 6 -> 3")
    waited = proc.stdout.split("TASK [Wait until no container of theirs is in the orchestrator", 1)
    assert len(waited) == 2, explain(proc)
    assert f"ok: [{ops.name}-orchestrator]" in waited[1].split("TASK [", 1)[0], explain(proc)
    assert "TASK [Remove the retired nodes" in waited[1], explain(proc)
    assert sorted(serving(ops)) == [f"worker-{n}/{i}" for n in (1, 2, 3) for i in (0, 1)]
    nodes = docker("ps", "-a", "--filter", f"label=onnxfleet.fleet={ops.name}", "--format", "{{.Names}}")
    assert sorted(nodes.split()) == sorted(
        f"{ops.name}-{n}" for n in ("orchestrator", "worker-1", "worker-2", "worker-3")
    )


def test_rollback_returns_every_node_to_the_previous_version(ops: DeployedFleet) -> None:
    with under_load(ops) as watched:
        proc = playbook(ops, "playbooks/rollback.yml")
    assert proc.returncode == 0, explain(proc)
    watched.check("rollback", must_drain=frozenset({f"worker-{n}" for n in range(1, 4)}))
    assert watched.results.records[-1].version == ORIGINAL
    assert set(node_versions(ops).values()) == {ORIGINAL}


def colour_and_image(fleet: DeployedFleet) -> tuple[str, str]:
    """(the colour that serves, by the role's local fact; the image its container runs)."""
    node = f"{fleet.name}-orchestrator"
    fact = docker("exec", node, "cat", "/etc/ansible/facts.d/onnxfleet_orchestrator.fact")
    colour = json.loads(fact)["colour"]
    running = docker("exec", node, "docker", "ps", "--filter", "label=onnxfleet.service=orchestrator",
                     "--format", "{{.Names}} {{.Image}}")  # fmt: skip
    assert running.splitlines() == [f"onnxfleet-orchestrator-{colour} {running.split()[-1]}"], running
    return colour, running.split()[-1]


ROLE_PLAY = """\
- name: The orchestrator role alone
  hosts: orchestrators
  become: true
  gather_facts: false
  roles:
    - role: onnxfleet.serving.orchestrator
"""


def test_an_orchestrator_restart_is_a_blue_green_hand_over_that_loses_nothing(ops: DeployedFleet) -> None:
    before, image = colour_and_image(ops)
    # A colour given with -e would outrank the role's set_fact: the edge would stay on the
    # colour the hand-over stops. Refused before anything changes.
    refused = playbook(ops, "playbooks/restart_orchestrator.yml", "-e", f"fleet_orchestrator_colour={before}")
    assert refused.returncode != 0, explain(refused)
    assert "fleet_orchestrator_colour is given as an extra var" in refused.stdout, explain(refused)
    assert "orchestrator : Start the new colour]" not in refused.stdout, explain(refused)
    assert colour_and_image(ops) == (before, image)
    with under_load(ops) as watched:
        proc = playbook(ops, "playbooks/restart_orchestrator.yml")
        assert proc.returncode == 0, explain(proc)
    watched.check("orchestrator restart (blue/green)")
    after, same = colour_and_image(ops)
    assert (after, same) == ({"blue": "green", "green": "blue"}[before], image)
    # the hand-over went through the edge's switch, and the old colour was stopped after it
    assert "TASK [onnxfleet.serving.edge : Reload the edge now]" in proc.stdout, explain(proc)
    # After the scale-in, the rollback and the hand-over to the other colour, site.yml
    # (its smoke test through the colour that serves, too) finds nothing to change.
    again = playbook(ops, "site.yml", "-e", "fleet_worker_count=3")
    assert again.returncode == 0, explain(again)
    assert {h: r["changed"] for h, r in recap(again.stdout).items() if r["changed"]} == {}, explain(again)
    assert colour_and_image(ops) == (after, image)


def test_an_orchestrator_image_upgrade_is_a_hand_over_that_loses_nothing(
    ops: DeployedFleet, tmp_path: Path
) -> None:
    """A new app image for the orchestrator (another image ID: the running one plus a
    label, built on the node) through the role, as site.yml runs it: the container would
    change, so the other colour takes over."""
    before, image = colour_and_image(ops)
    node = f"{ops.name}-orchestrator"
    upgraded = "onnxfleet:upgrade-test"
    build = f"printf 'FROM {image}\\nLABEL onnxfleet.upgrade=test\\n' | docker build -q -t {upgraded} -"
    docker("exec", node, "sh", "-c", build)
    play = tmp_path / "orchestrator.yml"
    play.write_text(ROLE_PLAY)
    with under_load(ops) as watched:
        proc = playbook(ops, str(play), "-e", f"fleet_image={upgraded}")
        assert proc.returncode == 0, explain(proc)
    watched.check("orchestrator image upgrade (blue/green)")
    assert colour_and_image(ops) == ({"blue": "green", "green": "blue"}[before], upgraded)
    again = playbook(ops, str(play), "-e", f"fleet_image={upgraded}")
    assert again.returncode == 0, explain(again)
    assert {h: r["changed"] for h, r in recap(again.stdout).items() if r["changed"]} == {}, explain(again)
