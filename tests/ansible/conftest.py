"""The Ansible suite: lint and syntax, the routing table, the roles' isolation, the
collection artifact, the local inventory against real nodes, and the molecule scenarios
(real fleets).

The molecule scenarios are the slow part, and mostly wait (package installs, image
loads, readiness): they run at once, once per session, started before the first test
so that the quick tests run meanwhile (`molecule_runs`). The whole
fleet, on which every serving role's promises are verified, is left deployed (`fleet`):
test_ansible_molecule.py checks it, then test_ansible_operations.py changes it under
load, and it is destroyed at the end."""

from __future__ import annotations

import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

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
MOLECULE_TIMEOUT_S = 1700  # each scenario's bound, from the session's first test


class MoleculeRuns:
    """`molecule test -s NAME` of every scenario, all at once and in the background (the
    fleet's without its final destroy), started as soon as the session knows it needs
    them, so that the tests that do not run meanwhile."""

    def __init__(self) -> None:
        self.tmp = tempfile.TemporaryDirectory(prefix="onnxfleet-molecule-")
        self.started: dict[str, tuple[list[str], subprocess.Popen[str], IO[str], IO[str]]] = {}
        for scenario in SCENARIOS:
            args = [
                "molecule",
                "test",
                "-s",
                scenario,
                *(["--destroy", "never"] if scenario == "fleet" else []),
            ]
            out = open(Path(self.tmp.name) / f"{scenario}.out", "w+")  # noqa: SIM115 (closed in finish)
            err = open(Path(self.tmp.name) / f"{scenario}.err", "w+")  # noqa: SIM115
            proc = subprocess.Popen(args, cwd=ROOT, env=ansible_env(), stdout=out, stderr=err, text=True)
            self.started[scenario] = (args, proc, out, err)

    def finish(self, timeout: float = MOLECULE_TIMEOUT_S) -> dict[str, subprocess.CompletedProcess[str]]:
        """{scenario: the finished process, its output captured}."""
        finished = {}
        for scenario, (args, proc, out, err) in self.started.items():
            try:
                code = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                code = proc.wait()
            out.seek(0)
            err.seek(0)
            finished[scenario] = subprocess.CompletedProcess(args, code, out.read(), err.read())
            out.close()
            err.close()
        self.tmp.cleanup()
        return finished


RUNS = pytest.StashKey[MoleculeRuns]()


def needs_molecule(item: pytest.Item) -> bool:
    return "molecule_runs" in getattr(item, "fixturenames", ())


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The tests on real fleets last: the rest of the tier runs while they converge.

    The first of them waits for the scenarios (``MoleculeRuns.finish``, up to its own
    bound): pytest-timeout's per-test default must not cut that wait short on a slow
    machine, where the quick tests end long before the fleet is up."""
    items.sort(key=needs_molecule)
    first = next((item for item in items if needs_molecule(item)), None)
    if first is not None:
        first.add_marker(pytest.mark.timeout(MOLECULE_TIMEOUT_S + 300))


@pytest.hookimpl(tryfirst=True)
def pytest_runtestloop(session: pytest.Session) -> None:
    """The scenarios start with the first test (never on --collect-only)."""
    if not session.config.option.collectonly and any(needs_molecule(item) for item in session.items):
        session.config.stash[RUNS] = MoleculeRuns()


@pytest.fixture(scope="session")
def molecule_runs(pytestconfig: pytest.Config) -> dict[str, subprocess.CompletedProcess[str]]:
    return pytestconfig.stash[RUNS].finish()


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
