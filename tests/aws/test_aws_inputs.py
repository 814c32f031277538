"""Bad settings stop provisioning with a message naming the setting, before any AWS call;
check mode on an account without the fleet predicts changes and creates nothing."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.aws.aws_support import Run, fleet_filter, live_instances

FLEET = "inputs"


def provision(ansible: Callable[..., Run], settings: dict[str, Any], tmp_path: Path, *extra: str) -> Run:
    path = tmp_path / "settings.json"
    path.write_text(json.dumps({"fleet_name": FLEET, "aws_fleet_wait_for_ssh": False, **settings}))
    return ansible(
        "ansible-playbook",
        "playbooks/provision.yml",
        "-i",
        "inventory/aws_ec2.yml",
        "-e",
        "fleet_provider=aws",
        "-e",
        f"@{path}",
        *extra,
    )


def assert_nothing_created(ec2: Any) -> None:
    assert ec2.describe_vpcs(Filters=fleet_filter(FLEET))["Vpcs"] == []
    assert ec2.describe_security_groups(Filters=fleet_filter(FLEET))["SecurityGroups"] == []
    assert live_instances(ec2, fleet_filter(FLEET)) == []


@pytest.mark.parametrize(
    "case",
    [
        pytest.param(({}, "fleet_admin_cidrs"), id="no-admin-cidrs"),
        pytest.param(
            ({"fleet_admin_cidrs": ["203.0.113.7"]}, "'203.0.113.7' is not an IPv4 CIDR"), id="bad-cidr"
        ),
        pytest.param(
            ({"fleet_admin_cidrs": "203.0.113.7/32"}, "are lists: pass them as JSON"), id="cidr-string"
        ),
        pytest.param(
            (
                {"fleet_admin_cidrs": ["203.0.113.7/32"], "fleet_worker_count": 0},
                "aws_fleet_worker_count and aws_fleet_worker_containers at least 1",
            ),
            id="no-workers",
        ),
        pytest.param(
            ({"fleet_admin_cidrs": ["203.0.113.7/32"], "private_key": True}, "must be an SSH *public* key"),
            id="private-key-file",
        ),
    ],
)
def test_bad_settings_are_refused_clearly(
    ec2: Any,
    ansible: Callable[..., Run],
    ssh_public_key: Path,
    tmp_path: Path,
    case: tuple[dict[str, Any], str],
) -> None:
    settings, message = dict(case[0]), case[1]
    key = ssh_public_key
    if settings.pop("private_key", False):
        key = tmp_path / "id_ed25519"
        key.write_text(
            "-----BEGIN OPENSSH PRIVATE KEY-----\nnot a real key\n-----END OPENSSH PRIVATE KEY-----\n"
        )
    run = provision(ansible, {"aws_fleet_ssh_public_key_file": str(key), **settings}, tmp_path)
    assert run.rc != 0
    assert message in run.output
    assert_nothing_created(ec2)


def test_check_mode_without_the_fleet_creates_nothing(
    ec2: Any, ansible: Callable[..., Run], ssh_public_key: Path, tmp_path: Path
) -> None:
    settings = {"fleet_admin_cidrs": ["203.0.113.7/32"], "aws_fleet_ssh_public_key_file": str(ssh_public_key)}
    run = provision(ansible, settings, tmp_path, "--check").check()
    assert run.changed >= 1, "the VPC would be created"
    # the role stops after the VPC, whose id every later task needs
    assert "Create the VPC" in run.output
    assert "Create the public subnets" not in run.output
    assert_nothing_created(ec2)
