"""The documented IAM policy (roles/aws_fleet/files/iam-policy.json) is enough for the
fleet's whole life, and names nothing the fleet does not do: a moto server that enforces
IAM (INITIAL_NO_AUTH_ACTION_COUNT), a user holding only that policy, and every step run
with that user's keys: provision, an allowed instance type change, the inventory,
teardown. (moto checks the actions only: it authorizes an EC2 call against the resource
"*" and with no condition keys, so the policy it holds is the documented one with every
Resource "*"; test_aws_static.py checks the resources and tag conditions themselves.)"""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from tests.aws.aws_support import AMIS, AWS_PLAYBOOK_ARGS, VENV_BIN, Run, fleet_filter, live_instances
from tests.aws.aws_support import run_ansible as run
from tests.support import ROOT, free_port

pytestmark = pytest.mark.slow

POLICY = ROOT / "roles" / "aws_fleet" / "files" / "iam-policy.json"
REGION = "us-east-1"
FLEET = "iamtest"
# create_user, create_access_key, put_user_policy: the calls moto answers without a policy
UNAUTHENTICATED_CALLS = 3


def as_moto_sees_it() -> dict[str, Any]:
    """The documented policy, each statement's Resource "*": moto matches an EC2 call's
    resource as "*", which no ARN pattern matches, and passes no condition values (a
    condition on a key it is not given holds)."""
    policy = json.loads(POLICY.read_text())
    for statement in policy["Statement"]:
        statement["Resource"] = "*"
    return policy


@pytest.fixture(scope="module")
def iam_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A moto server enforcing IAM, and the environment of a user holding only the policy."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "ONNXFLEET_"))}
    server = subprocess.Popen(
        [str(VENV_BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        env={**env, "MOTO_AMIS_PATH": str(AMIS), "INITIAL_NO_AUTH_ACTION_COUNT": str(UNAUTHENTICATED_CALLS)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"{url}/moto-api/", timeout=1)
                break
            except OSError:
                assert time.monotonic() < deadline, "moto_server did not start"
                time.sleep(0.2)
        iam = boto3.client(
            "iam",
            endpoint_url=url,
            region_name=REGION,
            aws_access_key_id="admin",
            aws_secret_access_key="admin",
        )
        iam.create_user(UserName="onnxfleet")
        key = iam.create_access_key(UserName="onnxfleet")["AccessKey"]
        iam.put_user_policy(
            UserName="onnxfleet", PolicyName="onnxfleet", PolicyDocument=json.dumps(as_moto_sees_it())
        )
        env.update(
            AWS_URL=url,
            AWS_REGION=REGION,
            AWS_ACCESS_KEY_ID=key["AccessKeyId"],
            AWS_SECRET_ACCESS_KEY=key["SecretAccessKey"],
            ONNXFLEET_FLEET=FLEET,
            XDG_STATE_HOME=str(tmp_path_factory.mktemp("state")),
            ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"),
            ANSIBLE_NOCOLOR="1",
            PATH=f"{VENV_BIN}:{env.get('PATH', '/usr/bin:/bin')}",
        )
        yield env
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:  # werkzeug may sit in a request under load
            server.kill()
            server.wait(timeout=10)


def test_the_policy_covers_the_fleets_whole_life(iam_env: dict[str, str], tmp_path: Path) -> None:
    settings = tmp_path / "settings.json"
    settings.write_text(
        json.dumps({"fleet_admin_cidrs": ["203.0.113.7/32"], "aws_fleet_wait_for_ssh": False})
    )
    aws = [*AWS_PLAYBOOK_ARGS, "-e", f"@{settings}"]

    def provision(*extra: str) -> Run:
        return run(iam_env, "ansible-playbook", "playbooks/provision.yml", *aws, *extra)

    ec2: Any = boto3.client(
        "ec2",
        endpoint_url=iam_env["AWS_URL"],
        region_name=REGION,
        aws_access_key_id=iam_env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=iam_env["AWS_SECRET_ACCESS_KEY"],
    )
    with pytest.raises(ec2.exceptions.ClientError, match="not authorized to perform: ec2:CreateKeyPair"):
        ec2.create_key_pair(KeyName="outside-the-policy")  # the server does enforce the policy

    # (a re-run and a scale-out make no call the first run does not, and a scale-in none
    # that teardown does not: test_aws_fleet runs them)
    assert provision("-e", "fleet_worker_count=1").check().changed > 0
    resize = [
        "-e",
        "aws_fleet_worker_instance_type=m7i.large",
        "-e",
        "aws_fleet_allow_instance_type_change=true",
        # (no orchestrator serves on moto's instances: test_aws_fleet drains through a fake one)
        "-e",
        "aws_fleet_drain_on_type_change=false",
    ]
    assert provision("-e", "fleet_worker_count=1", *resize).check().changed > 0
    listing = run(iam_env, "ansible-inventory", "-i", "inventory/aws_ec2.yml", "--graph").check()
    assert f"{FLEET}-worker-1" in listing.stdout
    assert run(iam_env, "ansible-playbook", "playbooks/teardown.yml", *aws).check().changed > 0
    assert live_instances(ec2, fleet_filter(FLEET)) == []
