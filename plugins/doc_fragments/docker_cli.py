# Copyright: onnxfleet contributors
# Apache-2.0 (see COPYING or https://www.apache.org/licenses/LICENSE-2.0)

from __future__ import annotations


class ModuleDocFragment:
    """The modules that ask the node's Docker engine through its command line client."""

    DOCUMENTATION = r"""
options:
  docker_cli:
    description:
      - The Docker command line client (a name on the node's E(PATH), or a path). It talks
        to the engine of E(DOCKER_HOST), by default the node's.
    type: str
    default: docker
attributes:
  check_mode:
    support: full
    description: The module only reads.
"""
