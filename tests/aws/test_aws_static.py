"""What the real-AWS path needs that moto cannot show, checked on the files themselves: the
IAM policy's scoping, the ansible-core version the collection says it needs, the SSH
settings that travel with the collection, the drain tasks' privileges."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.aws.aws_support import VENV_BIN
from tests.support import ROOT

POLICY = ROOT / "roles" / "aws_fleet" / "files" / "iam-policy.json"
TAG_CONDITIONS = {"aws:ResourceTag/Project", "aws:RequestTag/Project", "ec2:CreateAction"}
# Resource types a fleet call uses without being able to require the fleet's tag on them:
# AMIs (Debian's, Canonical's), the network interface RunInstances makes (ec2_instance does
# not tag it), the rules of a security group (the group itself is checked).
UNTAGGABLE = {"image", "network-interface", "security-group-rule"}
EBS_KMS_ACTIONS = {
    "kms:CreateGrant",
    "kms:Decrypt",
    "kms:DescribeKey",
    "kms:GenerateDataKeyWithoutPlaintext",
    "kms:ReEncryptFrom",
    "kms:ReEncryptTo",
}


def as_list(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else value


def statements() -> list[dict[str, Any]]:
    return list(json.loads(POLICY.read_text())["Statement"])


def resource_type(arn: str) -> str:
    """'vpc' for arn:aws:ec2:*:*:vpc/*."""
    match = re.fullmatch(r"arn:aws:ec2:\*:(\*)?:([a-z-]+)/\*", arn)
    assert match, f"{arn} is not an EC2 resource-type ARN pattern"
    return match[2]


def test_the_iam_policy_reads_anything_and_changes_only_what_carries_the_fleets_tag() -> None:
    for statement in statements():
        assert statement["Effect"] == "Allow"
        actions = as_list(statement["Action"])
        resources = as_list(statement["Resource"])
        if all(action.startswith("ec2:Describe") for action in actions):
            assert resources == ["*"], statement["Sid"]
            continue
        assert not any(action.startswith("ec2:Describe") for action in actions), statement["Sid"]
        if all(action.startswith("kms:") for action in actions):
            continue  # test_the_iam_policy_lets_ebs_use_one_customer_managed_key
        conditions = {key for test in statement.get("Condition", {}).values() for key in test}
        if conditions & TAG_CONDITIONS:
            for key, value in (pair for test in statement["Condition"].values() for pair in test.items()):
                if key.endswith("/Project"):
                    assert value == "onnxfleet", statement["Sid"]
            if resources == ["*"]:
                # only tagging, only while a fleet call creates the resource
                assert actions == ["ec2:CreateTags"], statement["Sid"]
                assert set(statement["Condition"]["StringEquals"]) == {"ec2:CreateAction"}
            continue
        assert resources != ["*"], f"{statement['Sid']}: {actions} on every resource, whatever its tags"
        assert {resource_type(arn) for arn in resources} <= UNTAGGABLE, statement["Sid"]


def test_the_iam_policy_creates_only_with_the_fleets_tag() -> None:
    """A Create* (and RunInstances, ImportKeyPair) may make a resource only with the fleet's
    tag in the request; existing resources it uses must carry the tag already."""
    creating = {"ec2:CreateInternetGateway", "ec2:CreateRouteTable", "ec2:CreateSecurityGroup"}
    creating |= {"ec2:CreateSubnet", "ec2:CreateVpc", "ec2:ImportKeyPair", "ec2:RunInstances"}
    for statement in statements():
        if not creating & set(as_list(statement["Action"])):
            continue
        condition = statement.get("Condition", {}).get("StringEquals", {})
        types = {resource_type(arn) for arn in as_list(statement["Resource"])}
        if "aws:RequestTag/Project" in condition:
            # a request tag proves nothing about an existing resource the call uses
            assert "vpc" not in types or "ec2:CreateVpc" in as_list(statement["Action"])
            assert not (
                types & {"subnet", "security-group", "key-pair"} and "ec2:RunInstances" in statement["Action"]
            )
            assert not (
                types & {"vpc"} and {"ec2:CreateSubnet", "ec2:CreateRouteTable"} & set(statement["Action"])
            )
        else:
            assert "aws:ResourceTag/Project" in condition or types <= UNTAGGABLE, statement["Sid"]


def test_the_iam_policy_lets_ebs_use_one_customer_managed_key() -> None:
    """What EC2 needs of a customer-managed KMS key to encrypt the nodes' volumes
    (aws_fleet_volume_kms_key_id), on that key only, grants only for AWS resources."""
    kms = [s for s in statements() if any(a.startswith("kms:") for a in as_list(s["Action"]))]
    assert {a for s in kms for a in as_list(s["Action"])} == EBS_KMS_ACTIONS
    for statement in kms:
        assert as_list(statement["Resource"]) == ["arn:aws:kms:REGION:ACCOUNT:key/KEY-ID"]
        if "kms:CreateGrant" in as_list(statement["Action"]):
            assert as_list(statement["Action"]) == ["kms:CreateGrant"]
            assert statement["Condition"] == {"Bool": {"kms:GrantIsForAWSResource": "true"}}


# The ansible-core version that brought each feature the collection's YAML uses.
FEATURES = {
    r"ansible\.builtin\.meta:\s+end_role|meta:\s+end_role": (2, 18),
    r"\bbreak_when:": (2, 18),
}


def version(text: str) -> tuple[int, int]:
    major, minor = re.match(r"(\d+)\.(\d+)", text).groups()  # type: ignore[union-attr]
    return int(major), int(minor)


def test_requires_ansible_is_what_the_collection_uses_and_the_docs_say() -> None:
    runtime = yaml.safe_load((ROOT / "meta" / "runtime.yml").read_text())
    bound = re.fullmatch(r">=(\d+\.\d+)\.\d+", runtime["requires_ansible"])
    assert bound, runtime["requires_ansible"]
    minimum = version(bound[1])
    files = [
        *ROOT.glob("roles/*/tasks/*.yml"),
        *ROOT.glob("roles/*/handlers/*.yml"),
        *ROOT.glob("playbooks/*.yml"),
    ]
    files.append(ROOT / "site.yml")
    for path in files:
        text = path.read_text()
        for pattern, needed in FEATURES.items():
            if re.search(pattern, text):
                assert minimum >= needed, f"{path.relative_to(ROOT)} uses {pattern}, which needs {needed}"
    for meta in ROOT.glob("roles/*/meta/main.yml"):
        assert version(yaml.safe_load(meta.read_text())["galaxy_info"]["min_ansible_version"]) == minimum, (
            meta
        )
    shown = ".".join(map(str, minimum))
    assert f"ansible-core ≥ {shown}" in (ROOT / "README.md").read_text()
    assert f"ansible-core ≥ {shown}" in (ROOT / "docs" / "aws.md").read_text()


