"""playbooks/bake_ami.yml against the moto server: a worker AMI baked from a configured
node once per content (the hash of what is baked and of the stock AMI beneath), and
provisioning launching new nodes from it
while the nodes that run keep their image. (What is baked is given with -e: moto's
instances have no SSH server, and no connection goes to an address moto invents.)"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.aws.aws_support import AWS_PLAYBOOK_ARGS, Run, fleet_filter, live_instances, run_ansible, tags_of

FLEET = "baketest"
NEWEST_DEBIAN = "ami-0a0b0c0d0e0f00006"  # tests/aws/amis.json: the newest amd64 Debian 12


@pytest.fixture(scope="module")
def ansible(aws_env: dict[str, str]) -> Callable[..., Run]:
    env = {**aws_env, "ONNXFLEET_FLEET": FLEET}

    def run(*args: str) -> Run:
        return run_ansible(env, *args)

    return run


def baked(ec2: Any) -> list[dict[str, Any]]:
    filters = [*fleet_filter(FLEET), {"Name": "tag:Role", "Values": ["node-image"]}]
    return ec2.describe_images(Owners=["self"], Filters=filters)["Images"]


def image_of(ec2: Any, node: str) -> str:
    [instance] = live_instances(ec2, [*fleet_filter(FLEET), {"Name": "tag:Node", "Values": [node]}])
    return str(instance["ImageId"])


@pytest.fixture(scope="module")
def fleet(
    ec2: Any, ansible: Callable[..., Run], ssh_public_key: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[[int], Run]]:
    settings = tmp_path_factory.mktemp("bake") / "fleet.json"
    settings.write_text(
        json.dumps(
            {
                "fleet_admin_cidrs": ["203.0.113.7/32"],
                "fleet_allowed_cidrs": ["198.51.100.0/24"],
                "aws_fleet_ssh_public_key_file": str(ssh_public_key),
                "aws_fleet_wait_for_ssh": False,  # moto's instances have no SSH server
            }
        )
    )

    def provision(workers: int) -> Run:
        return ansible(
            "ansible-playbook",
            "playbooks/provision.yml",
            *AWS_PLAYBOOK_ARGS,
            "-e",
            f"@{settings}",
            "-e",
            f"fleet_worker_count={workers}",
        ).check()

    try:
        yield provision
    finally:
        ansible("ansible-playbook", "playbooks/teardown.yml", *AWS_PLAYBOOK_ARGS)
        for image in baked(ec2):
            ec2.deregister_image(ImageId=image["ImageId"])


def test_an_ami_is_baked_once_per_content_and_new_nodes_launch_from_it(
    ec2: Any, ansible: Callable[..., Run], fleet: Callable[[int], Run]
) -> None:
    def bake(content: dict[str, Any], *extra: str) -> Run:
        given = json.dumps({"aws_fleet_bake_content": content})
        return ansible("ansible-playbook", "playbooks/bake_ami.yml", *AWS_PLAYBOOK_ARGS, "-e", given, *extra)

    content = {"engine": ["20.10.24+dfsg1-1+deb12u1"], "images": ["onnxfleet:0123456789ab"]}
    fleet(1)
    assert image_of(ec2, "worker-1") == NEWEST_DEBIAN
    assert bake(content).check().changed > 0
    [ami] = baked(ec2)
    tags = tags_of(ami)
    assert tags["BaseAmi"] == NEWEST_DEBIAN
    assert tags["Fleet"] == FLEET
    assert len(tags["Content"]) == 16
    assert ami["Name"] == f"{FLEET}-node-{tags['Content']}"

    # The same content: nothing is made.
    assert bake(content).check().changed == 0
    assert [image["ImageId"] for image in baked(ec2)] == [ami["ImageId"]]

    # A new node launches from the baked AMI; the node that runs keeps its image.
    fleet(2).check()
    assert image_of(ec2, "worker-2") == ami["ImageId"]
    assert image_of(ec2, "worker-1") == NEWEST_DEBIAN

    # Baked from worker-2 (itself launched from the baked AMI), the same content is the same
    # bake: the stock AMI beneath is read from the baked AMI's BaseAmi tag.
    assert bake(content, "-e", "aws_fleet_bake_node=worker-2").check().changed == 0


def test_baking_without_the_node_says_what_to_do(
    ansible: Callable[..., Run], fleet: Callable[[int], Run]
) -> None:
    missing = ansible(
        "ansible-playbook",
        "playbooks/bake_ami.yml",
        *AWS_PLAYBOOK_ARGS,
        "-e",
        json.dumps({"aws_fleet_bake_content": {"images": []}, "aws_fleet_bake_node": "worker-9"}),
    )
    assert missing.rc != 0
    assert "No running instance worker-9" in missing.output
