# Copyright: onnxfleet contributors
# Apache-2.0
"""Filters of the aws_fleet role: which nodes need their amazon.aws.ec2_instance call."""

from __future__ import annotations

from typing import Any

from ansible.errors import AnsibleFilterError

# ec2_instance starts an instance in any other live state (and waits for one stopping);
# a pending one is left alone, but the role then waits for it to run, so it is launched
# (a call that changes nothing) to keep "nothing launched" meaning "every node runs".
_SETTLED = "running"


def _node_spec(
    node: str,
    index: int,
    *,
    name_prefix: str,
    tags: dict[str, Any],
    instance_types: dict[str, str],
    security_groups: dict[str, str],
) -> dict[str, Any]:
    role = "orchestrator" if node == "orchestrator" else "worker"
    for what, by_role in (("instance_types", instance_types), ("security_groups", security_groups)):
        if not by_role.get(role):
            raise AnsibleFilterError("aws_fleet_launches: %s has no entry for the role %s" % (what, role))
    return {
        "node": node,
        "index": index,
        "role": role,
        "name": name_prefix + node,
        "tags": {**tags, "Role": role, "Node": node},
        "instance_type": instance_types[role],
        "security_group": security_groups[role],
    }


def _tags_differ(current: dict[str, Any], wanted: dict[str, Any]) -> bool:
    """As ensure_ec2_tags with purge_tags: a tag missing or with another value (compared
    as text), or one not wanted (but AWS's own aws:* tags, which are never purged)."""
    if any(str(value) != current.get(key) for key, value in wanted.items()):
        return True
    return any(key not in wanted and not key.startswith("aws:") for key in current)


def _why(spec: dict[str, Any], matches: list[dict[str, Any]], metadata_options: dict[str, Any]) -> str | None:
    """Why ec2_instance (exact_count 1) would act on this node, None if it would change nothing."""
    if len(matches) != 1:
        return "%d instances" % len(matches)
    [instance] = matches
    state = (instance.get("state") or {}).get("name")
    groups = {group.get("group_id") for group in instance.get("security_groups") or []}
    current_metadata = instance.get("metadata_options") or {}
    differences = (
        ("state %s" % state, state != _SETTLED),
        ("tags", _tags_differ(instance.get("tags") or {}, {**spec["tags"], "Name": spec["name"]})),
        ("instance type", instance.get("instance_type") != spec["instance_type"]),
        # The module leaves the groups of an instance with several interfaces alone; its
        # call stays (it would change nothing) rather than guess.
        ("network interfaces", len(instance.get("network_interfaces") or []) != 1),
        ("security groups", groups != {spec["security_group"]}),
        # As change_instance_metadata_options: the options both sides have, compared as
        # text (the hop limit is an integer on both, but may come from a template as text).
        (
            "metadata options",
            any(
                key in current_metadata and str(current_metadata[key]) != str(value)
                for key, value in metadata_options.items()
            ),
        ),
    )
    return next((why for why, differs in differences if differs), None)


def aws_fleet_launches(
    instances: list[dict[str, Any]],
    *,
    nodes: list[str],
    name_prefix: str,
    tags: dict[str, Any],
    instance_types: dict[str, str],
    security_groups: dict[str, str],
    metadata_options: dict[str, Any],
) -> list[dict[str, Any]]:
    """The nodes whose amazon.aws.ec2_instance call (exact_count 1, filtered on the node's
    Node tag) would launch or change something, each with what the call is given.

    ``instances`` are the fleet's live instances (ec2_instance_info's shape, found before
    anything changed them). A node is left out only when it has exactly one instance, running,
    with exactly the tags asked for (``tags`` + Role, Node, Name), the instance type, the one
    security group on its one interface and the metadata options: what ec2_instance compares
    on an existing instance (subnet, image, key and volumes are only given to a new one).
    """
    if not isinstance(instances, list):
        raise AnsibleFilterError(
            "aws_fleet_launches: expected the list of instances, got %s" % type(instances).__name__
        )
    launches = []
    for index, node in enumerate(nodes):
        spec = _node_spec(
            node,
            index,
            name_prefix=name_prefix,
            tags=tags,
            instance_types=instance_types,
            security_groups=security_groups,
        )
        matches = [i for i in instances if (i.get("tags") or {}).get("Node") == node]
        why = _why(spec, matches, metadata_options)
        if why is not None:
            launches.append({**spec, "why": why})
    return launches


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {"aws_fleet_launches": aws_fleet_launches}
