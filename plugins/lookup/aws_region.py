# Copyright: onnxfleet contributors
# Apache-2.0 (see COPYING or https://www.apache.org/licenses/LICENSE-2.0)

from __future__ import annotations

DOCUMENTATION = r"""
---
name: aws_region
short_description: The AWS region, resolved the way boto3 and amazon.aws modules resolve it
version_added: 0.1.0
description:
  - Returns E(AWS_REGION), else E(AWS_DEFAULT_REGION), else the region of the AWS profile
    (E(AWS_PROFILE), else the default profile) in the AWS config file, which is what
    amazon.aws modules use when no region is given.
  - The role C(aws_fleet) and the inventory C(inventory/aws_ec2.yml) both use it, so that
    they look in the same region.
  - Fails with a message saying how to set a region when none is configured.
author:
  - onnxfleet developers (@onnxfleet)
requirements:
  - boto3
"""

EXAMPLES = r"""
- name: Where the fleet goes
  ansible.builtin.debug:
    msg: "{{ lookup('onnxfleet.serving.aws_region') }}"
"""

RETURN = r"""
_raw:
  description: The region, one element.
  type: list
  elements: str
"""

import os

from ansible.errors import AnsibleError
from ansible.plugins.lookup import LookupBase


class LookupModule(LookupBase):
    def run(self, terms, variables=None, **kwargs):
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        if not region:
            try:
                import boto3
                import botocore.exceptions
            except ImportError as exc:
                raise AnsibleError("the aws_region lookup needs boto3 on the controller") from exc
            profile = os.environ.get("AWS_PROFILE") or os.environ.get("AWS_DEFAULT_PROFILE") or None
            try:
                region = boto3.session.Session(profile_name=profile).region_name
            except botocore.exceptions.BotoCoreError as exc:
                raise AnsibleError("cannot read the AWS profile %r: %s" % (profile, exc)) from exc
        if not region:
            raise AnsibleError(
                "no AWS region is configured: set AWS_REGION (e.g. export AWS_REGION=eu-west-1) "
                "or a region in your AWS profile (aws configure set region eu-west-1)"
            )
        return [region]
