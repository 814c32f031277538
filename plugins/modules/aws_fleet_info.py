#!/usr/bin/python
# Copyright: onnxfleet contributors
# Apache-2.0 (see COPYING or https://www.apache.org/licenses/LICENSE-2.0)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: aws_fleet_info
short_description: Everything a fleet's provisioning or teardown looks up, in one call
version_added: 0.3.0
description:
  - Reads, in one module run, what the C(onnxfleet.serving.aws_fleet) role needs before it
    changes anything. Each AWS module is a process of its own that imports boto3 and loads the
    EC2 model (about a second of CPU), so one look-up instead of a dozen makes a provisioning
    re-run or a teardown several times cheaper.
  - With O(purpose=present), the instance types and the architecture they share, the fleet's
    VPCs and subnets, its route tables in those VPCs, the region's zones and the ones that
    offer each instance type, the image to launch, and the fleet's instances.
  - With O(purpose=absent), what a teardown deletes, in the order it deletes them (instances,
    security groups, key pairs, route tables, subnets, internet gateways, VPCs).
  - The fleet's resources are found by O(filters) (the fleet's own tags), never by name.
  - The same C(Describe*) calls as the amazon.aws C(_info) modules, and the same shapes in the
    answer (snake_case keys, tags as a dict, an C(id) key on VPCs, subnets and route tables).
author:
  - onnxfleet developers (@onnxfleet)
options:
  purpose:
    description:
      - V(present) finds what provisioning needs, V(absent) what a teardown deletes.
    type: str
    choices: [present, absent]
    default: present
  filters:
    description:
      - The EC2 filters that find the fleet's resources (a dict of filter names and values),
        e.g. the fleet's own tags C(tag:Project=onnxfleet) and C(tag:Fleet=prod).
    type: dict
    required: true
  instance_states:
    description:
      - The states of the instances to return.
    type: list
    elements: str
    default: [pending, running, stopping, stopped]
  instance_types:
    description:
      - The instance types the fleet runs (O(purpose=present)). The architecture returned is
        the one the first and the last share (V(x86_64) preferred over V(arm64)).
    type: list
    elements: str
    default: []
  image_id:
    description:
      - The image to launch, by id (O(purpose=present)). Without it, the image is looked for
        by O(image_owner) and O(image_name), for the instance types' architecture.
    type: str
  image_owner:
    description:
      - The owner of the image, an account id, an alias such as V(amazon), or V(self).
    type: str
  image_name:
    description:
      - The image's name, wildcards allowed (C(debian-12-a*)).
    type: str
  key_name:
    description:
      - The name of the fleet's key pair (O(purpose=present)). It is looked up by name, as
        C(amazon.aws.ec2_key) finds it, whatever its tags, and compared with O(public_key).
    type: str
  public_key:
    description:
      - The fleet's SSH public key (one OpenSSH line), which the key pair O(key_name) must hold.
    type: str
    default: ""
  vpc_name:
    description:
      - The fleet VPC's C(Name) tag (O(purpose=present)). The VPCs named so, with any tags,
        are returned as RV(named_vpcs), since C(amazon.aws.ec2_vpc_net) would adopt one of them.
    type: str
extends_documentation_fragment:
  - amazon.aws.common.modules
  - amazon.aws.region.modules
  - amazon.aws.boto3
attributes:
  check_mode:
    support: full
    description: The module only reads.
"""

EXAMPLES = r"""
- name: Find what the fleet has, and what the region offers
  onnxfleet.serving.aws_fleet_info:
    filters:
      "tag:Project": onnxfleet
      "tag:Fleet": prod
    instance_types: [c7i.large]
    image_owner: "136693071363"
    image_name: debian-12-a*
  register: found

- name: The newest image for the instance types' architecture
  ansible.builtin.debug:
    msg: "{{ (found.images | last).image_id }} ({{ found.architecture }})"

- name: Find what a teardown deletes
  onnxfleet.serving.aws_fleet_info:
    purpose: absent
    filters:
      "tag:Project": onnxfleet
      "tag:Fleet": prod
  register: doomed
"""

RETURN = r"""
instance_types:
  description: The instance types asked for, as C(amazon.aws.ec2_instance_type_info) returns them.
  returned: O(purpose=present)
  type: list
  elements: dict
  sample: [{"instance_type": "c7i.large", "processor_info": {"supported_architectures": ["x86_64"]}}]
architecture:
  description: The architecture the first and the last instance type share, empty when none.
  returned: O(purpose=present)
  type: str
  sample: x86_64
