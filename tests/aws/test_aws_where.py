"""Where the fleet goes, against moto: the region as boto3 resolves it (the AWS profile's
config when AWS_REGION is unset), zones chosen among those offering the instance types
(DescribeInstanceTypeOfferings), a clear stop when no zone offers them, the AMI and the
inventory's fleet_architecture following the instance types' architecture, and an
inventory that does not parse (amazon.aws older than 11.2) stopping the run."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from tests.aws.aws_support import AWS_PLAYBOOK_ARGS, VENV_BIN, Run, fleet_filter, live_instances, tags_of
from tests.aws.aws_support import run_ansible as run
from tests.support import ROOT, unwrap

pytestmark = pytest.mark.slow

# In moto's offerings (as in AWS's at the time of its data), il-central-1a and -1c offer
# c7i.large and il-central-1b does not: the first two zones by name would be a and b.
ZONED_REGION = "il-central-1"
NEWEST_DEBIAN_ARM64 = "ami-0a0b0c0d0e0f00008"


def provision(env: dict[str, str], settings: dict[str, Any], tmp_path: Path, *extra: str) -> Run:
    path = tmp_path / "settings.json"
    path.write_text(json.dumps({"aws_fleet_wait_for_ssh": False, **settings}))
    return run(
        env,
        "ansible-playbook",
        "playbooks/provision.yml",
        *AWS_PLAYBOOK_ARGS,
        "-e",
        f"@{path}",
        *extra,
    )


def teardown(env: dict[str, str]) -> Run:
    return run(env, "ansible-playbook", "playbooks/teardown.yml", *AWS_PLAYBOOK_ARGS)


def client(env: dict[str, str], region: str) -> Any:
    return boto3.client(
        "ec2",
        endpoint_url=env["AWS_URL"],
        region_name=region,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


ADMIN = {"fleet_admin_cidrs": ["203.0.113.7/32"]}


@pytest.fixture
def profile_env(aws_env: dict[str, str], tmp_path: Path) -> Iterator[dict[str, str]]:
    """No region and no keys in the environment: the AWS profile `onnxfleet-test` names
    il-central-1 in the config file and has its keys in the credentials file."""
    config = tmp_path / "aws-config"
    config.write_text(f"[profile onnxfleet-test]\nregion = {ZONED_REGION}\n")
    credentials = tmp_path / "aws-credentials"
    credentials.write_text("[onnxfleet-test]\naws_access_key_id = testing\naws_secret_access_key = testing\n")
    drop = ("AWS_REGION", "AWS_DEFAULT_REGION", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
    env = {k: v for k, v in aws_env.items() if k not in drop}
    env.update(
        AWS_CONFIG_FILE=str(config),
        AWS_SHARED_CREDENTIALS_FILE=str(credentials),
        AWS_PROFILE="onnxfleet-test",
        ONNXFLEET_FLEET="where",
    )
    yield env
    teardown(env)


def test_region_from_the_profile_and_zones_that_offer_the_type(
    profile_env: dict[str, str], tmp_path: Path
) -> None:
    # (one worker: the orchestrator and worker-1 go to the two subnets, one per zone)
    provision(profile_env, {**ADMIN, "fleet_worker_count": 1}, tmp_path).check()
    ec2 = client(profile_env, ZONED_REGION)
    instances = live_instances(ec2, fleet_filter("where"))
    assert len(instances) == 2, "the fleet went to the profile's region"
    assert live_instances(client(profile_env, "us-east-1"), fleet_filter("where")) == []
    subnets = ec2.describe_subnets(Filters=fleet_filter("where"))["Subnets"]
    assert sorted(s["AvailabilityZone"] for s in subnets) == ["il-central-1a", "il-central-1c"]
    assert {i["Placement"]["AvailabilityZone"] for i in instances} == {"il-central-1a", "il-central-1c"}

    # the inventory looks in the same region
    listing = unwrap(
        json.loads(
            run(profile_env, "ansible-inventory", "-i", "inventory/aws_ec2.yml", "--list").check().stdout
        )
    )
    assert sorted(listing["onnxfleet"]["hosts"]) == ["where-orchestrator", "where-worker-1"]

    # a re-run keeps the subnets' zones and changes nothing
    assert provision(profile_env, {**ADMIN, "fleet_worker_count": 1}, tmp_path).check().changed == 0


def test_no_region_anywhere_is_a_clear_error(aws_env: dict[str, str], tmp_path: Path) -> None:
    env = {k: v for k, v in aws_env.items() if k not in ("AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE")}
    empty = tmp_path / "aws-config"
    empty.write_text("")
    env.update(AWS_CONFIG_FILE=str(empty), ONNXFLEET_FLEET="noregion")
    result = provision(env, ADMIN, tmp_path)
    assert result.rc != 0
    assert "no AWS region is configured: set AWS_REGION" in result.output


def test_a_type_no_zone_offers_stops_with_the_variables_to_change(
    aws_env: dict[str, str], tmp_path: Path
) -> None:
    env = {**aws_env, "AWS_REGION": "eu-north-1", "ONNXFLEET_FLEET": "oldtype"}
    result = provision(env, {**ADMIN, "aws_fleet_worker_instance_type": "m4.large"}, tmp_path)
    assert result.rc != 0
    assert "m4.large: no zone" in result.output
    assert "aws_fleet_worker_instance_type" in result.output
    assert client(env, "eu-north-1").describe_vpcs(Filters=fleet_filter("oldtype"))["Vpcs"] == []


def test_instance_types_without_a_common_architecture_are_refused(
    aws_env: dict[str, str], tmp_path: Path
) -> None:
    env = {**aws_env, "ONNXFLEET_FLEET": "mixed"}
    settings = {**ADMIN, "aws_fleet_worker_instance_type": "c7g.large"}
    result = provision(env, settings, tmp_path)
    assert result.rc != 0
    assert "with a common architecture" in result.output
    assert "c7g.large arm64" in result.output
    # refused before anything is made
    assert client(env, env["AWS_REGION"]).describe_vpcs(Filters=fleet_filter("mixed"))["Vpcs"] == []


def test_graviton_types_get_the_arm64_image_and_say_so(aws_env: dict[str, str], tmp_path: Path) -> None:
    env = {**aws_env, "ONNXFLEET_FLEET": "graviton"}
    settings = {
        **ADMIN,
        "fleet_worker_count": 1,
        "aws_fleet_worker_instance_type": "c7g.large",
        "aws_fleet_orchestrator_instance_type": "c7g.large",
    }
    try:
        provision(env, settings, tmp_path).check()
        instances = live_instances(client(env, aws_env["AWS_REGION"]), fleet_filter("graviton"))
        assert {(i["InstanceType"], i["ImageId"]) for i in instances} == {("c7g.large", NEWEST_DEBIAN_ARM64)}
        listing = unwrap(
            json.loads(run(env, "ansible-inventory", "-i", "inventory/aws_ec2.yml", "--list").check().stdout)
        )
        hostvars = listing["_meta"]["hostvars"]
        assert {h["fleet_architecture"] for h in hostvars.values()} == {"arm64"}
    finally:
        teardown(env).check()


def old_amazon_aws(destination: Path) -> Path:
    """A copy of the installed amazon.aws made to behave, for the inventory, like 11.1:
    no ec2_tags host variable (11.2 added it), and version 11.1.0."""
    installed = VENV_BIN.parent / "lib"
    [source] = installed.glob("python3*/site-packages/ansible_collections/amazon/aws")
    copy = destination / "ansible_collections" / "amazon" / "aws"
    shutil.copytree(source, copy, ignore=shutil.ignore_patterns("__pycache__", "tests", "docs"))
    plugin = copy / "plugins" / "inventory" / "aws_ec2.py"
    code = plugin.read_text()
    new = 'host_vars["ec2_tags"] = boto3_tag_list_to_ansible_dict(original_host_vars.get("Tags", []))'
    assert new in code, "the installed aws_ec2 plugin changed: update this fixture"
    code = code.replace(
        new, 'host_vars["tags"] = boto3_tag_list_to_ansible_dict(original_host_vars.get("Tags", []))'
    )
    code = code.replace('host_vars["tags"] = host_vars["ec2_tags"]', "pass")
    code = code.replace('host_vars["ec2_tags"].items()', 'host_vars["tags"].items()')
    plugin.write_text(code)
    manifest = json.loads((copy / "MANIFEST.json").read_text())
    manifest["collection_info"]["version"] = "11.1.0"
    (copy / "MANIFEST.json").write_text(json.dumps(manifest))
    (copy / "FILES.json").unlink(missing_ok=True)
    return destination


def test_an_inventory_that_does_not_parse_stops_the_run(aws_env: dict[str, str], tmp_path: Path) -> None:
    """With amazon.aws 11.1 the inventory's compose (aws_ec2_tags) fails: the run must
    fail loudly, not warn and end green on "no hosts matched"."""
    env = {
        **aws_env,
        "ONNXFLEET_FLEET": "oldaws",
        "ANSIBLE_COLLECTIONS_PATH": f"{old_amazon_aws(tmp_path / 'collections')}:{ROOT / '.collections'}",
    }
    listed = run(env, "ansible-galaxy", "collection", "list", "amazon.aws")
    assert "11.1.0" in listed.output
    ec2 = client(env, aws_env["AWS_REGION"])
    tags = {"Project": "onnxfleet", "Fleet": "oldaws", "Name": "oldaws-worker-1", "Role": "worker"}
    tags |= {"Node": "worker-1", "SshUser": "admin"}
    [instance] = ec2.run_instances(
        ImageId="ami-0a0b0c0d0e0f00006",
        MinCount=1,
        MaxCount=1,
        TagSpecifications=[
            {"ResourceType": "instance", "Tags": [{"Key": k, "Value": v} for k, v in tags.items()]}
        ],
    )["Instances"]
    try:
        assert tags_of(instance)["Fleet"] == "oldaws"
        inventory = run(env, "ansible-inventory", "-i", "inventory/aws_ec2.yml", "--graph")
        assert inventory.rc != 0, inventory.output
        assert "aws_ec2_tags" in inventory.output
        site = run(
            env, "ansible-playbook", "site.yml", "-i", "inventory/aws_ec2.yml", "-e", "fleet_provider=aws"
        )
        assert site.rc != 0, site.output
        assert "Completely failed to parse inventory source" in site.output
        assert "PLAY RECAP" not in site.output
    finally:
        ec2.terminate_instances(InstanceIds=[instance["InstanceId"]])
