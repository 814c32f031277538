"""The EC2 fleet's whole life against moto: provision, re-run, check mode, inventory,
routing table, scaling 4 -> 6 -> 3, teardown. One provisioning, shared in file order."""

from __future__ import annotations

import json
import secrets
import subprocess
import threading
import urllib.request
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.aws.aws_support import AWS_PLAYBOOK_ARGS, FLEET, ROOT, Run, fleet_filter, live_instances, tags_of
from tests.support import free_port, unwrap

pytestmark = pytest.mark.slow

ADMIN = "203.0.113.7/32"
CLIENTS = "198.51.100.0/24"
EXTRA_TAGS = {"CostCenter": "ml-serving", "Owner": "onnxfleet-tests"}
NEWEST_NOBLE = "ami-0a0b0c0d0e0f00002"  # see amis.json: the newest amd64 Ubuntu 24.04 from Canonical
NEWEST_DEBIAN = "ami-0a0b0c0d0e0f00006"  # the newest amd64 Debian 12 (not backports, not arm64)
ORCH_SG, WORKER_SG = f"{FLEET}-orchestrator", f"{FLEET}-worker"


def nodes(ec2: Any) -> dict[str, dict[str, Any]]:
    """The fleet's live instances by Node tag (fails on duplicates)."""
    found: dict[str, dict[str, Any]] = {}
    for instance in live_instances(ec2, fleet_filter()):
        node = tags_of(instance)["Node"]
        assert node not in found, f"two live instances for {node}"
        found[node] = instance
    return found


def same_shape(ec2: Any) -> list[str]:
    """The worker count the fleet has now (an earlier test may have scaled it)."""
    return ["-e", f"fleet_worker_count={sum(node != 'orchestrator' for node in nodes(ec2))}"]


def expected_nodes(workers: int) -> set[str]:
    return {"orchestrator"} | {f"worker-{i}" for i in range(1, workers + 1)}


# kind: (describe method, list key, id key)
DESCRIBE = {
    "vpcs": ("describe_vpcs", "Vpcs", "VpcId"),
    "subnets": ("describe_subnets", "Subnets", "SubnetId"),
    "igws": ("describe_internet_gateways", "InternetGateways", "InternetGatewayId"),
    "route_tables": ("describe_route_tables", "RouteTables", "RouteTableId"),
    "security_groups": ("describe_security_groups", "SecurityGroups", "GroupId"),
    "key_pairs": ("describe_key_pairs", "KeyPairs", "KeyName"),
    "volumes": ("describe_volumes", "Volumes", "VolumeId"),
}


def describe(ec2: Any, kind: str, filters: list[dict[str, Any]]) -> list[str]:
    method, key, id_key = DESCRIBE[kind]
    return [item[id_key] for item in getattr(ec2, method)(Filters=filters)[key]]


def fleet_resources(ec2: Any) -> dict[str, list[str]]:
    """Every resource carrying the fleet's tags, by kind."""
    found = {kind: describe(ec2, kind, fleet_filter()) for kind in DESCRIBE}
    return {"instances": [i["InstanceId"] for i in live_instances(ec2, fleet_filter())], **found}


def account_counts(ec2: Any) -> dict[str, int]:
    """How many resources of each kind the whole (moto) account holds."""
    counts = {kind: len(describe(ec2, kind, [])) for kind in DESCRIBE if kind != "volumes"}
    return {"instances": len(live_instances(ec2, [])), **counts}


def rule_set(permissions: list[dict[str, Any]]) -> set[tuple[str, int, int, str]]:
    """(protocol, from port, to port, source or destination) for every rule, flattened."""
    rules = set()
    for perm in permissions:
        peers = [r["CidrIp"] for r in perm.get("IpRanges", [])]
        peers += [r["CidrIpv6"] for r in perm.get("Ipv6Ranges", [])]
        peers += [p["GroupId"] for p in perm.get("UserIdGroupPairs", [])]
        peers += [p["PrefixListId"] for p in perm.get("PrefixListIds", [])]
        for peer in peers:
            rules.add((perm["IpProtocol"], perm.get("FromPort", -1), perm.get("ToPort", -1), peer))
    return rules


