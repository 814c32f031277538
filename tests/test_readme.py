"""README.md's Variables section lists every variable, once, and nothing else.

The variables are the keys of inventory/group_vars/all.yml (plus the optional ones shown
there commented out, `# fleet_...: value`) and, for every role, the options of every entry
point of meta/argument_specs.yml and the keys of defaults/main.yml. Each must have a row
`| `name` | default | meaning |` in the README's `## Variables` section.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support import ROOT

README = ROOT / "README.md"
GROUP_VARS = ROOT / "inventory" / "group_vars" / "all.yml"
ROLES = sorted(p for p in (ROOT / "roles").iterdir() if p.is_dir())

ROW = re.compile(r"^\| `([A-Za-z_][A-Za-z0-9_]*)` \|")
COMMENTED_FLEET_VAR = re.compile(r"^#\s*(fleet_[a-z0-9_]+):", re.MULTILINE)


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def role_variables(role: Path) -> set[str]:
    specs = load_yaml(role / "meta" / "argument_specs.yml")["argument_specs"]
    names = {name for entry in specs.values() for name in (entry.get("options") or {})}
    defaults = role / "defaults" / "main.yml"
    if defaults.is_file():
        names |= set(load_yaml(defaults) or {})
    return names


def fleet_variables() -> set[str]:
    text = GROUP_VARS.read_text(encoding="utf-8")
    return set(yaml.safe_load(text) or {}) | set(COMMENTED_FLEET_VAR.findall(text))


def all_variables() -> set[str]:
    names = fleet_variables()
    for role in ROLES:
        names |= role_variables(role)
    return names


def variables_section() -> list[str]:
    """The lines of README's `## Variables` section (up to the next `## ` heading)."""
    lines = README.read_text(encoding="utf-8").splitlines()
    assert "## Variables" in lines, "README.md has no '## Variables' section"
    start = lines.index("## Variables") + 1
    end = next((i for i in range(start, len(lines)) if lines[i].startswith("## ")), len(lines))
    return lines[start:end]


def variable_rows() -> list[tuple[str, str]]:
    """(variable name, whole row) for each table row of the Variables section."""
    return [(m.group(1), line) for line in variables_section() if (m := ROW.match(line))]


def test_every_role_describes_its_variables() -> None:
    assert {r.name for r in ROLES} >= {
        "aws_fleet",
        "docker_engine",
        "local_fleet",
        "model_worker",
        "orchestrator",
    }
    for role in ROLES:
        assert (role / "meta" / "argument_specs.yml").is_file(), f"{role.name}: no meta/argument_specs.yml"
        assert role_variables(role), f"{role.name}: no variables found"


def test_every_variable_has_a_readme_row() -> None:
    documented = {name for name, _ in variable_rows()}
    missing = sorted(all_variables() - documented)
    assert missing == [], f"README.md ## Variables lacks a row '| `name` | ... |' for: {missing}"


def test_no_readme_row_names_a_variable_that_does_not_exist() -> None:
    stale = sorted({name for name, _ in variable_rows()} - all_variables())
    assert stale == [], f"README.md ## Variables has rows for unknown variables: {stale}"


def test_each_variable_has_one_row_with_a_default_and_a_meaning() -> None:
    rows = variable_rows()
    duplicated = sorted(name for name, count in Counter(name for name, _ in rows).items() if count > 1)
    assert duplicated == [], f"variables with more than one row: {duplicated}"
    for name, line in rows:
        cells = [cell.strip() for cell in re.split(r"(?<!\\)\|", line)[1:-1]]
        assert len(cells) == 3, f"{name}: expected | name | default | meaning |, got {line!r}"
        assert all(cells), f"{name}: empty cell in {line!r}"


@pytest.mark.parametrize("command", ["make demo", "make test"])
def test_readme_names_the_two_commands(command: str) -> None:
    assert command in README.read_text(encoding="utf-8")
