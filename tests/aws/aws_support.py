"""Helpers of the AWS suite: playbook results, the fleet's tags, boto3 look-ups."""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support import ROOT

VENV_BIN = ROOT / ".venv" / "bin"
# Canonical and Debian images as moto serves them (moto's own list has no Ubuntu 24.04).
AMIS = Path(__file__).resolve().parent / "amis.json"
REGION = "us-east-1"
FLEET = "awstest"
# provision.yml and teardown.yml against the AWS inventory
AWS_PLAYBOOK_ARGS = ("-i", "inventory/aws_ec2.yml", "-e", "fleet_provider=aws")
RECAP = re.compile(r"^(\S+)\s+:\s+ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.M)


@dataclass
class Run:
    rc: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    @property
    def changed(self) -> int:
        """The sum of `changed=` over the PLAY RECAP lines."""
        recap = RECAP.findall(self.output)
        assert recap, f"no PLAY RECAP in:\n{self.output[-3000:]}"
        return sum(int(changed) for _, _, changed, _, _ in recap)

    def check(self) -> Run:
        assert self.rc == 0, f"rc={self.rc}:\n{self.output[-5000:]}"
        return self


def run_ansible(env: dict[str, str], *args: str, timeout: float = 400) -> Run:
    """Run an ansible command line (`ansible-playbook ...`) from the repo root."""
    proc = subprocess.run(
        [str(VENV_BIN / args[0]), *args[1:]],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    return Run(proc.returncode, proc.stdout, proc.stderr)


def tags_of(resource: dict[str, Any]) -> dict[str, str]:
    return {tag["Key"]: tag["Value"] for tag in resource.get("Tags", [])}


def fleet_filter(fleet: str = FLEET) -> list[dict[str, Any]]:
    return [
        {"Name": "tag:Project", "Values": ["onnxfleet"]},
        {"Name": "tag:Fleet", "Values": [fleet]},
    ]


def live_instances(ec2: Any, filters: list[dict[str, Any]]) -> list[dict[str, Any]]:
    states = {"Name": "instance-state-name", "Values": ["pending", "running", "stopping", "stopped"]}
    reservations = ec2.describe_instances(Filters=[*filters, states])["Reservations"]
    return [instance for reservation in reservations for instance in reservation["Instances"]]
