"""The local_fleet role and inventory/local.docker.yml against the real Docker engine:
nodes made, found with the inventory contract's groups and variables, scaled in, torn
down to nothing. (No Docker inside the nodes here: the molecule scenarios do that.)"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.ansible.ansible_support import ansible_env, explain, recap, run
from tests.support import ROOT, free_port, unwrap

FLEET = "pytest-local-fleet"
LABEL = f"label=onnxfleet.fleet={FLEET}"
PLAYBOOK = """
- hosts: localhost
  connection: local
  gather_facts: false
  roles:
    - onnxfleet.serving.local_fleet
"""

pytestmark = [pytest.mark.docker, pytest.mark.slow]


def docker(*args: str) -> str:
    return subprocess.run(["docker", *args], check=True, capture_output=True, text=True).stdout.strip()


def fleet_objects() -> dict[str, list[str]]:
    return {
        "containers": sorted(docker("ps", "-a", "--filter", LABEL, "--format", "{{.Names}}").split()),
        "volumes": sorted(docker("volume", "ls", "-q", "--filter", LABEL).split()),
        "networks": sorted(docker("network", "ls", "-q", "--filter", LABEL).split()),
    }


def remove_all() -> None:
    for name in docker("ps", "-aq", "--filter", LABEL).split():
        docker("rm", "-f", name)
    for name in docker("volume", "ls", "-q", "--filter", LABEL).split():
        docker("volume", "rm", "-f", name)
    for name in docker("network", "ls", "-q", "--filter", LABEL).split():
        docker("network", "rm", name)
    subprocess.run(["docker", "rm", "-f", "pytest-other-fleet-node"], capture_output=True, check=False)


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Path]:
    remove_all()
    playbook = tmp_path / "local_fleet.yml"
    playbook.write_text(PLAYBOOK)
    try:
        yield playbook
    finally:
        remove_all()


def converge(playbook: Path, *extra: str) -> dict[str, int]:
    proc = run(["ansible-playbook", str(playbook), *extra], env=ansible_env(ONNXFLEET_FLEET=FLEET))
    assert proc.returncode == 0, explain(proc)
    return recap(proc.stdout)["localhost"]


def inventory() -> dict[str, object]:
    proc = run(
        ["ansible-inventory", "-i", "inventory/local.docker.yml", "--list"],
        env=ansible_env(ONNXFLEET_FLEET=FLEET),
    )
    assert proc.returncode == 0, explain(proc)
    return unwrap(json.loads(proc.stdout))  # type: ignore[return-value]


def test_local_fleet_inventory_scale_in_and_teardown(fleet: Path) -> None:
    port = free_port()
    shape = ["-e", "fleet_worker_count=2", "-e", f"fleet_published_port={port}"]
    first = converge(fleet, *shape)
    assert first["changed"] > 0
    assert converge(fleet, *shape)["changed"] == 0, "a second run must change nothing"

    nodes = [f"{FLEET}-worker-1", f"{FLEET}-worker-2", f"{FLEET}-orchestrator"]
    assert fleet_objects() == {
        "containers": sorted(nodes),
        "volumes": sorted(f"{n}-docker" for n in nodes),
        "networks": [docker("network", "inspect", "-f", "{{.Id}}", FLEET)[:12]],
    }
    orchestrator = json.loads(docker("inspect", f"{FLEET}-orchestrator"))[0]
    assert orchestrator["HostConfig"]["PortBindings"] == {
        "80/tcp": [{"HostIp": "127.0.0.1", "HostPort": str(port)}]
    }
    assert orchestrator["HostConfig"]["Privileged"] is False
    assert "CAP_SYS_RESOURCE" not in orchestrator["HostConfig"]["CapAdd"]
    assert orchestrator["HostConfig"]["Init"] is True
    assert json.loads(docker("inspect", f"{FLEET}-worker-1"))[0]["HostConfig"]["PortBindings"] in ({}, None)

    # Another fleet's node, and a stopped container of this fleet, are not in the inventory.
    docker(
        "run",
        "-d",
        "--name",
        "pytest-other-fleet-node",
        "--label",
        "onnxfleet.fleet=pytest-other",
        "--label",
        "onnxfleet.role=worker",
        "onnxfleet/base:bookworm",
        "sleep",
        "300",
    )
    docker(
        "create",
        "--name",
        f"{FLEET}-stray",
        "--label",
        f"onnxfleet.fleet={FLEET}",
        "--label",
        "onnxfleet.role=worker",
        "onnxfleet/base:bookworm",
        "sleep",
        "300",
    )

    found = inventory()
    hostvars = found["_meta"]["hostvars"]  # type: ignore[index]
    assert sorted(found["workers"]["hosts"]) == nodes[:2]  # type: ignore[index]
    assert found["orchestrators"]["hosts"] == [nodes[2]]  # type: ignore[index]
    assert sorted(found["onnxfleet"]["hosts"]) == sorted(nodes)  # type: ignore[index]
    for node, short in zip(nodes, ["worker-1", "worker-2", "orchestrator"], strict=True):
        address = docker(
            "inspect", "-f", f'{{{{(index .NetworkSettings.Networks "{FLEET}").IPAddress}}}}', node
        )
        assert hostvars[node]["fleet_node"] == short
        assert hostvars[node]["fleet_private_address"] == address
        assert hostvars[node]["ansible_connection"] == "community.docker.docker_api"

    # Scale in to one worker: worker-2, its volume and the stray container go.
    assert converge(fleet, "-e", "fleet_worker_count=1", "-e", f"fleet_published_port={port}")["changed"] > 0
    remaining = [f"{FLEET}-worker-1", f"{FLEET}-orchestrator"]
    objects = fleet_objects()
    assert objects["containers"] == sorted(remaining)
    assert objects["volumes"] == sorted(f"{n}-docker" for n in remaining)
    assert sorted(inventory()["workers"]["hosts"]) == [f"{FLEET}-worker-1"]  # type: ignore[index]

    # Teardown removes every container, volume and the network, and only those.
    teardown = ["-e", "local_fleet_state=absent"]
    assert converge(fleet, *teardown)["changed"] > 0
    assert fleet_objects() == {"containers": [], "volumes": [], "networks": []}
    assert docker("ps", "-q", "--filter", "name=pytest-other-fleet-node"), "another fleet's node was removed"
    assert converge(fleet, *teardown)["changed"] == 0, "a second teardown must change nothing"


def test_local_fleet_refuses_a_name_the_inventory_would_not_find(fleet: Path) -> None:
    proc = run(
        ["ansible-playbook", str(fleet), "-e", "fleet_name=somewhere-else"],
        env=ansible_env(ONNXFLEET_FLEET=FLEET),
    )
    assert proc.returncode != 0
    assert "ONNXFLEET_FLEET=somewhere-else" in proc.stdout
    assert fleet_objects()["containers"] == []
    assert (ROOT / "inventory" / "local.docker.yml").is_file()
