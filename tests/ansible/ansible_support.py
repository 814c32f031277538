"""Running the real ansible-playbook, ansible-inventory and molecule from the tests."""

from __future__ import annotations

import json
import os
import re
import ssl
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support import ROOT

VENV_BIN = ROOT / ".venv" / "bin"
RECAP = re.compile(r"^(\S+)\s*:\s*ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.M)


def ansible_env(**extra: str) -> dict[str, str]:
    """The environment of every Ansible call: this checkout's config, no colours."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ONNXFLEET_", "MOLECULE_"))}
    env.update(
        ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"),
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_FORCE_COLOR="0",
        NO_COLOR="1",
        PY_COLORS="0",
        PATH=f"{VENV_BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}",
    )
    env.update(extra)
    return env


def render_role_template(role: Path, template: str, dest: Path, variables: dict[str, Any]) -> Path:
    """A template of ``role`` rendered by Ansible's template module, as the role deploys it:
    with the role's defaults, its vars and ``variables`` (extra vars, which win)."""
    extra = dest.with_name(dest.name + ".vars.json")
    extra.write_text(json.dumps(variables))
    proc = subprocess.run(
        [
            str(VENV_BIN / "ansible"),
            "localhost",
            "-i",
            "localhost,",
            "-c",
            "local",
            "-m",
            "ansible.builtin.template",
            "-a",
            f"src={role / 'templates' / template} dest={dest} mode=0644",
            "-e",
            f"ansible_python_interpreter={sys.executable}",
            "-e",
            f"@{role / 'defaults' / 'main.yml'}",
            "-e",
            f"@{role / 'vars' / 'main.yml'}",
            "-e",
            f"@{extra}",
        ],
        env=ansible_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, f"rendering failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-2000:]}"
    return dest


def user_env(collections: Path, **extra: str) -> dict[str, str]:
    """The environment of a user of the installed collection: no ansible.cfg of this
    checkout, the collections found in ``collections`` (and the ansible package's)."""
    env = ansible_env(ANSIBLE_COLLECTIONS_PATH=str(collections), **extra)
    del env["ANSIBLE_CONFIG"]
    return env


def run(
    args: list[str], env: dict[str, str] | None = None, timeout: float = 600, cwd: Path = ROOT
) -> subprocess.CompletedProcess[str]:
    """Run a command from the checkout; output captured, never raises on failure."""
    return subprocess.run(
        args,
        cwd=cwd,
        env=env or ansible_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def recap(output: str) -> dict[str, dict[str, int]]:
    """PLAY RECAP per host: {host: {ok, changed, unreachable, failed}}."""
    return {
        host: {"ok": int(ok), "changed": int(ch), "unreachable": int(un), "failed": int(fa)}
        for host, ok, ch, un, fa in RECAP.findall(output)
    }


def explain(proc: subprocess.CompletedProcess[str]) -> str:
    """A failed command's errors (Ansible's fatal, unreachable and failed results, wherever
    they are in the output) and the tail of its output, for assertion messages."""
    lines = proc.stdout.splitlines()
    errors = [
        "\n".join(lines[i : i + 4])
        for i, line in enumerate(lines)
        if line.startswith(("fatal: ", "ERROR! ")) or "UNREACHABLE!" in line or "FAILED!" in line
    ]
    found = "\n".join(errors)[:4000]
    return f"exit {proc.returncode}\n{found}\n...\n{proc.stdout[-6000:]}\n{proc.stderr[-3000:]}"


FLEET = "molecule-fleet"
FLEET_VARS = "@extensions/molecule/fleet/vars.yml"
FLEET_URL = "https://127.0.0.1:28443"  # the edge, at fleet_published_port in that file


def state_dir(fleet: str) -> Path:
    """A fleet's state on the controller (fleet_state_dir's default): tls/, tokens/."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "onnxfleet" / fleet


@dataclass
class DeployedFleet:
    name: str
    url: str
    vars_file: str
    molecule: subprocess.CompletedProcess[str]  # `molecule test -s fleet --destroy never`

    def env(self, **extra: str) -> dict[str, str]:
        return ansible_env(ONNXFLEET_FLEET=self.name, **extra)

    @property
    def cacert(self) -> Path:
        """The CA the edge's certificate was made with (clients --cacert it)."""
        return state_dir(self.name) / "tls" / "ca.pem"

    @property
    def token(self) -> str:
        """The client token made once on the controller (fleet_api_tokens' default)."""
        return (state_dir(self.name) / "tokens" / "default").read_text().strip()

    def tls(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.cacert))


def leftovers(fleet: str) -> str:
    return subprocess.run(
        ["docker", "ps", "-a", "--filter", f"label=onnxfleet.fleet={fleet}", "--format", "{{.Names}}"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
