"""The Ansible suite: lint and syntax, the routing table, the roles' isolation, the
collection artifact, the local inventory against real nodes, and the molecule scenarios
(real fleets).

The molecule scenarios are the slow part, and mostly wait (package installs, image
loads, readiness): they run at once, once per session (`molecule_runs`). The whole
fleet, on which every serving role's promises are verified, is left deployed (`fleet`):
test_ansible_molecule.py checks it, then test_ansible_operations.py changes it under
load, and it is destroyed at the end."""

from __future__ import annotations

import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.ansible.ansible_support import (
    FLEET,
    FLEET_URL,
    FLEET_VARS,
    DeployedFleet,
    ansible_env,
    explain,
    leftovers,
    run,
)
from tests.support import ROOT

SCENARIOS = ("docker_engine", "fleet")


@pytest.fixture(scope="session")
def molecule_runs() -> dict[str, subprocess.CompletedProcess[str]]:
    """`molecule test -s NAME` of every scenario, concurrently (the fleet's without its
    final destroy): {scenario: the finished process, its output captured}."""
    with tempfile.TemporaryDirectory() as tmp:
        started = {}
        for scenario in SCENARIOS:
            args = ["molecule", "test", "-s", scenario] + (
                ["--destroy", "never"] if scenario == "fleet" else []
            )
            out = open(Path(tmp) / f"{scenario}.out", "w+")  # noqa: SIM115 (closed below)
            err = open(Path(tmp) / f"{scenario}.err", "w+")  # noqa: SIM115
            proc = subprocess.Popen(args, cwd=ROOT, env=ansible_env(), stdout=out, stderr=err, text=True)
            started[scenario] = (args, proc, out, err)
        finished = {}
        for scenario, (args, proc, out, err) in started.items():
            try:
                code = proc.wait(timeout=1700)
            except subprocess.TimeoutExpired:
                proc.kill()
                code = proc.wait()
            out.seek(0)
            err.seek(0)
            finished[scenario] = subprocess.CompletedProcess(args, code, out.read(), err.read())
            out.close()
            err.close()
    return finished


@pytest.fixture(scope="session")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The collection as `ansible-galaxy collection build` makes it, installed into a
    temporary collections path: that path (an ANSIBLE_COLLECTIONS_PATH)."""
    workdir = tmp_path_factory.mktemp("artifact")
    built = run(["ansible-galaxy", "collection", "build", str(ROOT), "--output-path", str(workdir)])
    assert built.returncode == 0, explain(built)
    (tarball,) = workdir.glob("onnxfleet-serving-*.tar.gz")
    installed = run(
        [
            "ansible-galaxy",
            "collection",
            "install",
            "--force",
            "--no-deps",
            "-p",
            str(workdir / "c"),
            str(tarball),
        ]
    )
    assert installed.returncode == 0, explain(installed)
    return workdir / "c"


@pytest.fixture(scope="session")
def fleet(molecule_runs: dict[str, subprocess.CompletedProcess[str]]) -> Iterator[DeployedFleet]:
    """The default fleet (4 workers x 2 containers + orchestrator), as its scenario left it."""
    try:
        yield DeployedFleet(FLEET, FLEET_URL, FLEET_VARS, molecule_runs["fleet"])
    finally:
        destroyed = run(["molecule", "destroy", "-s", "fleet"], env=ansible_env(), timeout=600)
        assert destroyed.returncode == 0, explain(destroyed)
        assert leftovers(FLEET) == "", "destroy left nodes behind"
