"""The AWS suite: a real moto EC2 server on loopback, real ansible-playbook runs, boto3 checks."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.aws.aws_support import AMIS, FLEET, REGION, VENV_BIN, Run
from tests.support import ROOT, free_port


@pytest.fixture(scope="session")
def moto_url() -> Iterator[str]:
    """A moto server (EC2 and the rest) on 127.0.0.1, serving the AMIs of amis.json."""
    previous = os.environ.get("MOTO_AMIS_PATH")
    # moto reads MOTO_AMIS_PATH when its AMI module is first imported.
    os.environ["MOTO_AMIS_PATH"] = str(AMIS)
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()
        if previous is None:
            os.environ.pop("MOTO_AMIS_PATH", None)
        else:
            os.environ["MOTO_AMIS_PATH"] = previous


@pytest.fixture(scope="session")
def aws_env(moto_url: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The environment of every ansible/boto3 call: moto's endpoint, fake credentials, the
    fleets' state (key pair, known_hosts) in a temporary directory."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "ONNXFLEET_"))}
    env.update(
        XDG_STATE_HOME=str(tmp_path_factory.mktemp("state")),
        AWS_URL=moto_url,
        AWS_REGION=REGION,
        AWS_DEFAULT_REGION=REGION,
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        ONNXFLEET_FLEET=FLEET,
        ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"),
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_FORCE_COLOR="0",
        PATH=f"{VENV_BIN}:{env.get('PATH', '/usr/bin:/bin')}",
    )
    return env


@pytest.fixture(scope="session")
def ec2(aws_env: dict[str, str]) -> Any:
    import boto3

    client = boto3.client(
        "ec2",
        endpoint_url=aws_env["AWS_URL"],
        region_name=REGION,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    images = client.describe_images(Owners=["099720109477"])["Images"]
    assert any("ubuntu-noble-24.04" in image["Name"] for image in images), (
        "moto does not serve tests/aws/amis.json: moto was imported before MOTO_AMIS_PATH was set"
    )
    return client


@pytest.fixture(scope="session")
def ssh_public_key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A public key for the key pair; its private half is never written anywhere."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    public = Ed25519PrivateKey.generate().public_key().public_bytes(Encoding.OpenSSH, PublicFormat.OpenSSH)
    path = tmp_path_factory.mktemp("ssh") / "id_ed25519.pub"
    path.write_bytes(public + b" onnxfleet-test\n")
    return path


@pytest.fixture(scope="session")
def ansible(aws_env: dict[str, str]) -> Callable[..., Run]:
    """Run an ansible command line (`ansible-playbook ...`) from the repo root, against moto."""

    def run(*args: str, timeout: float = 400) -> Run:
        proc = subprocess.run(
            [str(VENV_BIN / args[0]), *args[1:]],
            cwd=ROOT,
            env=aws_env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        return Run(proc.returncode, proc.stdout, proc.stderr)

    return run