availability_zones:
  description: The region's available zones (not local or wavelength zones), as C(amazon.aws.aws_az_info).
  returned: O(purpose=present)
  type: list
  elements: dict
  sample: [{"zone_name": "eu-west-3a", "state": "available", "zone_type": "availability-zone"}]
locations:
  description: For each instance type asked for, the sorted zones that offer it.
  returned: O(purpose=present)
  type: dict
  sample: {"c7i.large": ["eu-west-3a", "eu-west-3b", "eu-west-3c"], "m4.large": []}
images:
  description:
    - The image O(image_id), or the available images of O(image_owner) named O(image_name) for
      RV(architecture), oldest first, as C(amazon.aws.ec2_ami_info). Empty when none, or when
      the instance types share no architecture.
  returned: O(purpose=present)
  type: list
  elements: dict
  sample: [{"image_id": "ami-0a0b0c0d0e0f00006", "architecture": "x86_64", "creation_date": "2025-06-01"}]
key_pair:
  description:
    - The key pair named O(key_name) with its public key, as C(amazon.aws.ec2_key_info)
      with C(include_public_key), or an empty dict when there is none.
  returned: O(purpose=present)
  type: dict
  sample: {"key_name": "prod", "key_type": "ed25519", "public_key": "ssh-ed25519 AAAA..."}
key_pair_matches:
  description:
    - Whether the key pair RV(key_pair) holds O(public_key). Compared with the public key EC2
      returns, or where it returns none, with the fingerprint EC2 gives an imported key (RSA,
      MD5 of the DER public key or of the key blob; ED25519, base64 SHA-256 of the key blob).
      C(null) when there is no key pair or no O(public_key).
  returned: O(purpose=present)
  type: bool
named_vpcs:
  description: The VPCs whose C(Name) tag is O(vpc_name), whatever their other tags.
  returned: O(purpose=present)
  type: list
  elements: dict
  sample: [{"id": "vpc-0123456789abcdef0", "cidr_block": "10.42.0.0/16", "tags": {"Name": "prod"}}]
vpcs:
  description: The VPCs O(filters) match, as C(amazon.aws.ec2_vpc_net_info).
  returned: always
  type: list
  elements: dict
  sample: [{"id": "vpc-0123456789abcdef0", "cidr_block": "10.42.0.0/16", "tags": {"Fleet": "prod"}}]
subnets:
  description: The subnets O(filters) match, as C(amazon.aws.ec2_vpc_subnet_info).
  returned: always
  type: list
  elements: dict
  sample: [{"id": "subnet-0123456789abcdef", "cidr_block": "10.42.1.0/24", "availability_zone": "eu-west-3a"}]
route_tables:
  description:
    - The route tables O(filters) match, as C(amazon.aws.ec2_vpc_route_table_info); with
      O(purpose=present) only those in RV(vpcs) (none when there is no VPC).
  returned: always
  type: list
  elements: dict
  sample: [{"id": "rtb-0123456789abcdef0", "vpc_id": "vpc-0123456789abcdef0", "tags": {"Fleet": "prod"}}]
instances:
  description: The instances O(filters) match in O(instance_states), as C(amazon.aws.ec2_instance_info).
  returned: always
  type: list
  elements: dict
  sample: [{"instance_id": "i-0123456789abcdef0", "instance_type": "c7i.large", "state": {"name": "running"}}]
security_groups:
  description: The security groups O(filters) match, as C(amazon.aws.ec2_security_group_info).
  returned: O(purpose=absent)
  type: list
  elements: dict
  sample: [{"group_id": "sg-0123456789abcdef0", "group_name": "prod-worker", "tags": {"Role": "worker"}}]
keypairs:
  description: The key pairs O(filters) match, as C(amazon.aws.ec2_key_info).
  returned: O(purpose=absent)
  type: list
  elements: dict
  sample: [{"key_name": "prod", "tags": {"Fleet": "prod"}}]
internet_gateways:
  description: The internet gateways O(filters) match, as C(amazon.aws.ec2_vpc_igw_info).
  returned: O(purpose=absent)
  type: list
  elements: dict
  sample: [{"internet_gateway_id": "igw-0123456789abcdef0", "attachments": [{"vpc_id": "vpc-01234567"}]}]
