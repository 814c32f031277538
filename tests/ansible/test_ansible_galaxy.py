"""The collection as a Galaxy user gets it: `ansible-galaxy collection build`, installed
with `ansible-galaxy collection install` into an empty directory (its dependencies are the
ones the venv's ansible package holds: no Galaxy), then used from another empty directory
with nothing but the installed collection and an inventory the user has (README, "Install
from Galaxy"). The real deploy from the installed collection is the local-nodes lifecycle
test's (test_ansible_local_fleet.py), which shares that fleet's nodes."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
import yaml

from tests.ansible.ansible_support import explain, run, user_env
from tests.support import ROOT

pytestmark = [pytest.mark.slow]

PLAYBOOKS = sorted(p.stem for p in (ROOT / "playbooks").glob("*.yml"))


def installed_from_galaxy(workdir: Path) -> Path:
    """Build the collection and install the artifact the way README says (no --no-deps:
    the dependencies must be found, offline); the collections path it went to."""
    built = run(["ansible-galaxy", "collection", "build", str(ROOT), "--output-path", str(workdir / "dist")])
    assert built.returncode == 0, explain(built)
    (tarball,) = (workdir / "dist").glob("onnxfleet-serving-*.tar.gz")
    path = workdir / "collections"
    installed = run(
        ["ansible-galaxy", "collection", "install", "--offline", "-p", str(path), str(tarball)],
        env=user_env(path),
        cwd=workdir,
    )
    assert installed.returncode == 0, explain(installed)
    assert "onnxfleet.serving:0" in installed.stdout
    assert "was installed successfully" in installed.stdout
    return path


@pytest.fixture(scope="module")
def galaxy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return installed_from_galaxy(tmp_path_factory.mktemp("galaxy"))


def user_directory(tmp_path: Path, collections: Path) -> Path:
    """An empty directory outside the checkout with the collection's inventory directory
    copied into it, as README's "Install from Galaxy" does."""
    home = tmp_path / "user"
    installed = collections / "ansible_collections" / "onnxfleet" / "serving"
    shutil.copytree(installed / "inventory", home / "inventory")
    assert not home.resolve().is_relative_to(ROOT)
    return home


def test_the_artifact_carries_what_the_image_is_built_from(galaxy: Path) -> None:
    installed = galaxy / "ansible_collections" / "onnxfleet" / "serving"
    for shipped in ("Dockerfile", "requirements.lock", "models/digits.onnx", "models/digits.json"):
        assert (installed / "app" / shipped).is_file(), shipped
    assert not (installed / "app" / ".wheelhouse").exists(), "the wheelhouse is the checkout's"
    # The same build context as the checkout's app/, file for file: the installed
    # collection builds the very image the checkout does (one content hash).
    sys.path.insert(0, str(ROOT / "plugins" / "plugin_utils"))
    try:
        from fleet_image import content_hash, context_files
    finally:
        sys.path.remove(str(ROOT / "plugins" / "plugin_utils"))
    assert context_files(str(installed / "app")) == context_files(str(ROOT / "app"))
    assert content_hash(str(installed / "app"), "base") == content_hash(str(ROOT / "app"), "base")


def test_every_playbook_runs_by_name_from_an_empty_directory(galaxy: Path, tmp_path: Path) -> None:
    home = user_directory(tmp_path, galaxy)
    names = [f"onnxfleet.serving.{playbook}" for playbook in PLAYBOOKS]
    proc = run(
        ["ansible-playbook", *names, "-i", "inventory/local.docker.yml", "--list-tasks"],
        env=user_env(galaxy),
        cwd=home,
    )
    assert proc.returncode == 0, explain(proc)
    shipped = galaxy / "ansible_collections" / "onnxfleet" / "serving" / "playbooks"
    listed = [line.split(": ", 1)[1] for line in proc.stdout.splitlines() if line.startswith("playbook: ")]
    assert listed == [str(shipped / f"{playbook}.yml") for playbook in PLAYBOOKS]
    assert "onnxfleet.serving.nodes : Make the fleet's SSH key pair" in proc.stdout


def test_the_fleet_role_readme_example_runs_from_an_empty_directory(galaxy: Path, tmp_path: Path) -> None:
    readme = (ROOT / "roles" / "fleet" / "README.md").read_text()
    example = readme.split("```yaml\n", 1)[1].split("```", 1)[0]
    home = user_directory(tmp_path, galaxy)
    (home / "example.yml").write_text(example)
    proc = run(
        ["ansible-playbook", "example.yml", "-i", "inventory/local.docker.yml"],
        env={**user_env(galaxy), "ONNXFLEET_FLEET": "readme-example"},
        cwd=home,
    )
    assert proc.returncode == 0, explain(proc)
    defaults = yaml.safe_load((ROOT / "inventory" / "group_vars" / "all.yml").read_text())
    assert f"readme-example has {defaults['fleet_worker_count']} worker nodes" in proc.stdout
