"""The molecule scenarios (extensions/molecule/), run exactly as `molecule test -s NAME`:
create real nodes, converge, prove idempotence (docker_engine; the fleet's is proven by
the operations scenarios' site.yml re-run), verify, destroy. The deployed whole fleet
is also checked with `ansible-playbook site.yml --check --diff`, its roles taken from the
built collection artifact (as users install it), which must find nothing to change."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from tests.ansible.ansible_support import DeployedFleet, explain, leftovers, recap, run
from tests.support import ROOT

SCENARIOS = {
    # scenario: the fleet name its molecule.yml gives its nodes
    "docker_engine": "molecule-docker-engine",
    "fleet": "molecule-fleet",
}

MODEL = ROOT / "app" / "models" / "digits.onnx"

pytestmark = [pytest.mark.docker, pytest.mark.slow]


def check_sequence(scenario: str, proc: subprocess.CompletedProcess[str]) -> None:
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, explain(proc)
    steps = (
        ("create", "converge") + (("side_effect",) if scenario == "fleet" else ("idempotence",)) + ("verify",)
    )
    for step in steps:
        # "fleet ➜ verify: Executed: Successful" (plain ">" without colours)
        passed = re.search(rf"{scenario} (➜|>) {step}: Executed: Successful", output)
        assert passed, f"{step} did not pass:\n{output[-4000:]}"


@pytest.mark.timeout(1800)
@pytest.mark.parametrize("scenario", ["docker_engine"])
def test_molecule_role_scenario(
    scenario: str, molecule_runs: dict[str, subprocess.CompletedProcess[str]]
) -> None:
    try:
        check_sequence(scenario, molecule_runs[scenario])
    finally:
        assert leftovers(SCENARIOS[scenario]) == "", "destroy left nodes behind"


@pytest.mark.timeout(2400)
def test_molecule_fleet_then_the_artifacts_roles_in_check_mode_change_nothing(
    fleet: DeployedFleet, artifact: Path
) -> None:
    """The whole fleet scenario (the session's fleet), then --check --diff against it with
    the roles of the installed artifact (which has no app/: its context and demo model
    are named, as a Galaxy user would)."""
    check_sequence("fleet", fleet.molecule)
    checkout = ["-e", f"app_image_context={ROOT / 'app'}", "-e", f"fleet_model_file={MODEL}"]
    proc = run(
        ["ansible-playbook", "site.yml", "--check", "--diff", "-e", fleet.vars_file, *checkout],
        env=fleet.env(ANSIBLE_COLLECTIONS_PATH=str(artifact)),
    )
    assert "/.collections/" not in proc.stdout, "the roles came from the checkout, not the artifact"
    assert proc.returncode == 0, explain(proc)
    hosts = recap(proc.stdout)
    assert len(hosts) == 6, hosts  # localhost, 4 workers, the orchestrator
    assert {h: r["changed"] for h, r in hosts.items() if r["changed"]} == {}, explain(proc)