"""

import base64
import binascii
import contextlib
import hashlib

from ansible.module_utils.common.dict_transformations import camel_dict_to_snake_dict
from ansible_collections.amazon.aws.plugins.module_utils.ec2 import (
    AnsibleEC2Error,
    describe_availability_zones,
    describe_images,
    describe_instance_types,
    describe_instances,
    describe_internet_gateways,
    describe_key_pairs,
    describe_route_tables,
    describe_security_groups,
    describe_subnets,
    describe_vpcs,
)
from ansible_collections.amazon.aws.plugins.module_utils.modules import AnsibleAWSModule
from ansible_collections.amazon.aws.plugins.module_utils.retries import AWSRetry
from ansible_collections.amazon.aws.plugins.module_utils.tagging import boto3_tag_list_to_ansible_dict
from ansible_collections.amazon.aws.plugins.module_utils.transformation import (
    ansible_dict_to_boto3_filter_list,
)

with contextlib.suppress(ImportError):  # AnsibleAWSModule reports the missing library
    import botocore

# The architectures an image can be chosen for, in order of preference (the last wins).
ARCHITECTURES = ("arm64", "x86_64")


@AWSRetry.jittered_backoff()
def _offerings(client, **params):
    paginator = client.get_paginator("describe_instance_type_offerings")
    return paginator.paginate(**params).build_full_result()["InstanceTypeOfferings"]


def _error_code(error):
    response = getattr(error.exception, "response", None) or {}
    return response.get("Error", {}).get("Code")


def _snake(resource, id_key=None):
    """A resource as the amazon.aws _info modules return it: snake_case keys, tags as a
    dict, and `id` where they add one."""
    item = camel_dict_to_snake_dict(resource, ignore_list=["Tags"])
    item["tags"] = boto3_tag_list_to_ansible_dict(resource.get("Tags") or [])
    if id_key:
        item["id"] = resource[id_key]
    return item


def _instances(client, filters, states):
    reservations = describe_instances(
        client, Filters=[*filters, {"Name": "instance-state-name", "Values": states}]
    )
    return [_snake(instance) for reservation in reservations for instance in reservation["Instances"]]


def shared_architecture(instance_types):
    """The architecture the first and the last instance type both support, '' if none."""
    if not instance_types:
        return ""
    first, last = (
        set(t["ProcessorInfo"]["SupportedArchitectures"]) for t in (instance_types[0], instance_types[-1])
    )
    shared = [arch for arch in ARCHITECTURES if arch in first & last]
    return shared[-1] if shared else ""


def _images(client, params, architecture):
    if params["image_id"]:
        try:
            images = describe_images(client, ImageIds=[params["image_id"]])
        except AnsibleEC2Error as e:
            # an unknown or malformed id: no image, which the role reports with its settings
            if _error_code(e) in ("InvalidAMIID.NotFound", "InvalidAMIID.Malformed"):
                return []
            raise
    elif architecture and params["image_owner"] and params["image_name"]:
        owner = params["image_owner"]
        request = {
            "Filters": ansible_dict_to_boto3_filter_list(
                {"name": params["image_name"], "state": "available", "architecture": architecture}
            )
        }
        # An owner as a filter: DescribeImages is much slower with Owners (as ec2_ami_info does).
        if owner == "self":
            request["Owners"] = ["self"]
        else:
            request["Filters"].append(
                {"Name": "owner-id" if owner.isdigit() else "owner-alias", "Values": [owner]}
            )
        images = describe_images(client, **request)
    else:
        return []
    found = [_snake(image) for image in images]
    return sorted(found, key=lambda image: image.get("creation_date", ""))


def _key_blob(line):
    """(type, decoded blob) of an OpenSSH public key line, or None."""
    fields = (line or "").split()
    if len(fields) < 2:
        return None
    try:
        return fields[0], base64.b64decode(fields[1], validate=True)
    except (binascii.Error, ValueError):
        return None


def _fingerprints(public_key):
    """The fingerprints EC2 may give a key pair imported from this public key line."""
    parsed = _key_blob(public_key)
    if parsed is None:
        return set()
    key_type, blob = parsed
    sha256 = base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
    found = {sha256}

    def colons(digest):
        return ":".join(f"{byte:02x}" for byte in digest)

    # (EC2's fingerprint of an imported RSA key, not a security check)
    found.add(colons(hashlib.md5(blob, usedforsecurity=False).digest()))
    if key_type == "ssh-rsa":
        with contextlib.suppress(ImportError, ValueError):
            from cryptography.hazmat.primitives import serialization

            der = serialization.load_ssh_public_key(public_key.encode()).public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            found.add(colons(hashlib.md5(der, usedforsecurity=False).digest()))
    return found


def key_pair_matches(key_pair, public_key):
    """Whether the key pair (as EC2 describes it) holds this public key; None if unknown."""
    if not key_pair or not _key_blob(public_key):
        return None
    if key_pair.get("PublicKey"):
        return _key_blob(key_pair["PublicKey"]) == _key_blob(public_key)
    return key_pair.get("KeyFingerprint", "").rstrip("=") in _fingerprints(public_key)


def _key_pair(client, name):
    if not name:
        return None
    # (a missing key pair is an empty list, not an error)
    found = describe_key_pairs(client, KeyNames=[name], IncludePublicKey=True)
    return found[0] if found else None


def find_present(client, params, filters):
    """What provisioning looks up before it creates anything."""
    types = params["instance_types"]
    raw_types = describe_instance_types(client, InstanceTypes=types) if types else []
    architecture = shared_architecture(raw_types)
    vpcs = [_snake(vpc, "VpcId") for vpc in describe_vpcs(client, Filters=filters)]
    # Only the fleet's own tables in the fleet's VPC: on a first run there is none.
    tables = []
    if vpcs:
        in_vpcs = [{"Name": "vpc-id", "Values": [vpc["id"] for vpc in vpcs]}]
        tables = [
            _snake(table, "RouteTableId")
            for table in describe_route_tables(client, Filters=[*filters, *in_vpcs])
        ]
    zones = describe_availability_zones(
        client,
        Filters=ansible_dict_to_boto3_filter_list({"state": "available", "zone-type": "availability-zone"}),
    )
    locations = {name: [] for name in types}
    if types:
        offerings = _offerings(
            client,
            LocationType="availability-zone",
            Filters=[{"Name": "instance-type", "Values": types}],
        )
        for offering in offerings:
            locations.setdefault(offering["InstanceType"], []).append(offering["Location"])
    key_pair = _key_pair(client, params["key_name"])
    named_vpcs = []
    if params["vpc_name"]:
        named = describe_vpcs(client, Filters=[{"Name": "tag:Name", "Values": [params["vpc_name"]]}])
        named_vpcs = [_snake(vpc, "VpcId") for vpc in named]
    return {
        "key_pair": _snake(key_pair) if key_pair else {},
        "key_pair_matches": key_pair_matches(key_pair, params["public_key"]),
        "named_vpcs": named_vpcs,
        "instance_types": [camel_dict_to_snake_dict(t) for t in raw_types],
        "architecture": architecture,
        "vpcs": vpcs,
        "subnets": [_snake(subnet, "SubnetId") for subnet in describe_subnets(client, Filters=filters)],
        "route_tables": tables,
        "availability_zones": [camel_dict_to_snake_dict(zone) for zone in zones],
        "locations": {name: sorted(where) for name, where in locations.items()},
        "images": _images(client, params, architecture),
        "instances": _instances(client, filters, params["instance_states"]),
    }


def find_absent(client, params, filters):
    """What a teardown deletes (nothing it deletes is created on the way)."""
    return {
        "instances": _instances(client, filters, params["instance_states"]),
        "security_groups": [_snake(group) for group in describe_security_groups(client, Filters=filters)],
        "keypairs": [_snake(key) for key in describe_key_pairs(client, Filters=filters)],
        "route_tables": [
            _snake(table, "RouteTableId") for table in describe_route_tables(client, Filters=filters)
        ],
        "subnets": [_snake(subnet, "SubnetId") for subnet in describe_subnets(client, Filters=filters)],
        "internet_gateways": [_snake(igw) for igw in describe_internet_gateways(client, Filters=filters)],
        "vpcs": [_snake(vpc, "VpcId") for vpc in describe_vpcs(client, Filters=filters)],
    }


def main():
    module = AnsibleAWSModule(
        argument_spec=dict(
            purpose=dict(type="str", default="present", choices=["present", "absent"]),
            filters=dict(type="dict", required=True),
            instance_states=dict(
                type="list", elements="str", default=["pending", "running", "stopping", "stopped"]
            ),
            instance_types=dict(type="list", elements="str", default=[]),
            image_id=dict(type="str"),
            image_owner=dict(type="str"),
            image_name=dict(type="str"),
            key_name=dict(type="str", no_log=False),
            public_key=dict(type="str", default="", no_log=False),
            vpc_name=dict(type="str"),
        ),
        supports_check_mode=True,
    )
    params = module.params
    filters = ansible_dict_to_boto3_filter_list(params["filters"])
    client = module.client("ec2")
    find = find_present if params["purpose"] == "present" else find_absent
    try:
        found = find(client, params, filters)
    except AnsibleEC2Error as e:
        module.fail_json_aws_error(e)
    except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as e:
        module.fail_json_aws(e, msg="Could not look up the fleet")
    module.exit_json(changed=False, **found)


if __name__ == "__main__":
    main()