def security_group(ec2: Any, name: str) -> dict[str, Any]:
    groups = ec2.describe_security_groups(Filters=[*fleet_filter(), {"Name": "group-name", "Values": [name]}])
    [group] = groups["SecurityGroups"]
    return group


@pytest.fixture(scope="module")
def unrelated(ec2: Any, moto_url: str) -> dict[str, str]:
    """A clean account holding things the fleet must never touch: an untagged VPC with a
    security group and an instance, and another onnxfleet fleet's tagged VPC, instance
    (Node=worker-1, like ours) and key pair."""
    urllib.request.urlopen(urllib.request.Request(f"{moto_url}/moto-api/reset", method="POST"), timeout=10)
    vpc = ec2.create_vpc(CidrBlock="10.99.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.99.1.0/24")["Subnet"]["SubnetId"]
    group = ec2.create_security_group(GroupName="unrelated", Description="not the fleet's", VpcId=vpc)[
        "GroupId"
    ]
    instance = ec2.run_instances(
        ImageId=NEWEST_NOBLE, MinCount=1, MaxCount=1, SubnetId=subnet, SecurityGroupIds=[group]
    )["Instances"][0]["InstanceId"]

    other = [
        {"Key": "Project", "Value": "onnxfleet"},
        {"Key": "Fleet", "Value": "other"},
        {"Key": "Role", "Value": "worker"},
        {"Key": "Node", "Value": "worker-1"},
    ]
    other_vpc = ec2.create_vpc(
        CidrBlock="10.42.0.0/16", TagSpecifications=[{"ResourceType": "vpc", "Tags": other}]
    )["Vpc"]["VpcId"]
    other_subnet = ec2.create_subnet(VpcId=other_vpc, CidrBlock="10.42.1.0/24")["Subnet"]["SubnetId"]
    other_instance = ec2.run_instances(
        ImageId=NEWEST_NOBLE,
        MinCount=1,
        MaxCount=1,
        SubnetId=other_subnet,
        TagSpecifications=[{"ResourceType": "instance", "Tags": other}],
    )["Instances"][0]["InstanceId"]
    ec2.create_key_pair(KeyName="other", TagSpecifications=[{"ResourceType": "key-pair", "Tags": other}])
    return {
        "vpc": vpc,
        "group": group,
        "instance": instance,
        "other_vpc": other_vpc,
        "other_instance": other_instance,
        "other_key": "other",
    }


@pytest.fixture(scope="module")
def provision(
    ansible: Callable[..., Run], ssh_public_key: Path, tmp_path_factory: pytest.TempPathFactory
) -> Callable[..., Run]:
    """`ansible-playbook playbooks/provision.yml -e fleet_provider=aws` with the test's settings."""
    settings = tmp_path_factory.mktemp("aws") / "fleet.json"
    settings.write_text(
        json.dumps(
            {
                "fleet_admin_cidrs": [ADMIN],
                "fleet_allowed_cidrs": [CLIENTS],
                "aws_fleet_ssh_public_key_file": str(ssh_public_key),
                "fleet_extra_tags": EXTRA_TAGS,
                # moto's instances have no SSH server
                "aws_fleet_wait_for_ssh": False,
            }
        )
    )

    def run(*extra: str) -> Run:
        return ansible(
            "ansible-playbook",
            "playbooks/provision.yml",
            *AWS_PLAYBOOK_ARGS,
            "-e",
            f"@{settings}",
            *extra,
        )

    return run


@pytest.fixture(scope="module")
def first_run(ec2: Any, unrelated: dict[str, str], provision: Callable[..., Run]) -> dict[str, Any]:
    before = account_counts(ec2)
    run = provision().check()
    return {"run": run, "before": before, "after": account_counts(ec2)}


