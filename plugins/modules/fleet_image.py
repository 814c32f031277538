#!/usr/bin/python
# Copyright: onnxfleet contributors
# Apache-2.0
from __future__ import annotations

DOCUMENTATION = r"""
---
module: fleet_image
short_description: Build an image once per content hash and save it as an archive to ship
description:
  - Computes a tag from the build context and the base image, builds C(repository:tag)
    with the local Docker engine only when that tag is missing, and optionally saves it
    as a gzipped archive that roles copy to nodes and load there.
  - Falls back to an offline base image (built from Debian packages by
    C(scripts/base-image.sh)) when the preferred base is neither present nor pullable.
  - Runs on the controller (C(delegate_to: localhost)); needs only the C(docker) CLI.
version_added: 0.1.0
author: onnxfleet contributors
options:
  context:
    description: Build context directory holding a C(Dockerfile).
    type: path
    required: true
  repository:
    description: Image repository name; the tag is the content hash.
    type: str
    required: true
  base_image:
    description: Preferred base image, passed as build argument C(BASE_IMAGE).
    type: str
    default: python:3.11-slim-bookworm
  fallback_base_image:
    description: Base image used when O(base_image) is not available.
    type: str
    default: onnxfleet/base:bookworm
  archive_dir:
    description: Directory for C(<repository>-<tag>.tar.gz); no archive when omitted.
    type: path
  build_args:
    description: Extra build arguments (part of the content hash).
    type: dict
    default: {}
  pull:
    description: Try to pull O(base_image) when the engine does not have it.
    type: bool
    default: true
attributes:
  check_mode:
    support: full
"""

EXAMPLES = r"""
- name: Build the onnxfleet image
  onnxfleet.serving.fleet_image:
    context: "{{ playbook_dir }}/app"
    repository: onnxfleet
    archive_dir: "{{ playbook_dir }}/.cache/images"
  delegate_to: localhost
  run_once: true
  register: image
"""

RETURN = r"""
image:
  description: The image reference, C(repository:tag).
  returned: always
  type: str
  sample: onnxfleet:3f2a9c1b0d4e
tag:
  description: The content hash used as tag.
  returned: always
  type: str
base_image:
  description: The base image actually used.
  returned: always
  type: str
built:
  description: Whether the image was (or, in check mode, would be) built.
  returned: always
  type: bool
archive:
  description: Path of the saved archive.
  returned: when O(archive_dir) is set
  type: str
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.onnxfleet.serving.plugins.module_utils.fleet_image import (
    ImageError,
    ensure_image,
)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            context=dict(type="path", required=True),
            repository=dict(type="str", required=True),
            base_image=dict(type="str", default="python:3.11-slim-bookworm"),
            fallback_base_image=dict(type="str", default="onnxfleet/base:bookworm"),
            archive_dir=dict(type="path"),
            build_args=dict(type="dict", default={}),
            pull=dict(type="bool", default=True),
        ),
        supports_check_mode=True,
    )
    p = module.params
    try:
        result = ensure_image(
            context=p["context"],
            repository=p["repository"],
            preferred_base=p["base_image"],
            fallback_base=p["fallback_base_image"],
            archive_dir=p["archive_dir"],
            build_args={k: str(v) for k, v in p["build_args"].items()},
            pull=p["pull"],
            check_mode=module.check_mode,
        )
    except ImageError as exc:
        module.fail_json(msg=str(exc))
    module.exit_json(**result)


if __name__ == "__main__":
    main()
