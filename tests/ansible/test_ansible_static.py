"""ansible-lint (production profile) and ansible-playbook --syntax-check, for real."""

from __future__ import annotations

import pytest

from tests.ansible.ansible_support import ansible_env, explain, run
from tests.support import ROOT

PLAYBOOKS = [
    "site.yml",
    *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "playbooks").glob("*.yml")),
    *sorted(
        str(p.relative_to(ROOT))
        for p in (ROOT / "extensions" / "molecule").glob("*/*.yml")
        if p.name not in {"molecule.yml", "vars.yml", "config.yml"} and not p.name.endswith("_reload.yml")
    ),
]


def test_ansible_lint_production_profile_is_clean() -> None:
    proc = run(["ansible-lint", "--offline", "--profile", "production", "--nocolor"], timeout=300)
    assert proc.returncode == 0, explain(proc)
    assert "Profile 'production' was required, and it passed" in proc.stdout + proc.stderr


@pytest.mark.parametrize("playbook", PLAYBOOKS)
def test_playbook_syntax(playbook: str) -> None:
    # The molecule playbooks expect a scenario's inventory; the syntax check needs none.
    proc = run(["ansible-playbook", "--syntax-check", "-i", "localhost,", playbook], env=ansible_env())
    assert proc.returncode == 0, explain(proc)