def test_provision_creates_exactly_the_fleet(ec2: Any, first_run: dict[str, Any]) -> None:
    assert first_run["run"].changed > 0
    resources = fleet_resources(ec2)
    # the whole account grew by exactly the fleet (+1 route table and +1 security group:
    # the main route table and default group AWS creates with every VPC)
    grown = {kind: first_run["after"][kind] - first_run["before"][kind] for kind in first_run["before"]}
    assert grown == {
        "instances": 5,
        "vpcs": 1,
        "subnets": 2,
        "igws": 1,
        "route_tables": 2,
        "security_groups": 3,
        "key_pairs": 1,
    }
    assert {kind: len(ids) for kind, ids in resources.items()} == {
        "instances": 5,
        "vpcs": 1,
        "subnets": 2,
        "igws": 1,
        "route_tables": 1,
        "security_groups": 2,
        "key_pairs": 1,
        "volumes": 5,
    }

    [vpc] = ec2.describe_vpcs(VpcIds=resources["vpcs"])["Vpcs"]
    assert vpc["CidrBlock"] == "10.42.0.0/16"
    subnets = ec2.describe_subnets(SubnetIds=resources["subnets"])["Subnets"]
    assert {s["CidrBlock"] for s in subnets} == {"10.42.1.0/24", "10.42.2.0/24"}
    assert len({s["AvailabilityZone"] for s in subnets}) == 2
    assert all(s["MapPublicIpOnLaunch"] and s["VpcId"] == vpc["VpcId"] for s in subnets)
    [igw] = ec2.describe_internet_gateways(InternetGatewayIds=resources["igws"])["InternetGateways"]
    assert [a["VpcId"] for a in igw["Attachments"]] == [vpc["VpcId"]]
    [table] = ec2.describe_route_tables(RouteTableIds=resources["route_tables"])["RouteTables"]
    assert {r["DestinationCidrBlock"]: r["GatewayId"] for r in table["Routes"]} == {
        "10.42.0.0/16": "local",
        "0.0.0.0/0": igw["InternetGatewayId"],
    }
    assert {a["SubnetId"] for a in table["Associations"]} == set(resources["subnets"])
    [key] = ec2.describe_key_pairs(KeyNames=resources["key_pairs"])["KeyPairs"]
    assert key["KeyName"] == FLEET
    assert key["KeyType"] == "ed25519"

    # every resource carries the fleet's tags, a role and the user's cost tags
    tagged = [
        vpc,
        *subnets,
        igw,
        table,
        key,
        *ec2.describe_security_groups(GroupIds=resources["security_groups"])["SecurityGroups"],
        *live_instances(ec2, fleet_filter()),
        *ec2.describe_volumes(VolumeIds=resources["volumes"])["Volumes"],
    ]
    for resource in tagged:
        tags = tags_of(resource)
        assert tags.items() >= {"Project": "onnxfleet", "Fleet": FLEET, **EXTRA_TAGS}.items(), resource
        assert tags.get("Role") in {"network", "access", "orchestrator", "worker"}, resource


def test_instances_are_hardened_and_spread(ec2: Any, first_run: dict[str, Any]) -> None:
    fleet = nodes(ec2)
    assert set(fleet) == expected_nodes(4)
    orchestrator_sg = security_group(ec2, ORCH_SG)["GroupId"]
    worker_sg = security_group(ec2, WORKER_SG)["GroupId"]
    for node, instance in fleet.items():
        tags = tags_of(instance)
        role = "orchestrator" if node == "orchestrator" else "worker"
        assert tags["Role"] == role
        assert tags["Name"] == f"{FLEET}-{node}"
        assert tags["SshUser"] == "admin"
        assert instance["InstanceType"] == "c7i.large"
        # the newest amd64 Debian 12 of Debian's: not the arm64 one, not a backports build,
        # not the older build
        assert instance["ImageId"] == NEWEST_DEBIAN
        assert instance["KeyName"] == FLEET
        assert instance.get("PublicIpAddress")
        assert [g["GroupId"] for g in instance["SecurityGroups"]] == [
            orchestrator_sg if role == "orchestrator" else worker_sg
        ]
        assert instance["MetadataOptions"]["HttpTokens"] == "required"
        assert instance["MetadataOptions"]["HttpEndpoint"] == "enabled"
        [mapping] = instance["BlockDeviceMappings"]
        assert mapping["DeviceName"] == "/dev/xvda"
        [volume] = ec2.describe_volumes(VolumeIds=[mapping["Ebs"]["VolumeId"]])["Volumes"]
        assert (volume["VolumeType"], volume["Encrypted"]) == ("gp3", True)
        assert volume["Size"] == (16 if role == "orchestrator" else 32)
    worker_subnets = {i["SubnetId"] for n, i in fleet.items() if n != "orchestrator"}
    assert len(worker_subnets) == 2, "workers are spread over both subnets"


