"""The nodes role (local provider), the local_fleet role and inventory/local.docker.yml
against the real Docker engine: EC2-like nodes (systemd, sshd, sudo) made, reached over
SSH with the fleet's key and known host keys, found with the inventory contract's groups
and variables, scaled in, the smallest whole fleet deployed on what is left, torn down to
nothing. All of it as a user of the collection installed from Galaxy does it (README,
"Install from Galaxy"): from an empty directory outside the checkout, with the installed
artifact's playbooks by name (onnxfleet.serving.provision, .site, .teardown) and a copy
of its inventory/, no ansible.cfg.
(Docker on such a node, installed while another process holds the package locks: the
docker_engine molecule scenario.)"""

from __future__ import annotations

import json
import shutil
import ssl
import subprocess
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.ansible.ansible_support import explain, recap, run, user_env
from tests.support import ROOT, free_port, unwrap

FLEET = "pytest-local-fleet"
INVENTORY = ("-i", "inventory/local.docker.yml")  # the user's copy (Fleet.home)
OTHER_NODE = "pytest-other-fleet-node"  # another fleet's
LABEL = f"label=onnxfleet.fleet={FLEET}"
NODES_PLAYBOOK = """
- hosts: localhost
  connection: local
  gather_facts: false
  roles:
    - onnxfleet.serving.nodes
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
    for name in docker("ps", "-aq", "--filter", f"label=onnxfleet.seed-of={FLEET}").split():
        docker("rm", "-f", name)
    for name in docker("volume", "ls", "-q", "--filter", f"label=onnxfleet.seed-of={FLEET}").split():
        docker("volume", "rm", "-f", name)
    for name in docker("network", "ls", "-q", "--filter", LABEL).split():
        docker("network", "rm", name)
    subprocess.run(["docker", "rm", "-f", OTHER_NODE], capture_output=True, check=False)


@dataclass
class Fleet:
    """A user's directory outside the checkout (a copy of the installed collection's
    inventory/ in it), the installed collection, and the fleet's own state directory
    (XDG_STATE_HOME)."""

    tmp: Path
    collections: Path  # an ANSIBLE_COLLECTIONS_PATH holding the installed artifact
    output: str = ""  # the last converge's

    @property
    def home(self) -> Path:
        home = self.tmp / "user"
        if not home.exists():
            installed = self.collections / "ansible_collections" / "onnxfleet" / "serving"
            shutil.copytree(installed / "inventory", home / "inventory")
        return home

    @property
    def state_dir(self) -> Path:
        return self.tmp / "state" / "onnxfleet" / FLEET

    def env(self) -> dict[str, str]:
        return user_env(self.collections, ONNXFLEET_FLEET=FLEET, XDG_STATE_HOME=str(self.tmp / "state"))

    def playbook(self, text: str) -> Path:
        path = self.home / f"play{abs(hash(text))}.yml"
        path.write_text(text)
        return path

    def converge(
        self, *extra: str, playbook: str = "onnxfleet.serving.provision"
    ) -> dict[str, dict[str, int]]:
        proc = self.run("ansible-playbook", playbook, *INVENTORY, *extra)
        assert proc.returncode == 0, explain(proc)
        self.output = proc.stdout
        return recap(proc.stdout)

    def run(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return run(list(args), env={**self.env(), **env}, cwd=self.home, timeout=900)

    def inventory(self) -> dict[str, object]:
        proc = self.run("ansible-inventory", *INVENTORY, "--list")
        assert proc.returncode == 0, explain(proc)
        return unwrap(json.loads(proc.stdout))  # type: ignore[return-value]

    def ansible(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return self.run("ansible", "onnxfleet", *INVENTORY, "-o", *args, **env)


def task_output(output: str, task: str) -> str:
    """What ansible-playbook printed for ``task`` ("role : name"), up to the next task."""
    assert f"{task}]" in output, f"no task {task}"
    return output.split(f"{task}]", 1)[1].split("TASK [", 1)[0]


def apt_update_behind_a_busy_cache(node: str) -> tuple[str, list[str]]:
    """``apt-get update`` on ``node`` through apt_busy_cache.py (which relays to the
    node's own cache or mirror): its exit status and the cache's log."""
    docker("cp", str(Path(__file__).with_name("apt_busy_cache.py")), f"{node}:/tmp/apt_busy_cache.py")
    script = """
        python3 /tmp/apt_busy_cache.py 3199 "$(/usr/local/bin/apt-proxy-detect)" >/tmp/busy.log 2>&1 &
        relay=$!
        for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/3199) 2>/dev/null && break; sleep 0.1; done
        timeout 120 apt-get update -qq -o Acquire::Languages=none \
            -o Acquire::http::Proxy-Auto-Detect= -o Acquire::http::Proxy=http://127.0.0.1:3199 >&2
        echo "exit $?"
        kill $relay
        cat /tmp/busy.log
    """
    lines = docker("exec", node, "bash", "-c", script).splitlines()
    return lines[0], lines[1:]


@pytest.fixture
def fleet(tmp_path: Path, artifact: Path) -> Iterator[Fleet]:
    remove_all()
    try:
        yield Fleet(tmp_path, artifact)
    finally:
        remove_all()


# Six fleet runs (make, again, a node set up again, scale in, tear down twice) and ad-hoc
# SSH calls: a CI run on a loaded machine reached the 600 s default during the teardown.
# The smallest site run from the installed collection came on top: 1800 s.
@pytest.mark.timeout(1800)
def test_local_nodes_are_ec2_like_and_found_scaled_in_and_torn_down(
    fleet: Fleet, onnxfleet_image: dict[str, str]
) -> None:
    # (onnxfleet_image: the checkout builds the image from its wheelhouse; the installed
    # collection, whose app/ has the same content hash, then finds it instead of building
    # it from the package index, which docker builds cannot reach here)
    port = free_port()
    shape = ["-e", "fleet_worker_count=2", "-e", f"fleet_published_port={port}"]
    assert fleet.converge(*shape)["localhost"]["changed"] > 0
    assert fleet.converge(*shape)["localhost"]["changed"] == 0, "a second run must change nothing"
    # ... and sets up no node again: a node whose known_hosts line is there is not touched
    for task in ("Authorize the fleet's key", "Wait until those nodes answer SSH", "Write their host keys"):
        calls = fleet.output.split(f"local_fleet : {task}", 1)[1].split("TASK [", 1)[0]
        assert "ok: [" not in calls, f"{task}: ran on a converged node\n{calls}"

    nodes = [f"{FLEET}-worker-1", f"{FLEET}-worker-2", f"{FLEET}-orchestrator"]
    assert fleet_objects() == {
        "containers": sorted(nodes),
        "volumes": sorted(f"{n}-docker" for n in nodes),
        "networks": [docker("network", "inspect", "-f", "{{.Id}}", FLEET)[:12]],
    }
    orchestrator = json.loads(docker("inspect", f"{FLEET}-orchestrator"))[0]
    assert orchestrator["HostConfig"]["PortBindings"] == {
        "443/tcp": [{"HostIp": "127.0.0.1", "HostPort": str(port)}]  # the edge's HTTPS
    }
    # As little as systemd and the inner engine need (docs/ansible.md, "Local nodes").
    assert orchestrator["HostConfig"]["Privileged"] is False
    assert sorted(orchestrator["HostConfig"]["CapAdd"]) == ["NET_ADMIN", "SYS_ADMIN", "SYS_PTRACE"]
    assert orchestrator["HostConfig"]["CgroupnsMode"] == "host"
    assert json.loads(docker("inspect", f"{FLEET}-worker-1"))[0]["HostConfig"]["PortBindings"] in ({}, None)

    # The nodes are instances of the baked image: systemd is PID 1, sshd runs, Docker Engine
    # is installed and started at boot (as docker_engine leaves it), and the image carries
    # no SSH host key (each node made its own at first boot).
    assert orchestrator["Config"]["Image"].startswith("onnxfleet-node-engine:")
    for node in nodes:
        assert docker("exec", node, "cat", "/proc/1/comm") == "systemd"
        assert docker("exec", node, "systemctl", "is-active", "ssh") == "active"
        assert docker("exec", node, "systemctl", "is-enabled", "docker") == "enabled"
    # A cache that answers 503 as apt-cacher-ng does when nodes refresh one index
    # together: apt retries and finishes (bookworm's delayed retry would hang for good).
    status, served = apt_update_behind_a_busy_cache(nodes[0])
    assert status == "exit 0", served
    release = [line.split()[1] for line in served if line.split()[0].endswith("/dists/bookworm/InRelease")]
    assert release == ["503", "200"], served
    image = orchestrator["Config"]["Image"]
    assert (
        docker("run", "--rm", "--entrypoint", "sh", image, "-c", "ls /etc/ssh | grep -c host_key || true")
        == "0"
    )

    # Another fleet's node, and a stopped container of this fleet, are not in the inventory.
    docker(
        "run",
        "-d",
        "--name",
        OTHER_NODE,
        "--label",
        "onnxfleet.fleet=pytest-other",
        "--label",
        "onnxfleet.role=worker",
        "onnxfleet/base:bookworm",
        "sleep",
        "infinity",  # (it must outlive the whole test: remove_all() takes it away)
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

    found = fleet.inventory()
    hostvars = found["_meta"]["hostvars"]  # type: ignore[index]
    assert sorted(found["workers"]["hosts"]) == nodes[:2]  # type: ignore[index]
    assert found["orchestrators"]["hosts"] == [nodes[2]]  # type: ignore[index]
    assert sorted(found["onnxfleet"]["hosts"]) == sorted(nodes)  # type: ignore[index]
    known_hosts = (fleet.state_dir / "known_hosts").read_text().splitlines()
    host_keys = set()
    for node, short in zip(nodes, ["worker-1", "worker-2", "orchestrator"], strict=True):
        address = docker(
            "inspect", "-f", f'{{{{(index .NetworkSettings.Networks "{FLEET}").IPAddress}}}}', node
        )
        host = hostvars[node]
        # the inventory contract, as aws_ec2 gives it; SSH, as on EC2
        assert host["fleet_node"] == short
        assert host["fleet_private_address"] == address
        assert host["ansible_host"] == address
        assert host["ansible_user"] == "admin"
        assert host["fleet_architecture"] == "amd64"
        assert host["ansible_connection"] == "ssh"
        assert host["ansible_ssh_retries"] == 3  # a failed connection is tried again
        assert "ansible_become" not in host
        # the node's own host key, read from the node, is what the fleet's known_hosts holds
        key = docker("exec", node, "cat", "/etc/ssh/ssh_host_ed25519_key.pub").split()[:2]
        assert f"{address} {' '.join(key)}" in known_hosts
        host_keys.add(key[1])
    assert len(host_keys) == 3, "every node has its own host key"

    # Ansible logs in as admin with the fleet's key, checks the host key, and becomes root
    # through sudo (no connection or become settings but the fleet's key and known_hosts).
    who = fleet.ansible("-m", "ansible.builtin.command", "-a", "id -un")
    assert who.returncode == 0, explain(who)
    assert who.stdout.count("| CHANGED | rc=0 | (stdout) admin") == 3, who.stdout
    root = fleet.ansible("-b", "-m", "ansible.builtin.command", "-a", "id -un")
    assert root.returncode == 0, explain(root)
    assert root.stdout.count("| CHANGED | rc=0 | (stdout) root") == 3, root.stdout
    assert oct((fleet.state_dir / "ssh" / "id_ed25519").stat().st_mode & 0o777) == "0o600"

    # A host key that is not the node's is refused.
    (fleet.state_dir / "known_hosts").write_text(
        "\n".join(line.split()[0] + " " + " ".join(known_hosts[0].split()[1:]) for line in known_hosts) + "\n"
    )
    # (a new connection: the earlier ones stay open for a minute, ControlPersist)
    spoofed = fleet.ansible(
        "-m",
        "ansible.builtin.ping",
        ANSIBLE_SSH_ARGS="-o ControlMaster=no -o StrictHostKeyChecking=accept-new",
    )
    assert spoofed.returncode != 0
    assert "HOST IDENTIFICATION HAS CHANGED" in spoofed.stdout + spoofed.stderr

    # Meanwhile a node is as a failed run left it, half set up (its container made, no key
    # authorized, no known_hosts line). One converge sets it up, though its container is
    # unchanged, and puts the other nodes' own keys back in place of the spoofed ones.
    docker("exec", nodes[0], "rm", "/home/admin/.ssh/authorized_keys")
    first = hostvars[nodes[0]]["ansible_host"]  # type: ignore[index]
    spoofed_lines = (fleet.state_dir / "known_hosts").read_text().splitlines()
    (fleet.state_dir / "known_hosts").write_text(
        "".join(line + "\n" for line in spoofed_lines if not line.startswith(f"{first} "))
    )
    fleet.converge(*shape)
    fresh = fleet.ansible("-m", "ansible.builtin.ping", ANSIBLE_SSH_ARGS="-o ControlMaster=no")
    assert fresh.returncode == 0, explain(fresh)
    assert sorted((fleet.state_dir / "known_hosts").read_text().splitlines()) == sorted(known_hosts)

    # Scale in to one worker: worker-2, its volume and the stray container go.
    assert (
        fleet.converge("-e", "fleet_worker_count=1", "-e", f"fleet_published_port={port}")["localhost"][
            "changed"
        ]
        > 0
    )
    remaining = [f"{FLEET}-worker-1", f"{FLEET}-orchestrator"]
    objects = fleet_objects()
    assert objects["containers"] == sorted(remaining)
    assert objects["volumes"] == sorted(f"{n}-docker" for n in remaining)
    assert sorted(fleet.inventory()["workers"]["hosts"]) == [f"{FLEET}-worker-1"]  # type: ignore[index]

    # The smallest whole fleet on those two nodes and a new worker-2 (one container each),
    # by the installed collection's site playbook: it builds the image from the app/ it
    # ships (the same content hash as the checkout's, so the session's image if it is
    # there) and serves a prediction through the edge, with the fleet's own CA and token.
    smallest = [
        "-e",
        "fleet_worker_count=2",
        "-e",
        "fleet_worker_containers=1",
        "-e",
        f"fleet_published_port={port}",
    ]
    fleet.converge(*smallest, playbook="onnxfleet.serving.site")
    # No node installs Docker (baked), and worker-2, made by this run, started with the app
    # image in its engine (the seed): it neither fetches nor loads it, while worker-1, made
    # before the image was built, does.
    installs = task_output(fleet.output, "docker_engine : Install Docker Engine (Debian, Ubuntu)")
    assert "changed: [" not in installs, installs
    assert "ok: [" not in installs, installs
    fetches = task_output(fleet.output, "app_image : Fetch the archive, its sha256 checked")
    assert f"skipping: [{FLEET}-worker-2]" in fetches, fetches
    assert f"changed: [{FLEET}-worker-1]" in fetches, fetches
    assert docker("volume", "ls", "-q", "--filter", f"label=onnxfleet.seed-of={FLEET}"), "no seed volume"
    card = json.loads((ROOT / "app" / "models" / "digits.json").read_text())
    token = (fleet.state_dir / "tokens" / "default").read_text().strip()
    request = urllib.request.Request(
        f"https://127.0.0.1:{port}/run_model",
        data=json.dumps({"inputs": card["example"]["inputs"]}).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    tls = ssl.create_default_context(cafile=str(fleet.state_dir / "tls" / "ca.pem"))
    with urllib.request.urlopen(request, context=tls, timeout=30) as answer:
        assert answer.status == 200
        answered = json.loads(answer.read())
    assert answered["outputs"]["label"] == [card["example"]["label"]]
    assert answered["version"] == card["version"]

    # Teardown removes every container, volume and the network, and only those, and
    # forgets the host keys (addresses are recycled).
    teardown = "onnxfleet.serving.teardown"
    assert fleet.converge(playbook=teardown)["localhost"]["changed"] > 0
    assert fleet_objects() == {"containers": [], "volumes": [], "networks": []}
    assert not docker("volume", "ls", "-q", "--filter", f"label=onnxfleet.seed-of={FLEET}"), "a seed was left"
    assert not (fleet.state_dir / "known_hosts").exists()
    assert docker("ps", "-q", "--filter", f"name={OTHER_NODE}"), "another fleet's node was removed"
    assert fleet.converge(playbook=teardown)["localhost"]["changed"] == 0, (
        "a second teardown must change nothing"
    )


def test_local_fleet_refuses_a_name_the_inventory_would_not_find(fleet: Fleet) -> None:
    proc = fleet.run(
        "ansible-playbook", str(fleet.playbook(NODES_PLAYBOOK)), *INVENTORY, "-e", "fleet_name=somewhere-else"
    )
    assert proc.returncode != 0
    assert "ONNXFLEET_FLEET=somewhere-else" in proc.stdout
    assert fleet_objects()["containers"] == []
    assert (ROOT / "inventory" / "local.docker.yml").is_file()
