"""One version: the collection (galaxy.yml), the Python package (app/pyproject.toml, the
installed metadata, ``onnxfleet.__version__``) and ``onnxfleet --version`` name the same
one, and it is not older than the newest release in the changelog."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
import tomllib

import yaml

import onnxfleet
from tests.support import ROOT


def version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


def galaxy_version() -> str:
    return str(yaml.safe_load((ROOT / "galaxy.yml").read_text(encoding="utf-8"))["version"])


def test_the_package_and_the_collection_have_one_version() -> None:
    pyproject = tomllib.loads((ROOT / "app" / "pyproject.toml").read_text(encoding="utf-8"))
    versions = {
        "galaxy.yml": galaxy_version(),
        "app/pyproject.toml": pyproject["project"]["version"],
        "onnxfleet.__version__": onnxfleet.__version__,
    }
    assert len(set(versions.values())) == 1, versions


def test_onnxfleet_version_prints_it() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "onnxfleet.cli", "--version"], capture_output=True, text=True, check=True
    )
    assert run.stdout.strip() == f"onnxfleet {galaxy_version()}"


def test_the_installed_package_is_this_version() -> None:
    installed = importlib.metadata.version("onnxfleet")
    assert installed == galaxy_version(), f"installed metadata says {installed}: run make setup"


def test_the_version_is_not_older_than_the_last_release() -> None:
    releases = yaml.safe_load((ROOT / "changelogs" / "changelog.yaml").read_text(encoding="utf-8"))[
        "releases"
    ]
    newest = max(releases, key=version_tuple)
    assert version_tuple(galaxy_version()) >= version_tuple(newest), (galaxy_version(), newest)


def test_the_ansible_core_the_docs_name_is_the_locked_one() -> None:
    """ "ansible-core 2.21" in README and docs is what requirements/controller.txt locks
    (the minimum, "ansible-core ≥ 2.18", is tests/aws/test_aws_static.py's), and
    ansible-test sanity has its ignore file for it."""
    import re

    lock = (ROOT / "requirements" / "controller.txt").read_text(encoding="utf-8")
    pinned = re.search(r"^ansible-core==(\d+\.\d+)\.\d+", lock, re.MULTILINE)
    assert pinned, "requirements/controller.txt pins no ansible-core"
    said = {
        f"{path.relative_to(ROOT)}: {match.group(1)}"
        for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
        for match in re.finditer(r"ansible-core (\d+\.\d+)\b", path.read_text(encoding="utf-8"))
        if match.group(1) != pinned.group(1)
    }
    assert not said, f"the lock has ansible-core {pinned.group(1)}: {sorted(said)}"
    assert (ROOT / "tests" / "sanity" / f"ignore-{pinned.group(1)}.txt").is_file()