def test_security_groups_are_exactly_least_privilege(ec2: Any, first_run: dict[str, Any]) -> None:
    orchestrator = security_group(ec2, ORCH_SG)
    worker = security_group(ec2, WORKER_SG)
    assert rule_set(orchestrator["IpPermissions"]) == {
        ("tcp", 80, 80, CLIENTS),
        ("tcp", 443, 443, CLIENTS),
        ("tcp", 22, 22, ADMIN),
        ("tcp", 8099, 8099, "10.42.0.0/16"),  # the workers fetch a new app image
    }
    assert rule_set(orchestrator["IpPermissionsEgress"]) == {
        ("tcp", 5000, 5001, "10.42.0.0/16"),
        ("tcp", 80, 80, "0.0.0.0/0"),
        ("tcp", 443, 443, "0.0.0.0/0"),
    }
    assert rule_set(worker["IpPermissions"]) == {
        ("tcp", 5000, 5001, orchestrator["GroupId"]),
        ("tcp", 22, 22, ADMIN),
    }
    assert rule_set(worker["IpPermissionsEgress"]) == {
        ("tcp", 80, 80, "0.0.0.0/0"),
        ("tcp", 443, 443, "0.0.0.0/0"),
        ("tcp", 8099, 8099, "10.42.0.0/16"),
    }


def test_second_run_changes_nothing(first_run: dict[str, Any], provision: Callable[..., Run]) -> None:
    assert provision().check().changed == 0


def test_check_mode_on_the_fleet_changes_nothing(
    ec2: Any, first_run: dict[str, Any], provision: Callable[..., Run]
) -> None:
    before = {node: i["InstanceId"] for node, i in nodes(ec2).items()}
    assert provision("--check", "--diff").check().changed == 0
    assert {node: i["InstanceId"] for node, i in nodes(ec2).items()} == before


def inventory(ansible: Callable[..., Run]) -> dict[str, Any]:
    run = ansible("ansible-inventory", "-i", "inventory/aws_ec2.yml", "--list").check()
    return unwrap(json.loads(run.stdout))


def test_inventory_gives_the_groups_and_variables(
    ec2: Any, first_run: dict[str, Any], ansible: Callable[..., Run]
) -> None:
    listing = inventory(ansible)
    hosts = {f"{FLEET}-{node}" for node in expected_nodes(4)}
    assert set(listing["onnxfleet"]["hosts"]) == hosts
    assert set(listing["workers"]["hosts"]) == hosts - {f"{FLEET}-orchestrator"}
    assert listing["orchestrators"]["hosts"] == [f"{FLEET}-orchestrator"]
    hostvars = listing["_meta"]["hostvars"]
    assert set(hostvars) == hosts, "only this fleet's running instances"
    for node, instance in nodes(ec2).items():
        host = hostvars[f"{FLEET}-{node}"]
        assert host["fleet_node"] == node
        assert host["fleet_private_address"] == instance["PrivateIpAddress"]
        assert host["ansible_host"] == instance["PublicIpAddress"]
        assert host["ansible_user"] == "admin"
        assert host["fleet_architecture"] == "amd64"


ROUTES_TEMPLATE = ROOT / "roles" / "orchestrator" / "templates" / "routes.json.j2"


def test_routing_table_renders_from_the_inventory(
    ec2: Any, first_run: dict[str, Any], ansible: Callable[..., Run], tmp_path: Path
) -> None:
    assert ROUTES_TEMPLATE.is_file(), f"{ROUTES_TEMPLATE} (orchestrator role) is missing"
    dest = tmp_path / "routes.json"
    ansible(
        "ansible-playbook",
        "-i",
        "inventory/aws_ec2.yml",
        "tests/aws/render_routes.yml",
        "-e",
        f"routes_dest={dest}",
    ).check()
    table = json.loads(dest.read_text())
    # 2 containers per worker on ports 5000 and 5001, at the private addresses
    expected = {
        (f"{node}/{index}", f"http://{instance['PrivateIpAddress']}:{5000 + index}", node)
        for node, instance in nodes(ec2).items()
        if node != "orchestrator"
        for index in range(2)
    }
    assert {(c["name"], c["url"], c["node"]) for c in table["containers"]} == expected
    assert len(table["containers"]) == 8
    assert {c["max_concurrency"] for c in table["containers"]} == {1}