def test_the_fleets_ssh_settings_travel_with_the_collection(tmp_path: Path) -> None:
    """Without this checkout's ansible.cfg, a host of the built collection's inventories
    gets the fleet's SSH settings: accept-new host keys (EC2 nodes are met on first
    contact, in the fleet's own known_hosts) and pipelining."""
    subprocess.run(
        [str(VENV_BIN / "ansible-galaxy"), "collection", "build", str(ROOT), "--output-path", str(tmp_path)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (tarball,) = tmp_path.glob("onnxfleet-serving-*.tar.gz")
    unpacked = tmp_path / "c"
    unpacked.mkdir()
    subprocess.run(["tar", "-xzf", str(tarball), "-C", str(unpacked)], check=True, timeout=60)
    assert not (unpacked / "ansible.cfg").exists(), "ansible.cfg is not in the artifact"
    inventory = unpacked / "inventory" / "one-node.yml"
    inventory.write_text(yaml.safe_dump({"onnxfleet": {"hosts": {"node-1": {}}}}))
    empty_cfg = tmp_path / "empty.cfg"
    empty_cfg.write_text("")
    settings = "{{ {'args': ansible_ssh_common_args, 'pipelining': ansible_ssh_pipelining} | to_json }}"
    proc = subprocess.run(
        [str(VENV_BIN / "ansible"), "node-1", "-i", str(inventory), "-m", "ansible.builtin.debug",
         "-a", f"msg={settings}", "-o", "-c", "local"],
        env={"ANSIBLE_CONFIG": str(empty_cfg), "PATH": f"{VENV_BIN}:/usr/bin:/bin", "HOME": str(tmp_path),
             "ONNXFLEET_FLEET": "travel", "ANSIBLE_NOCOLOR": "1"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    found = json.loads(json.loads(proc.stdout[proc.stdout.index("{") :])["msg"])
    assert "-o StrictHostKeyChecking=accept-new" in found["args"]
    assert f"-o UserKnownHostsFile={tmp_path}/.local/state/onnxfleet/travel/known_hosts" in found["args"]
    assert found["pipelining"] is True


@pytest.mark.parametrize("admin", ["drain", "ready"])
def test_the_resize_drain_tasks_become_root_on_the_orchestrator_node(admin: str) -> None:
    """The admin token there is root's (0440, the orchestrator's group): the drain and
    ready calls read it as root, as site.yml's and rollout.yml's plays do (test_aws_fleet
    runs them against a node container whose login user cannot read it)."""
    tasks = yaml.safe_load((ROOT / "roles" / "aws_fleet" / "tasks" / "resize.yml").read_text())
    [task] = [t for t in tasks if t.get("vars", {}).get("__model_worker_admin") == admin]
    include = task["ansible.builtin.include_role"]
    assert include["tasks_from"] == "node_admin"
    assert include["apply"]["become"] is True
