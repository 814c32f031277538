"""The roles meet only through the fleet contract (docs/design.md): no role names another
role's variables or facts, every fleet_* name a role reads has its one default in
inventory/group_vars/all.yml (or is a host variable the inventories give), which the
fleet role's argument spec describes name for name, and every role variable is described,
with its default, in its argument spec."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support import ROOT

ROLES = sorted(p for p in (ROOT / "roles").iterdir() if (p / "meta" / "argument_specs.yml").is_file())
# Host variables every inventory gives (docs/design.md), not defaults.
INVENTORY_FLEET_VARS = {"fleet_node", "fleet_private_address", "fleet_architecture"}
FLEET_DEFAULTS = set(yaml.safe_load((ROOT / "inventory/group_vars/all.yml").read_text()))


INCLUDES = {"ansible.builtin.include_role", "ansible.builtin.import_role", "include_role", "import_role"}


def without_role_parameters(node: Any) -> Any:
    """Tasks with the names of the parameters they pass to a role they include dropped:
    calling a role's entry point with its own variables is how roles are used, not a read
    of another role's internals (the values passed are still checked)."""
    if isinstance(node, list):
        return [without_role_parameters(item) for item in node]
    if isinstance(node, dict):
        calls_role = INCLUDES & set(node)
        return {
            key: list(value.values()) if calls_role and key == "vars" else without_role_parameters(value)
            for key, value in node.items()
        }
    return node


def role_text(role: Path) -> str:
    """Everything a role runs or templates (its README and argument spec only describe)."""
    parts = [p for d in ("tasks", "handlers", "defaults", "vars", "templates") for p in (role / d).rglob("*")]
    texts = []
    for path in sorted(p for p in parts if p.is_file()):
        if path.parent.name in ("tasks", "handlers"):
            texts.append(yaml.safe_dump(without_role_parameters(yaml.safe_load(path.read_text()))))
        else:
            texts.append(path.read_text())
    return "\n".join(texts)


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text()) if path.is_file() else None


def variables_of(role: Path) -> set[str]:
    """The variables a role defines: its defaults, its vars, the options it describes."""
    specs = (load(role / "meta" / "argument_specs.yml") or {}).get("argument_specs", {})
    described = {name for entry in specs.values() for name in entry.get("options") or {}}
    return (
        described
        | set(load(role / "defaults" / "main.yml") or {})
        | set(load(role / "vars" / "main.yml") or {})
    )


@pytest.mark.parametrize("role", ROLES, ids=lambda p: p.name)
def test_a_role_names_no_other_roles_variables(role: Path) -> None:
    """Internal (__role_*) names, or the other role's variables (another word with the
    same prefix, such as the edge's HAProxy backend orchestrator_admin, is no variable)."""
    text = role_text(role)
    found = {
        other.name: sorted(
            name
            for name in set(re.findall(rf"\b_*{other.name}_[a-z0-9_]+", text))
            if name.startswith("__") or name in variables_of(other)
        )
        for other in ROLES
        if other not in (role, ROOT / "roles" / "fleet")  # (fleet_*: the contract itself)
    }
    assert {name: names for name, names in found.items() if names} == {}


@pytest.mark.parametrize("role", ROLES, ids=lambda p: p.name)
def test_every_fleet_name_a_role_reads_is_in_the_contract(role: Path) -> None:
    used = set(re.findall(r"\bfleet_[a-z0-9_]+", role_text(role)))
    # (group names such as fleet_serving are made by site.yml, not variables)
    unknown = sorted(used - FLEET_DEFAULTS - INVENTORY_FLEET_VARS)
    assert unknown == [], f"{role.name} reads fleet_* names group_vars/all.yml does not define: {unknown}"


def test_the_fleet_role_describes_every_fleet_setting_and_nothing_else() -> None:
    specs = load(ROOT / "roles/fleet/meta/argument_specs.yml")["argument_specs"]["main"]["options"]
    assert sorted(specs) == sorted(FLEET_DEFAULTS)
    assert not (ROOT / "roles/fleet/defaults").exists(), "fleet defaults live in group_vars/all.yml"
    # required: a play whose inventory lacks one is stopped, naming it
    assert {name for name, option in specs.items() if not option.get("required")} == set()


@pytest.mark.parametrize("role", [r for r in ROLES if r.name != "fleet"], ids=lambda p: p.name)
def test_every_default_is_described_with_that_default(role: Path) -> None:
    specs = load(role / "meta" / "argument_specs.yml")["argument_specs"]
    options = {name: opt for entry in specs.values() for name, opt in (entry.get("options") or {}).items()}
    defaults = load(role / "defaults" / "main.yml") or {}
    assert sorted(set(defaults) - set(options)) == [], "defaults without a description"
    assert sorted(set(options) - set(defaults)) == [], "described variables without a default"
    for name, value in defaults.items():
        described = options[name].get("default")
        if isinstance(value, str) and "{{" in value:
            assert described, f"{name}: describe its computed default"
        else:
            assert described == value, f"{name}: defaults/main.yml says {value!r}, the spec {described!r}"