def test_the_edge_certificate_names_the_public_dns_name_and_address(
    ec2: Any, first_run: dict[str, Any], ansible: Callable[..., Run], tmp_path: Path
) -> None:
    """The edge role's generated certificate covers what clients of an EC2 node type: its
    public DNS name and its public address (the inventory's aws_ prefix renames EC2's own
    host variables, which the edge role reads unprefixed)."""
    dest = tmp_path / "names.json"
    ansible(
        "ansible-playbook",
        "-i",
        "inventory/aws_ec2.yml",
        "tests/aws/render_edge_names.yml",
        "-e",
        f"names_dest={dest}",
    ).check()
    orchestrator = nodes(ec2)["orchestrator"]
    assert orchestrator["PublicDnsName"], "moto gives the instance a public DNS name"
    names = json.loads(dest.read_text())
    assert f"DNS:{orchestrator['PublicDnsName']}" in names
    assert f"IP:{orchestrator['PublicIpAddress']}" in names


def known_hosts(aws_env: dict[str, str]) -> Path:
    return Path(aws_env["XDG_STATE_HOME"]) / "onnxfleet" / FLEET / "known_hosts"


def test_worker_count_converges_with_stable_names(
    ec2: Any,
    first_run: dict[str, Any],
    provision: Callable[..., Run],
    ansible: Callable[..., Run],
    aws_env: dict[str, str],
) -> None:
    ids = {node: i["InstanceId"] for node, i in nodes(ec2).items()}
    # a rule added by hand (SSH from anywhere) is removed by the next run
    ec2.authorize_security_group_ingress(
        GroupId=security_group(ec2, WORKER_SG)["GroupId"],
        IpPermissions=[
            {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}
        ],
    )

    assert provision("-e", "fleet_worker_count=6").check().changed > 0
    six = nodes(ec2)
    assert set(six) == expected_nodes(6)
    assert {node: six[node]["InstanceId"] for node in ids} == ids, "existing nodes are kept"
    assert ("tcp", 22, 22, "0.0.0.0/0") not in rule_set(security_group(ec2, WORKER_SG)["IpPermissions"])

    # Host keys Ansible remembered (as StrictHostKeyChecking=accept-new does on first contact).
    remembered = {node: i["PublicIpAddress"] for node, i in six.items()}
    known_hosts(aws_env).write_text(
        "".join(
            f"{address} ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI{node}\n" for node, address in remembered.items()
        )
    )

    assert provision("-e", "fleet_worker_count=3").check().changed > 0
    three = nodes(ec2)
    assert set(three) == expected_nodes(3)
    assert {node: i["InstanceId"] for node, i in three.items()} == {
        node: ids[node] for node in expected_nodes(3)
    }, "scaling in removes the highest-numbered workers only"
    gone = [six[f"worker-{i}"]["InstanceId"] for i in (4, 5, 6)]
    reservations = ec2.describe_instances(InstanceIds=gone)["Reservations"]
    assert {i["State"]["Name"] for r in reservations for i in r["Instances"]} == {"terminated"}
    assert provision("-e", "fleet_worker_count=3").check().changed == 0

    listing = inventory(ansible)
    assert set(listing["workers"]["hosts"]) == {f"{FLEET}-worker-{i}" for i in (1, 2, 3)}

    # The terminated nodes' addresses go back to AWS, which hands them to other instances:
    # their host keys are forgotten; the kept nodes' are not.
    still_known = {line.split()[0] for line in known_hosts(aws_env).read_text().splitlines()}
    assert still_known == {remembered[node] for node in expected_nodes(3)}


