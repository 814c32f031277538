"""The READMEs: each role's README.md carries its variable tables as generated from its
meta/argument_specs.yml (defaults included) by scripts/role_readme.py, and the top
README names the two commands."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import ROOT

ROLES = sorted(p for p in (ROOT / "roles").iterdir() if (p / "meta" / "argument_specs.yml").is_file())


def test_every_role_has_a_readme_with_its_generated_variable_tables() -> None:
    assert {r.name for r in ROLES} >= {"fleet", "app_image", "docker_engine", "model_worker", "orchestrator"}
    check = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "role_readme.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert check.returncode == 0, check.stdout + check.stderr


@pytest.mark.parametrize("role", ROLES, ids=lambda p: p.name)
def test_a_role_readme_names_every_variable_once(role: Path) -> None:
    import yaml

    specs = yaml.safe_load((role / "meta" / "argument_specs.yml").read_text())["argument_specs"]
    readme = (role / "README.md").read_text()
    for entry, spec in specs.items():
        section = readme.split(f"### Entry point `{entry}`", 1)[1].split("### Entry point", 1)[0]
        for name in spec.get("options") or {}:
            assert section.count(f"| `{name}` |") == 1, f"{role.name} {entry}: {name}"


@pytest.mark.parametrize("command", ["make demo", "make test"])
def test_readme_names_the_two_commands(command: str) -> None:
    assert command in (ROOT / "README.md").read_text(encoding="utf-8")
