"""``fleet_autoscaling``, from a file or from the inventory as the playbooks see it."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Sequence
from pathlib import Path

from onnxfleet.autoscale.policy import Settings


def from_file(path: Path) -> Settings:
    """A JSON file: the ``fleet_autoscaling`` mapping, or a mapping holding it (the app
    needs no YAML parser: the inventory's value is read through Ansible)."""
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: {exc}") from None
    if isinstance(raw, dict) and "fleet_autoscaling" in raw:
        raw = raw["fleet_autoscaling"]
    return Settings.from_mapping(raw)


def from_inventory(project_dir: Path, ansible_args: Sequence[str], ansible: str = "ansible") -> Settings:
    """The value on the controller (implicit localhost gets group_vars/all), templates
    rendered and the same ``-i``/``-e`` as the playbook run: both providers share it."""
    command = [
        ansible,
        "localhost",
        *ansible_args,
        "-m",
        "ansible.builtin.debug",
        "-a",
        "var=fleet_autoscaling",
    ]
    env = {
        **os.environ,
        "ANSIBLE_LOAD_CALLBACK_PLUGINS": "1",
        "ANSIBLE_STDOUT_CALLBACK": "ansible.builtin.minimal",
        "ANSIBLE_CALLBACK_RESULT_FORMAT": "json",
    }
    try:
        proc = subprocess.run(
            command, cwd=project_dir, capture_output=True, text=True, timeout=300, check=False, env=env
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ValueError(f"{' '.join(command)}: {exc}") from None
    # minimal: "localhost | SUCCESS => {...}"
    answer = proc.stdout.partition("=>")[2]
    try:
        value = json.loads(answer)["fleet_autoscaling"] if answer and proc.returncode == 0 else None
    except (ValueError, KeyError, TypeError):
        value = None
    if value is None or value == "VARIABLE IS NOT DEFINED!":
        raise ValueError(
            f"fleet_autoscaling could not be read with {' '.join(command)}: "
            f"{proc.stdout[-500:]}{proc.stderr[-500:]}"
        )
    return Settings.from_mapping(value)