def test_changed_cost_tags_retag_the_fleet_and_orphan_nothing(
    ec2: Any, first_run: dict[str, Any], provision: Callable[..., Run]
) -> None:
    shape = same_shape(ec2)
    before = fleet_resources(ec2)
    assert provision(*shape, "-e", '{"fleet_extra_tags": {"CostCenter": "research"}}').check().changed > 0
    after = fleet_resources(ec2)
    assert {kind: sorted(ids) for kind, ids in after.items()} == {
        kind: sorted(ids) for kind, ids in before.items()
    }, "the same resources, found again by the fleet's own tags"
    [table] = ec2.describe_route_tables(RouteTableIds=after["route_tables"])["RouteTables"]
    [vpc] = ec2.describe_vpcs(VpcIds=after["vpcs"])["Vpcs"]
    for resource in (table, vpc, *nodes(ec2).values()):
        assert tags_of(resource)["CostCenter"] == "research"
        assert "Owner" not in tags_of(resource), "a cost tag no longer asked for is removed"
    assert provision(*shape).check().changed > 0, "back to the test's cost tags"
    assert {kind: sorted(ids) for kind, ids in fleet_resources(ec2).items()} == {
        kind: sorted(ids) for kind, ids in before.items()
    }
    for instance in nodes(ec2).values():
        assert tags_of(instance).items() >= EXTRA_TAGS.items()


def test_nodes_changed_by_hand_are_put_back(
    ec2: Any, first_run: dict[str, Any], provision: Callable[..., Run]
) -> None:
    """The role calls ec2_instance only for the nodes whose instance differs from what is
    asked (each kind of difference it compares, made by hand here), and those calls undo them."""
    shape = same_shape(ec2)
    before = nodes(ec2)
    assert {"orchestrator", "worker-1", "worker-2", "worker-3"} <= set(before)
    orchestrator_sg = security_group(ec2, ORCH_SG)["GroupId"]
    worker_sg = security_group(ec2, WORKER_SG)["GroupId"]
    ec2.create_tags(
        Resources=[before["worker-1"]["InstanceId"]], Tags=[{"Key": "Scratch", "Value": "by hand"}]
    )
    # (every option given: moto keeps only the ones a modification names, unlike AWS)
    ec2.modify_instance_metadata_options(
        InstanceId=before["worker-1"]["InstanceId"],
        HttpTokens="optional",
        HttpEndpoint="enabled",
        HttpPutResponseHopLimit=1,
        HttpProtocolIpv6="disabled",
        InstanceMetadataTags="disabled",
    )
    ec2.stop_instances(InstanceIds=[before["worker-2"]["InstanceId"]])
    ec2.modify_instance_attribute(InstanceId=before["orchestrator"]["InstanceId"], Groups=[worker_sg])

    run = provision(*shape).check()
    assert run.changed > 0
    for launched in ("worker-1 (tags)", "worker-2 (state stopped)", "orchestrator (security groups)"):
        assert f"(item={launched})" in run.output
    assert "(item=worker-3 (" not in run.output, "a node as asked is left alone"
    after = nodes(ec2)
    assert {n: i["InstanceId"] for n, i in after.items()} == {n: i["InstanceId"] for n, i in before.items()}
    assert "Scratch" not in tags_of(after["worker-1"])
    assert after["worker-1"]["MetadataOptions"]["HttpTokens"] == "required"
    assert {i["State"]["Name"] for i in after.values()} == {"running"}
    assert [g["GroupId"] for g in after["orchestrator"]["SecurityGroups"]] == [orchestrator_sg]


def test_a_changed_vpc_cidr_is_refused(
    ec2: Any, first_run: dict[str, Any], provision: Callable[..., Run]
) -> None:
    vpcs = fleet_resources(ec2)["vpcs"]
    run = provision("-e", "aws_fleet_vpc_cidr=10.50.0.0/16")
    assert run.rc != 0
    assert "and a VPC's CIDR cannot change" in run.output
    assert "aws_fleet_vpc_cidr is 10.50.0.0/16" in run.output
    assert fleet_resources(ec2)["vpcs"] == vpcs, "no second VPC"


