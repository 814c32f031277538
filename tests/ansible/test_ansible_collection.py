"""The collection as users get it: `ansible-galaxy collection build`, installed, passes
`ansible-test sanity` (scripts/collection_sanity.py, which lets ansible-test bootstrap
pip offline), and documents every role entry point and plugin. (Its roles run from the
artifact against the session's fleet: test_ansible_molecule.py.)"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.ansible.ansible_support import ansible_env, explain, run
from tests.support import ROOT

pytestmark = [pytest.mark.slow]


def test_ansible_test_sanity_passes_on_the_built_artifact(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "collection_sanity.py"), "--keep", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-6000:]
    assert output.count('Running sanity test "') >= 20, output[-3000:]
    assert "ERROR:" not in output, output[-6000:]


def test_the_artifact_documents_its_roles_and_plugins(artifact: Path) -> None:
    installed = artifact / "ansible_collections" / "onnxfleet" / "serving"
    # what the image is built from ships (test_ansible_galaxy.py builds from it), its
    # wheelhouse does not
    assert (installed / "app" / "Dockerfile").is_file()
    assert not (installed / "app" / ".wheelhouse").exists()
    assert not (installed / "tests" / "ansible").exists()
    env = ansible_env(ANSIBLE_COLLECTIONS_PATH=str(artifact))
    roles = sorted(p.name for p in (installed / "roles").iterdir())
    for kind, names in (
        ("role", roles),
        (
            "module",
            [
                "fleet_image",
                "http_ready",
                "aws_fleet_info",
                "orchestrator_admin",
                "local_fact",
                "container_logs",
                "docker_engine_up",
            ],
        ),
        (
            "filter",
            [
                "routing_table",
                "natural_sort",
                "api_token_lines",
                "subject_alt_names",
                "aws_fleet_launches",
                "container_hardening",
            ],
        ),
    ):
        for name in names:
            proc = run(["ansible-doc", "-t", kind, "--json", f"onnxfleet.serving.{name}"], env=env)
            assert proc.returncode == 0, explain(proc)
            assert f"onnxfleet.serving.{name}" in proc.stdout
    specs = yaml.safe_load((installed / "roles/model_worker/meta/argument_specs.yml").read_text())
    assert set(specs["argument_specs"]) == {"main", "switch", "smoke"}
