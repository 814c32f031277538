"""The molecule scenarios (extensions/molecule/), run exactly as `molecule test -s NAME`:
create real Docker-in-Docker nodes, converge, prove idempotence, verify, destroy. The
deployed whole fleet is also checked with `ansible-playbook site.yml --check --diff`."""

from __future__ import annotations

import re
import subprocess

import pytest

from tests.ansible.ansible_support import DeployedFleet, explain, leftovers, recap, run

SCENARIOS = {
    # scenario: the fleet name its molecule.yml gives its nodes
    "docker_engine": "molecule-docker-engine",
    "model_worker": "molecule-model-worker",
    "orchestrator": "molecule-orchestrator",
    "fleet": "molecule-fleet",
}

pytestmark = [pytest.mark.docker, pytest.mark.slow]


def check_sequence(scenario: str, proc: subprocess.CompletedProcess[str]) -> None:
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, explain(proc)
    for step in ("create", "converge", "idempotence", "verify"):
        # "fleet ➜ verify: Executed: Successful" (plain ">" without colours)
        passed = re.search(rf"{scenario} (➜|>) {step}: Executed: Successful", output)
        assert passed, f"{step} did not pass:\n{output[-4000:]}"


@pytest.mark.timeout(1800)
@pytest.mark.parametrize("scenario", ["docker_engine", "model_worker", "orchestrator"])
def test_molecule_role_scenario(
    scenario: str, molecule_runs: dict[str, subprocess.CompletedProcess[str]]
) -> None:
    try:
        check_sequence(scenario, molecule_runs[scenario])
    finally:
        assert leftovers(SCENARIOS[scenario]) == "", "destroy left nodes behind"


@pytest.mark.timeout(2400)
def test_molecule_fleet_then_check_mode_changes_nothing(fleet: DeployedFleet) -> None:
    """The whole fleet scenario (the session's fleet), then --check --diff against it."""
    check_sequence("fleet", fleet.molecule)
    proc = run(["ansible-playbook", "site.yml", "--check", "--diff", "-e", fleet.vars_file], env=fleet.env())
    assert proc.returncode == 0, explain(proc)
    hosts = recap(proc.stdout)
    assert len(hosts) == 6, hosts  # localhost, 4 workers, the orchestrator
    assert {h: r["changed"] for h, r in hosts.items() if r["changed"]} == {}, explain(proc)