class FakeOrchestratorAdmin:
    """The orchestrator's admin API on loopback, standing in for the orchestrator node of a
    moto fleet (whose address must never be connected to): records each drain and ready
    with the node's instance type and state in moto at that moment; /status says every
    container of the fleet's workers passes its checks."""

    TOKEN = "fake-admin-token"

    def __init__(self, ec2: Any) -> None:
        self.ec2 = ec2
        self.events: list[tuple[str, str, str, str]] = []
        self.port = free_port()
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), self._handler())
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeOrchestratorAdmin:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        admin = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _answer(self, status: int, body: Any) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                workers = [n for n in nodes(admin.ec2) if n != "orchestrator"]
                containers = [
                    {"name": f"{n}/{i}", "node": n, "healthy": True} for n in workers for i in (0, 1)
                ]
                self._answer(200, {"containers": containers})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if self.headers.get("Authorization") != f"Bearer {admin.TOKEN}":
                    self._answer(401, {"error": "bad token", "code": "unauthorized"})
                    return
                action = self.path.rsplit("/", 1)[-1]
                instance = nodes(admin.ec2)[body["node"]]
                admin.events.append(
                    (action, body["node"], instance["InstanceType"], instance["State"]["Name"])
                )
                answer = {"containers": [f"{body['node']}/0", f"{body['node']}/1"], "state": action}
                if action == "drain":
                    assert body["wait"] is True
                    answer["in_flight"] = 0
                self._answer(200, answer)

        return Handler


