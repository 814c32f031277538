"""The aws_fleet_launches filter: which nodes still need their amazon.aws.ec2_instance call.
A node is left out only when that call would change nothing on its instance (what the
module compares on an existing instance); test_aws_fleet.py checks the same against moto,
with nodes changed by hand."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from ansible.errors import AnsibleFilterError
from ansible_collections.onnxfleet.serving.plugins.filter.aws_fleet import aws_fleet_launches

NODES = ["orchestrator", "worker-1", "worker-2"]
TAGS = {"CostCenter": "ml", "Project": "onnxfleet", "Fleet": "prod", "SshUser": "admin"}
TYPES = {"orchestrator": "c7i.large", "worker": "m7i.large"}
GROUPS = {"orchestrator": "sg-orch", "worker": "sg-work"}
METADATA = {
    "http_endpoint": "enabled",
    "http_tokens": "required",
    "http_put_response_hop_limit": 1,
    "http_protocol_ipv6": "disabled",
    "instance_metadata_tags": "disabled",
}


def instance(node: str, **changes: Any) -> dict[str, Any]:
    """A live instance as ec2_instance_info returns it, exactly as the role asks for it."""
    role = "orchestrator" if node == "orchestrator" else "worker"
    found: dict[str, Any] = {
        "instance_id": f"i-{node}",
        "instance_type": TYPES[role],
        "state": {"code": 16, "name": "running"},
        "tags": {**TAGS, "Role": role, "Node": node, "Name": f"prod-{node}", "aws:ec2launchtemplate:id": "x"},
        "network_interfaces": [{"network_interface_id": f"eni-{node}"}],
        "security_groups": [{"group_id": GROUPS[role], "group_name": f"prod-{role}"}],
        "metadata_options": {"state": "applied", **METADATA},
    }
    found.update(changes)
    return found


def launches(instances: list[dict[str, Any]], **given: Any) -> list[dict[str, Any]]:
    settings: dict[str, Any] = {
        "nodes": NODES,
        "name_prefix": "prod-",
        "tags": TAGS,
        "instance_types": TYPES,
        "security_groups": GROUPS,
        "metadata_options": METADATA,
    }
    return aws_fleet_launches(instances, **{**settings, **given})


def whys(instances: list[dict[str, Any]]) -> dict[str, str]:
    return {launch["node"]: launch["why"] for launch in launches(instances)}


def test_a_new_fleet_launches_every_node_with_its_roles_settings() -> None:
    assert launches([]) == [
        {
            "node": node,
            "index": index,
            "role": role,
            "name": f"prod-{node}",
            "tags": {**TAGS, "Role": role, "Node": node},
            "instance_type": TYPES[role],
            "security_group": GROUPS[role],
            "why": "0 instances",
        }
        for index, (node, role) in enumerate(
            [("orchestrator", "orchestrator"), ("worker-1", "worker"), ("worker-2", "worker")]
        )
    ]


def test_a_fleet_as_asked_launches_nothing() -> None:
    assert launches([instance(node) for node in NODES]) == []


def test_scaling_out_launches_the_new_nodes_only_and_keeps_their_position() -> None:
    planned = launches([instance(node) for node in NODES], nodes=[*NODES, "worker-3", "worker-4"])
    assert [(p["node"], p["index"]) for p in planned] == [("worker-3", 3), ("worker-4", 4)]


def test_surplus_nodes_are_not_launched() -> None:
    assert launches([instance(node) for node in [*NODES, "worker-3"]]) == []


def with_change(node: str, **changes: Any) -> list[dict[str, Any]]:
    return [instance(n, **changes) if n == node else instance(n) for n in NODES]


def retagged(node: str, change: dict[str, Any], drop: str | None = None) -> list[dict[str, Any]]:
    tags = {**instance(node)["tags"], **change}
    if drop:
        del tags[drop]
    return with_change(node, tags=tags)


@pytest.mark.parametrize(
    ("instances", "why"),
    [
        pytest.param(
            with_change("worker-1", state={"code": 80, "name": "stopped"}), "state stopped", id="stopped"
        ),
        pytest.param(
            with_change("worker-1", state={"code": 0, "name": "pending"}), "state pending", id="pending"
        ),
        pytest.param(retagged("worker-1", {"CostCenter": "research"}), "tags", id="tag-value"),
        pytest.param(retagged("worker-1", {"Owner": "someone"}), "tags", id="tag-to-purge"),
        pytest.param(retagged("worker-1", {}, drop="SshUser"), "tags", id="tag-missing"),
        pytest.param(retagged("worker-1", {"Name": "other"}), "tags", id="name"),
        pytest.param(retagged("worker-1", {"Role": "orchestrator"}), "tags", id="role-tag"),
        pytest.param(with_change("worker-1", instance_type="c7i.large"), "instance type", id="type"),
        pytest.param(
            with_change("worker-1", security_groups=[{"group_id": "sg-orch"}]), "security groups", id="group"
        ),
        pytest.param(
            with_change("worker-1", security_groups=[{"group_id": "sg-work"}, {"group_id": "sg-other"}]),
            "security groups",
            id="extra-group",
        ),
        pytest.param(
            with_change("worker-1", network_interfaces=[{}, {}]), "network interfaces", id="two-interfaces"
        ),
        pytest.param(
            with_change("worker-1", metadata_options={**METADATA, "http_tokens": "optional"}),
            "metadata options",
            id="imdsv1",
        ),
        pytest.param(
            with_change("worker-1", metadata_options={**METADATA, "http_put_response_hop_limit": 2}),
            "metadata options",
            id="hop-limit",
        ),
    ],
)
def test_a_node_that_differs_is_launched_alone(instances: list[dict[str, Any]], why: str) -> None:
    assert whys(instances) == {"worker-1": why}


def test_two_instances_for_one_node_go_to_the_module() -> None:
    twice = [*(instance(node) for node in NODES), instance("worker-2", instance_id="i-second")]
    assert whys(twice) == {"worker-2": "2 instances"}


def test_what_the_module_does_not_compare_is_not_compared() -> None:
    # an option the instance does not report, a hop limit as text, AWS's own tags, a
    # subnet, image or key of its own: the module changes none of them on an instance
    metadata = {key: value for key, value in METADATA.items() if key != "instance_metadata_tags"}
    metadata["http_put_response_hop_limit"] = "1"
    found = [
        instance(
            node,
            metadata_options=metadata,
            subnet_id="subnet-elsewhere",
            image_id="ami-old",
            key_name="old",
        )
        for node in NODES
    ]
    assert launches(found) == []


def test_a_tag_value_is_compared_as_text() -> None:
    tags = {**TAGS, "Generation": 2}
    found = [instance(node) for node in NODES]
    for i in found:
        i["tags"]["Generation"] = "2"
    assert launches(found, tags=tags) == []


def test_the_instances_found_are_not_changed() -> None:
    found = [instance(node) for node in NODES]
    before = copy.deepcopy(found)
    launches(found)
    assert found == before


def test_bad_input_is_a_clear_error() -> None:
    with pytest.raises(AnsibleFilterError, match="expected the list of instances"):
        launches({"instances": []})  # type: ignore[arg-type]
    with pytest.raises(AnsibleFilterError, match="security_groups has no entry for the role worker"):
        launches([], security_groups={"orchestrator": "sg-orch"})
