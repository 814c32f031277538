"""ansible-lint (production profile) and ansible-playbook --syntax-check, for real."""

from __future__ import annotations

import re

import pytest

from tests.ansible.ansible_support import explain, run
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


# (minutes on an idle machine; a loaded one took over 300 s)
@pytest.mark.timeout(1000)
def test_ansible_lint_production_profile_is_clean_and_syntax_checks_every_playbook() -> None:
    # ansible-lint runs `ansible-playbook --syntax-check` on each playbook it finds (its
    # syntax-check rule), with this checkout's collections: that it found them all is
    # checked here, rather than running each syntax check a second time.
    proc = run(["ansible-lint", "--offline", "--profile", "production", "--nocolor", "-v"], timeout=900)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, explain(proc)
    assert "Profile 'production' was required, and it passed" in output
    checked = set(re.findall(r"Executing syntax check on playbook (\S+)", output))
    assert checked == set(PLAYBOOKS), explain(proc)