@pytest.fixture
def orchestrator_node(tmp_path: Path) -> Iterator[Path]:
    """A local node (the local fleet's node image: Debian, login user admin with sudo) on the
    host's network, standing in for the orchestrator node of a moto fleet, with the admin
    token as the orchestrator role leaves it: root's, 0440, a group admin is not in. Ansible
    reaches it as admin (docker exec -u admin), as it reaches an EC2 node over SSH. Returns
    an inventory naming it as the fleet's orchestrator."""
    name = f"aws-orchestrator-{secrets.token_hex(4)}"
    subprocess.run(
        [
            "docker",
            "run",
            "-d",
            "--rm",
            "--name",
            name,
            "--network",
            "host",
            "--entrypoint",
            "sleep",
            node_image(),
            "infinity",
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    try:
        subprocess.run(
            [
                "docker",
                "exec",
                name,
                "sh",
                "-c",
                "install -d -m 0750 /etc/onnxfleet"
                f" && echo {FakeOrchestratorAdmin.TOKEN} > /etc/onnxfleet/admin-token"
                " && chmod 0440 /etc/onnxfleet/admin-token",
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )
        denied = subprocess.run(
            ["docker", "exec", "-u", "admin", name, "cat", "/etc/onnxfleet/admin-token"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert denied.returncode != 0, "admin reads the token"
        assert "Permission denied" in denied.stderr
        inventory = tmp_path / "orchestrator.yml"
        inventory.write_text(
            json.dumps(
                {
                    "all": {
                        "hosts": {
                            f"{FLEET}-orchestrator": {
                                "ansible_connection": "community.docker.docker",
                                "ansible_host": name,
                                "ansible_user": "admin",
                                "ansible_python_interpreter": "/usr/bin/python3",
                            }
                        }
                    }
                }
            )
        )
        yield inventory
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True, timeout=60, check=False)


def node_image() -> str:
    """The local fleet's node image (the newest built), or built here from its Dockerfile."""
    found = subprocess.run(
        [
            "docker",
            "image",
            "ls",
            "--filter",
            "reference=onnxfleet-node",
            "--format",
            "{{.Repository}}:{{.Tag}}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.split()
    if found:
        return found[0]
    subprocess.run(
        [
            "docker",
            "build",
            "-q",
            "-t",
            "aws-onnxfleet-node:test",
            "--build-arg",
            "BASE_IMAGE=onnxfleet/base:bookworm",
            str(ROOT / "roles" / "local_fleet" / "files" / "node"),
        ],
        check=True,
        capture_output=True,
        timeout=900,
    )
    return "aws-onnxfleet-node:test"


def test_an_instance_type_change_is_refused_unless_allowed_then_rolled_with_drain(
    ec2: Any, first_run: dict[str, Any], provision: Callable[..., Run], orchestrator_node: Path
) -> None:
    """Allowed, the change rolls one node at a time, workers first: each worker is drained
    in the orchestrator (the answer waited for) while it still runs its old type, changed,
    then put back in service, before the next one is drained; the orchestrator last,
    without drain (it is the service). The orchestrator node is a local node container on
    the host's network (the admin API there is a fake one on loopback, never moto's address
    for the node), reached as its login user, which cannot read the admin token: the drain
    tasks become root there, as they must on EC2. Not tested here: SSH (the default
    connection of those tasks), the real orchestrator's answers (tests/ansible's rollout
    runs the same node_admin tasks against it)."""
    shape = same_shape(ec2)
    before = nodes(ec2)
    run = provision(*shape, "-e", "aws_fleet_worker_instance_type=m7i.large")
    assert run.rc != 0
    assert "aws_fleet_allow_instance_type_change=true" in run.output
    assert "worker-1 runs c7i.large" in run.output
    assert {n: (i["InstanceType"], i["State"]["Name"]) for n, i in nodes(ec2).items()} == {
        n: ("c7i.large", "running") for n in before
    }, "nothing stopped, nothing changed"

    with FakeOrchestratorAdmin(ec2) as admin:
        resize = [
            *shape,
            "-i",
            str(orchestrator_node),
            "-e",
            f"fleet_admin_url=http://127.0.0.1:{admin.port}",
            "-e",
            "aws_fleet_worker_instance_type=m7i.large",
            "-e",
            "aws_fleet_allow_instance_type_change=true",
        ]
        run = provision(*resize).check()
        assert run.changed > 0
        workers = sorted((n for n in before if n != "orchestrator"), key=lambda n: int(n.split("-")[1]))
        expected = []
        for node in workers:
            expected += [("drain", node, "c7i.large", "running"), ("ready", node, "m7i.large", "running")]
        assert admin.events == expected
        after = nodes(ec2)
        assert {n: i["InstanceId"] for n, i in after.items()} == {
            n: i["InstanceId"] for n, i in before.items()
        }
        assert {n: (i["InstanceType"], i["State"]["Name"]) for n, i in after.items()} == {
            n: ("c7i.large" if n == "orchestrator" else "m7i.large", "running") for n in before
        }
        assert provision(*resize).check().changed == 0
        assert admin.events == expected, "nothing drained when nothing changes"
        # without the orchestrator in the inventory, a worker is not stopped undrained
        run = provision(
            *shape,
            "-e",
            "aws_fleet_worker_instance_type=c7i.large",
            "-e",
            "aws_fleet_allow_instance_type_change=true",
            "-e",
            "fleet_orchestrator_group=nobody",
        )
        assert run.rc != 0
        assert "each worker is drained in the orchestrator first" in run.output
        assert {i["InstanceType"] for n, i in nodes(ec2).items() if n != "orchestrator"} == {"m7i.large"}


def test_teardown_removes_exactly_the_fleet(
    ec2: Any,
    first_run: dict[str, Any],
    unrelated: dict[str, str],
    ansible: Callable[..., Run],
    aws_env: dict[str, str],
) -> None:
    def teardown() -> Run:
        return ansible(
            "ansible-playbook",
            "playbooks/teardown.yml",
            "-i",
            "inventory/aws_ec2.yml",
            "-e",
            "fleet_provider=aws",
        ).check()

    assert teardown().changed > 0
    assert fleet_resources(ec2) == {
        "instances": [],
        "vpcs": [],
        "subnets": [],
        "igws": [],
        "route_tables": [],
        "security_groups": [],
        "key_pairs": [],
        "volumes": [],
    }
    # nothing else went
    assert {v["VpcId"] for v in ec2.describe_vpcs()["Vpcs"]} >= {unrelated["vpc"], unrelated["other_vpc"]}
    assert ec2.describe_security_groups(GroupIds=[unrelated["group"]])["SecurityGroups"]
    running = {i["InstanceId"] for i in live_instances(ec2, [])}
    assert {unrelated["instance"], unrelated["other_instance"]} <= running
    assert ec2.describe_key_pairs(KeyNames=[unrelated["other_key"]])["KeyPairs"]
    assert not known_hosts(aws_env).exists(), "the fleet's host keys are forgotten"

    assert teardown().changed == 0
