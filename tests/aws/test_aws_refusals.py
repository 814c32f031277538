"""What provisioning refuses before it changes anything, because going on would break a
fleet or touch what is not the fleet's: a key pair of the fleet's name holding another key,
a VPC of the fleet's name and CIDR that is not the fleet's, an instance type change across
architectures. Each against moto, each with its own fleet."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from tests.aws.aws_support import AWS_PLAYBOOK_ARGS, Run, fleet_filter, live_instances, run_ansible, tags_of

pytestmark = pytest.mark.slow

ADMIN = ["203.0.113.7/32"]


def provision(
    aws_env: dict[str, str], fleet: str, key: Path, tmp_path: Path, *extra: str, **settings: Any
) -> Run:
    """provision.yml for this fleet (the inventory finds it by $ONNXFLEET_FLEET)."""
    path = tmp_path / f"{fleet}.json"
    path.write_text(
        json.dumps(
            {
                "fleet_name": fleet,
                "fleet_admin_cidrs": ADMIN,
                "aws_fleet_ssh_public_key_file": str(key),
                "aws_fleet_wait_for_ssh": False,
                **settings,
            }
        )
    )
    return run_ansible(
        {**aws_env, "ONNXFLEET_FLEET": fleet},
        "ansible-playbook",
        "playbooks/provision.yml",
        *AWS_PLAYBOOK_ARGS,
        "-e",
        f"@{path}",
        *extra,
    )


def assert_nothing_created(ec2: Any, fleet: str) -> None:
    assert ec2.describe_vpcs(Filters=fleet_filter(fleet))["Vpcs"] == []
    assert ec2.describe_security_groups(Filters=fleet_filter(fleet))["SecurityGroups"] == []
    assert live_instances(ec2, fleet_filter(fleet)) == []


def another_public_key() -> str:
    public = Ed25519PrivateKey.generate().public_key().public_bytes(Encoding.OpenSSH, PublicFormat.OpenSSH)
    return public.decode() + " someone-else"


def test_a_key_pair_holding_another_key_is_refused(
    ec2: Any, aws_env: dict[str, str], ssh_public_key: Path, tmp_path: Path
) -> None:
    """A key pair of the fleet's name (a lost state directory, a second controller, a name
    taken) that holds another key: nodes launched with it would refuse Ansible's key."""
    fleet = "keyclash"
    ec2.import_key_pair(KeyName=fleet, PublicKeyMaterial=another_public_key().encode())
    [before] = ec2.describe_key_pairs(KeyNames=[fleet])["KeyPairs"]
    run = provision(aws_env, fleet, ssh_public_key, tmp_path)
    assert run.rc != 0
    assert f"The key pair {fleet} in us-east-1 holds another key" in run.output
    assert before["KeyFingerprint"] in run.output
    assert str(ssh_public_key) in run.output
    assert_nothing_created(ec2, fleet)
    [after] = ec2.describe_key_pairs(KeyNames=[fleet])["KeyPairs"]
    assert after == before, "the key pair is left as it was"


def test_a_key_pair_holding_the_fleets_key_is_used(
    ec2: Any, aws_env: dict[str, str], ssh_public_key: Path, tmp_path: Path
) -> None:
    """The same key imported before (without the fleet's tags: another controller made it)
    passes the key check: the run goes on to the next check, which a VPC of the fleet's name
    stops, before anything is made."""
    fleet = "keyshared"
    ec2.import_key_pair(KeyName=fleet, PublicKeyMaterial=ssh_public_key.read_bytes())
    ec2.create_vpc(
        CidrBlock="10.42.0.0/16",
        TagSpecifications=[{"ResourceType": "vpc", "Tags": [{"Key": "Name", "Value": fleet}]}],
    )
    run = provision(aws_env, fleet, ssh_public_key, tmp_path)
    assert run.rc != 0
    assert "holds another key" not in run.output
    assert f"is named {fleet} with the CIDR 10.42.0.0/16 but not tagged" in run.output
    assert_nothing_created(ec2, fleet)


def test_an_untagged_vpc_of_the_fleets_name_and_cidr_is_not_adopted(
    ec2: Any, aws_env: dict[str, str], ssh_public_key: Path, tmp_path: Path
) -> None:
    """amazon.aws.ec2_vpc_net adopts a VPC by Name tag and CIDR: it would retag it as the
    fleet's, and a teardown would delete it."""
    fleet = "namesake"
    vpc = ec2.create_vpc(
        CidrBlock="10.42.0.0/16",
        TagSpecifications=[{"ResourceType": "vpc", "Tags": [{"Key": "Name", "Value": fleet}]}],
    )["Vpc"]["VpcId"]
    run = provision(aws_env, fleet, ssh_public_key, tmp_path)
    assert run.rc != 0
    assert f"{vpc} is named {fleet} with the CIDR 10.42.0.0/16 but not tagged" in run.output
    assert_nothing_created(ec2, fleet)
    [after] = ec2.describe_vpcs(VpcIds=[vpc])["Vpcs"]
    assert tags_of(after) == {"Name": fleet}, "the VPC is not retagged"


def test_an_instance_type_change_across_architectures_is_refused_before_anything_stops(
    ec2: Any, aws_env: dict[str, str], ssh_public_key: Path, tmp_path: Path
) -> None:
    """x86_64 nodes asked to become Graviton (arm64): EC2 would refuse the type for the
    nodes' x86_64 image after the role stopped them, and they would stay stopped."""
    fleet = "crossarch"
    one = ("-e", "fleet_worker_count=1")
    provision(aws_env, fleet, ssh_public_key, tmp_path, *one).check()
    before = {
        i["InstanceId"]: (i["InstanceType"], i["State"]["Name"])
        for i in live_instances(ec2, fleet_filter(fleet))
    }
    assert sorted(before.values()) == [("c7i.large", "running")] * 2
    graviton = {
        "aws_fleet_worker_instance_type": "c7g.large",
        "aws_fleet_orchestrator_instance_type": "c7g.large",
        "aws_fleet_allow_instance_type_change": True,
        "aws_fleet_drain_on_type_change": False,
    }
    run = provision(aws_env, fleet, ssh_public_key, tmp_path, *one, **graviton)
    assert run.rc != 0
    assert "worker-1 runs c7i.large on an x86_64 image" in run.output
    assert "c7g.large is arm64: an instance cannot change architecture" in run.output
    after = {
        i["InstanceId"]: (i["InstanceType"], i["State"]["Name"])
        for i in live_instances(ec2, fleet_filter(fleet))
    }
    assert after == before, "nothing stopped, nothing changed"
    teardown = run_ansible(
        {**aws_env, "ONNXFLEET_FLEET": fleet},
        "ansible-playbook",
        "playbooks/teardown.yml",
        *AWS_PLAYBOOK_ARGS,
    )
    teardown.check()
    assert live_instances(ec2, fleet_filter(fleet)) == []
