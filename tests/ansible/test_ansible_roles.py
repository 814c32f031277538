"""The roles meet only through the fleet contract (docs/design.md): no role names another
role's variables or facts, every fleet_* name a role reads has its one default in the
fleet role (or is a host variable the inventories give), and every role variable is
described, with its default, in its argument spec."""

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
FLEET_DEFAULTS = set(yaml.safe_load((ROOT / "roles/fleet/defaults/main.yml").read_text()))


def role_text(role: Path) -> str:
    """Everything a role runs or templates (its README and argument spec only describe)."""
    parts = [p for d in ("tasks", "handlers", "defaults", "vars", "templates") for p in (role / d).rglob("*")]
    return "\n".join(p.read_text() for p in sorted(parts) if p.is_file())


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text()) if path.is_file() else None


@pytest.mark.parametrize("role", ROLES, ids=lambda p: p.name)
def test_a_role_names_no_other_roles_variables(role: Path) -> None:
    text = role_text(role)
    found = {
        other.name: sorted(set(re.findall(rf"\b_*{other.name}_[a-z0-9_]+", text)))
        for other in ROLES
        if other not in (role, ROOT / "roles" / "fleet")  # (fleet_*: the contract itself)
    }
    assert {name: names for name, names in found.items() if names} == {}


@pytest.mark.parametrize("role", ROLES, ids=lambda p: p.name)
def test_every_fleet_name_a_role_reads_is_in_the_contract(role: Path) -> None:
    used = set(re.findall(r"\bfleet_[a-z0-9_]+", role_text(role)))
    # (group names such as fleet_serving are made by site.yml, not variables)
    unknown = sorted(used - FLEET_DEFAULTS - INVENTORY_FLEET_VARS)
    assert unknown == [], f"{role.name} reads fleet_* names the fleet role does not define: {unknown}"


@pytest.mark.parametrize("role", ROLES, ids=lambda p: p.name)
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
