"""`onnxfleet autoscale --once` as a real process against a real orchestrator on loopback
in front of sim backends, under a bounded load; the actuator is a script that records its
argv instead of running site.yml. Each --once is a new process, so a decision that needs
a window begun by the previous one also proves the state survives a restart."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.orchestrator.orch_support import SimFleet, call, chromium, orchestrator, routes, status, wait_for
from tests.support import Service

ADMIN = "autoscaler-test-admin-token-0123456789"
NODES = ("n1", "n2")
CLIENTS = 10


@pytest.fixture(scope="module")
def sim() -> Iterator[SimFleet]:
    fleet = SimFleet(size=4, service_ms=300.0)
    with fleet.service:
        yield fleet


@pytest.fixture
def orch(sim: SimFleet, tmp_path: Path) -> Iterator[Service]:
    table = routes(
        tmp_path / "routes.json",
        [(f"{node}/{i}", sim.url(2 * n + i), node, 1) for n, node in enumerate(NODES) for i in range(2)],
    )
    with orchestrator(table, env={"ONNXFLEET_ADMIN_TOKEN": ADMIN}) as service:
        yield service


def loaded(status: dict[str, Any]) -> bool:
    return status["totals"]["in_flight"] == 4 and status["queue"]["depth"] >= 4


@contextmanager
def load(url: str) -> Iterator[None]:
    """CLIENTS closed-loop clients: 4 in flight (1 per container), the others mostly queued
    (a loaded machine lags re-sending: 10 clients keep at least 5 ongoing, what the first
    decision needs, where 8 once left only 4)."""
    stop = threading.Event()

    def client() -> None:
        while not stop.is_set():
            call(url + "/run_model", "POST", {}, timeout=30)

    threads = [threading.Thread(target=client, daemon=True) for _ in range(CLIENTS)]
    for thread in threads:
        thread.start()
    try:
        wait_for(lambda: loaded(status_of(url)), what="4 requests in flight and at least 4 queued")
        yield
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)


def status_of(url: str) -> dict[str, Any]:
    return call(url + "/status")[2]  # type: ignore[no-any-return]


class Autoscaler:
    def __init__(self, tmp_path: Path, url: str, **settings: Any) -> None:
        self.dir = tmp_path
        self.url = url
        self.record = tmp_path / "argv.jsonl"
        self.actuator = tmp_path / "bin" / "ansible-playbook"
        self.actuator.parent.mkdir()
        self.actuator.write_text(
            f"#!{sys.executable}\nimport json, sys\n"
            f"with open({str(self.record)!r}, 'a') as f:\n    f.write(json.dumps(sys.argv[1:]) + '\\n')\n"
        )
        self.actuator.chmod(0o755)
        (tmp_path / "token").write_text(ADMIN + "\n")
        self.settings = tmp_path / "autoscaling.json"
        base = {
            "enabled": True,
            "min_workers": 1,
            "max_workers": 4,
            "target_ongoing_requests": 1,
            "max_step": 1,
        }
        self.settings.write_text(json.dumps({"fleet_autoscaling": {**base, **settings}}))

    def once(self, *args: str, fleet: str = "autoscaler-test") -> subprocess.CompletedProcess[str]:
        command = [
            sys.executable, "-m", "onnxfleet", "autoscale", "--once", "--fleet", fleet,
            "--url", self.url, "--token-file", str(self.dir / "token"), "--settings", str(self.settings),
            "--state-dir", str(self.dir / "state"), "--project-dir", str(self.dir),
            "--ansible-playbook", str(self.actuator),
            "--playbook-arg=-i", "--playbook-arg=inventory/x.yml", *args,
        ]  # fmt: skip
        return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)

    def calls(self) -> list[list[str]]:
        if not self.record.exists():
            return []
        return [json.loads(line) for line in self.record.read_text().splitlines()]


def decisions(proc: subprocess.CompletedProcess[str]) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in proc.stderr.splitlines() if line.startswith("{")]
    return [line for line in lines if "decision" in line]


def test_it_scales_out_under_load_then_in_and_shows_it(orch: Service, tmp_path: Path) -> None:
    scaler = Autoscaler(tmp_path, orch.url, scale_out_delay_s=1.0, scale_in_delay_s=0)
    with load(orch.url):
        first = scaler.once()
        assert first.returncode == 0, first.stderr
        [hold] = decisions(first)
        assert hold["decision"]["action"] == "hold"
        assert hold["decision"]["desired"] >= 3, hold
        assert "scale out to" in hold["msg"], hold
        assert scaler.calls() == []
        time.sleep(1.2)
        second = scaler.once()  # a new process: the window begun by the first one goes on
    assert second.returncode == 0, second.stderr
    [out] = decisions(second)
    assert out["msg"].startswith("autoscaler: scaling 2 → 3 because "), out
    assert out["decision"]["target"] == 3
    assert scaler.calls() == [["-i", "inventory/x.yml", "playbooks/site.yml", "-e", "fleet_worker_count=3"]]

    wait_for(lambda: status_of(orch.url)["totals"]["in_flight"] == 0, what="the load has ended")
    third = scaler.once()
    assert third.returncode == 0, third.stderr
    [scale_in] = decisions(third)
    assert scale_in["msg"].startswith("autoscaler: scaling 2 → 1 because 0 ongoing on 4 container(s)"), (
        scale_in
    )
    assert scaler.calls()[-1][-1] == "fleet_worker_count=1"
    assert len(scaler.calls()) == 2

    shown = status(orch)["autoscaler"]
    assert shown["decisions"] == {"scale_out": 1, "scale_in": 1, "hold": 1}
    last = shown["last"]
    assert (last["action"], last["current"], last["desired"], last["target"]) == ("scale_in", 2, 1, 1)
    assert last["dry_run"] is False
    metrics = call(orch.url + "/metrics")[2]
    assert 'onnxfleet_autoscaler_decisions_total{action="scale_out"} 1.0' in metrics
    assert 'onnxfleet_autoscaler_decisions_total{action="hold"} 1.0' in metrics
    assert "onnxfleet_autoscaler_target_workers 1.0" in metrics
    assert "onnxfleet_autoscaler_desired_workers 1.0" in metrics
    dom = chromium(tmp_path / "profile", "--dump-dom", orch.url + "/")
    assert '<p id="autoscaler">autoscaler: scale in 2 → 1 (wants 1): 0 ongoing on 4 container(s)' in dom


def test_a_dry_run_says_what_it_would_do_and_does_nothing(orch: Service, tmp_path: Path) -> None:
    scaler = Autoscaler(tmp_path, orch.url, scale_in_delay_s=0)
    for _ in range(2):  # and says it again: nothing changed
        proc = scaler.once("--dry-run")
        assert proc.returncode == 0, proc.stderr
        [would] = decisions(proc)
        assert would["msg"].startswith("autoscaler: would scale 2 → 1 because 0 ongoing"), would
    assert scaler.calls() == []
    last = status(orch)["autoscaler"]["last"]
    assert (last["action"], last["target"], last["dry_run"]) == ("scale_in", 1, True)
    dom = chromium(tmp_path / "profile", "--dump-dom", orch.url + "/")
    assert '<p id="autoscaler">autoscaler (dry run): scale in 2 → 1' in dom


def test_it_holds_while_a_playbook_runs_on_the_fleet(orch: Service, tmp_path: Path) -> None:
    scaler = Autoscaler(tmp_path, orch.url, scale_in_delay_s=0)
    playbook = tmp_path / "other" / "ansible-playbook"
    playbook.parent.mkdir()
    playbook.write_text("#!/bin/sh\nsleep 60\nexit 0\n")
    playbook.chmod(0o755)
    env = {**os.environ, "ONNXFLEET_FLEET": "autoscaler-test"}
    running = subprocess.Popen([str(playbook), "playbooks/site.yml"], env=env)
    try:
        cmdline = Path(f"/proc/{running.pid}/cmdline")
        wait_for(lambda: b"ansible-playbook" in cmdline.read_bytes(), what="the playbook runs")
        held = scaler.once()
        assert held.returncode == 0, held.stderr
        [hold] = decisions(held)
        assert hold["decision"]["action"] == "hold", hold
        reason = f"ansible-playbook running on fleet autoscaler-test (pid [{running.pid}])"
        assert hold["msg"] == f"autoscaler: hold at 2: {reason}"
        assert status(orch)["autoscaler"]["last"]["reason"].startswith("ansible-playbook running")
        other = scaler.once(fleet="autoscaler-test-other")  # another fleet's run is no reason
        [acted] = decisions(other)
        assert acted["msg"].startswith("autoscaler: scaling 2 → 1 because"), acted
    finally:
        running.kill()
        running.wait()
    assert len(scaler.calls()) == 1


def test_a_bad_decision_report_is_refused_with_what_was_expected(orch: Service) -> None:
    auth = {"Authorization": f"Bearer {ADMIN}"}
    good = {"action": "hold", "current": 2, "desired": 2, "target": 2, "reason": "r", "dry_run": False}
    assert call(orch.url + "/admin/autoscaler", "PUT", good)[0] == 401
    for bad in ({**good, "action": "jump"}, {**good, "target": -1}, {**good, "dry_run": "no"}, {}):
        code, _, body = call(orch.url + "/admin/autoscaler", "PUT", bad, headers=auth)
        assert code == 400, body
        assert "expected a JSON object" in body["error"], body
    assert call(orch.url + "/admin/autoscaler", "PUT", b"{", headers=auth)[0] == 400
    assert status(orch)["autoscaler"] == {
        "last": None,
        "decisions": {"scale_out": 0, "scale_in": 0, "hold": 0},
    }
    assert call(orch.url + "/admin/autoscaler", "PUT", good, headers=auth)[0] == 200
    assert status(orch)["autoscaler"]["decisions"]["hold"] == 1
