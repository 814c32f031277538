#!/usr/bin/python
# Copyright: onnxfleet contributors
# Apache-2.0 (see COPYING or https://www.apache.org/licenses/LICENSE-2.0)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: ec2_instance_type_offerings_info
short_description: List where EC2 instance types are offered (regions, zones or zone IDs)
version_added: 0.1.0
description:
  - Calls DescribeInstanceTypeOfferings, which amazon.aws has no module for, so that a
    role can choose availability zones among those that offer its instance types.
author:
  - onnxfleet developers (@onnxfleet)
options:
  instance_types:
    description:
      - The instance types to look for, e.g. V(c7i.large). All types when empty.
    type: list
    elements: str
    default: []
  location_type:
    description:
      - What a location is in the answer.
    type: str
    choices: [region, availability-zone, availability-zone-id]
    default: availability-zone
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
- name: Find the zones of the region that offer c7i.large
  onnxfleet.serving.ec2_instance_type_offerings_info:
    instance_types: [c7i.large]
  register: offerings

- name: Zones offering it
  ansible.builtin.debug:
    msg: "{{ offerings.locations['c7i.large'] }}"
"""

RETURN = r"""
locations:
  description: For each instance type asked for (or found), the sorted locations that offer it.
  returned: always
  type: dict
  sample: {"c7i.large": ["eu-west-3a", "eu-west-3b", "eu-west-3c"], "m4.large": []}
"""

import contextlib

from ansible_collections.amazon.aws.plugins.module_utils.modules import AnsibleAWSModule
from ansible_collections.amazon.aws.plugins.module_utils.retries import AWSRetry

with contextlib.suppress(ImportError):  # AnsibleAWSModule reports the missing library
    import botocore


@AWSRetry.jittered_backoff()
def _offerings(client, **params):
    paginator = client.get_paginator("describe_instance_type_offerings")
    return paginator.paginate(**params).build_full_result()["InstanceTypeOfferings"]


def main():
    module = AnsibleAWSModule(
        argument_spec=dict(
            instance_types=dict(type="list", elements="str", default=[]),
            location_type=dict(
                type="str",
                default="availability-zone",
                choices=["region", "availability-zone", "availability-zone-id"],
            ),
        ),
        supports_check_mode=True,
    )
    instance_types = module.params["instance_types"]
    params = {"LocationType": module.params["location_type"]}
    if instance_types:
        params["Filters"] = [{"Name": "instance-type", "Values": instance_types}]
    try:
        found = _offerings(module.client("ec2"), **params)
    except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as e:
        module.fail_json_aws(e, msg="Could not list the instance type offerings")
    locations = {name: [] for name in instance_types}
    for offering in found:
        locations.setdefault(offering["InstanceType"], []).append(offering["Location"])
    module.exit_json(changed=False, locations={name: sorted(where) for name, where in locations.items()})


if __name__ == "__main__":
    main()
