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


def spec_texts(node: object, where: str) -> list[tuple[str, str]]:
    """Every description and short_description under ``node``, with where it is."""
    found: list[tuple[str, str]] = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key in {"description", "short_description"}:
                text = " ".join(value) if isinstance(value, list) else str(value)
                found.append((f"{where}.{key}", text))
            else:
                found += spec_texts(value, f"{where}.{key}")
    return found


@pytest.mark.parametrize("role", ROLES, ids=lambda p: p.name)
def test_argument_spec_text_writes_a_colon_as_a_colon(role: Path) -> None:
    """A plain YAML scalar cannot hold ": ", and " - " written in its place read as
    "Authorization - Bearer <token>" in the tables and ansible-doc: quote the text instead.
    A dash before a number (``base + containers - 1``) is arithmetic."""
    import re

    import yaml

    specs = yaml.safe_load((role / "meta" / "argument_specs.yml").read_text())
    dashes = [
        f"{where}: ...{m.group(0)}..."
        for where, text in spec_texts(specs, role.name)
        for m in re.finditer(r"\S{0,20} - (?!\d)\S{0,20}", text)
    ]
    assert not dashes, "\n".join(dashes)


def test_ansible_doc_renders_every_role() -> None:
    """ansible-doc refuses a role whose option or sub-option has no description."""
    names = [f"onnxfleet.serving.{role.name}" for role in ROLES]
    run = subprocess.run(
        [str(Path(sys.executable).parent / "ansible-doc"), "-t", "role", *names],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    output = run.stdout + run.stderr
    assert "ERROR" not in output, output
    for name in names:
        assert f"{name}" in run.stdout, f"{name} not rendered:\n{output}"


def role_readme() -> object:
    import importlib.util

    spec = importlib.util.spec_from_file_location("role_readme", ROOT / "scripts" / "role_readme.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_generated_table_keeps_colons_markup_sub_options_and_one_line_defaults() -> None:
    specs = {
        "main": {
            "short_description": "Short",
            "options": {
                "x_auth": {
                    "type": "bool",
                    "default": True,
                    "description": ["Needs C(Authorization: Bearer <t>)."],
                },
                "x_env": {"type": "str", "description": "Empty: E(X_REGION), else V(us-east-1)."},
                "x_list": {"type": "list", "default": ["{{ lookup('a',\n      b=1) }}"], "description": "L"},
                "x_dict": {
                    "type": "dict",
                    "default": {"on": False},
                    "description": "D",
                    "options": {"on": {"type": "bool", "description": "V(false): off."}},
                },
            },
        }
    }
    table = role_readme().tables(specs, {})  # type: ignore[attr-defined]
    assert "| `x_auth` | `true` | Needs `Authorization: Bearer <t>`. |" in table
    assert "| `x_env` | (none) | Empty: `X_REGION`, else `us-east-1`. |" in table
    assert "| `x_list` | `[\"{{ lookup('a', b=1) }}\"]` | L |" in table
    assert "| `x_dict.on` | `false` | `false`: off. |" in table


def test_readme_stays_under_15_kb() -> None:
    """A newcomer's page: details live in docs/."""
    size = len((ROOT / "README.md").read_bytes())
    assert size <= 15_000, f"README.md is {size} bytes"


def test_mypy_is_strict_where_readme_says_so() -> None:
    """README: `make lint` runs "mypy (strict)"; the configuration it uses says so (strict,
    with subclassing untyped gunicorn classes allowed, and untyped imports as Any)."""
    import re
    import tomllib

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    config = tomllib.loads((ROOT / "app" / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["mypy"]
    lint = (ROOT / "Makefile").read_text(encoding="utf-8").split("\nlint:", 1)[1].split("\n\n", 1)[0]
    assert re.search(r"mypy --config-file app/pyproject\.toml app/onnxfleet\b", lint), lint
    relaxed = {k for k, v in config.items() if k.startswith(("disallow_", "warn_")) and v is False}
    strict = config.get("strict") is True and relaxed <= {"disallow_subclassing_any"}
    assert ("mypy (strict)" in readme) == strict, (config, relaxed)
