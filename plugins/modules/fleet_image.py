# Copyright: onnxfleet contributors
# Apache-2.0
# The implementation is the action plugin of the same name (plugins/action/fleet_image.py):
# the build runs on the controller whatever host the task runs for.
from __future__ import annotations

DOCUMENTATION = r"""
---
module: fleet_image
short_description: Build an image once per content hash on the controller, and archive it to ship
description:
  - Computes a tag from the build context and the base image, builds C(repository:tag)
    with the controller's Docker engine only when that tag is missing, and optionally
    saves it as a gzipped archive (with its sha256) that roles copy to nodes and load there.
  - Falls back to an offline base image (built from Debian packages by
    C(scripts/base-image.sh)) when the preferred base is neither present nor pullable.
  - Always runs on the controller, whatever host the task runs for, and needs only the
    C(docker) CLI there.
  - Builds for the controller engine's architecture only; asked for another
    (O(architecture)), it fails, since the engine cannot cross-build.
version_added: 0.1.0
author: onnxfleet developers (@onnxfleet)
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
    description: Directory for C(<repository>-<tag>.tar.gz) and its C(.sha256); no archive when omitted.
    type: path
  build_args:
    description: Extra build arguments (part of the content hash).
    type: dict
    default: {}
  pull:
    description: Try to pull O(base_image) when the engine does not have it.
    type: bool
    default: true
  architecture:
    description:
      - The architecture the image must run on (C(amd64), C(x86_64), C(arm64), C(aarch64));
        empty for the engine's own. Any other than the engine's fails.
    type: str
    default: ""
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - ansible.builtin.action_common_attributes.flow
attributes:
  action:
    support: full
  async:
    support: none
  bypass_host_loop:
    support: none
  check_mode:
    support: full
    details: Reports whether the image or its archive would be made, and makes neither.
  diff_mode:
    support: none
  platform:
    platforms: posix
"""

EXAMPLES = r"""
- name: Build the onnxfleet image and its archive on the controller
  onnxfleet.serving.fleet_image:
    context: "{{ playbook_dir }}/app"
    repository: onnxfleet
    archive_dir: ~/.cache/onnxfleet/images
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
architecture:
  description: The architecture the image is built for (Docker's name).
  returned: always
  type: str
  sample: amd64
built:
  description: Whether the image was (or, in check mode, would be) built.
  returned: always
  type: bool
archive:
  description: Path of the saved archive.
  returned: when O(archive_dir) is set
  type: str
archive_sha256:
  description: The archive's sha256 (hex).
  returned: when O(archive_dir) is set and the archive exists
  type: str
"""
