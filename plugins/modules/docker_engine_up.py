#!/usr/bin/python
# Copyright: onnxfleet contributors
# Apache-2.0 (see COPYING or https://www.apache.org/licenses/LICENSE-2.0)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: docker_engine_up
short_description: Whether the node's Docker engine can be asked, in check mode
version_added: 0.3.0
description:
  - In check mode, asks the node's Docker engine (C(docker version)) and returns whether it
    answered. A node whose Docker is not installed yet (the C(docker_engine) role only says
    what it would do) has no engine, and the roles' tasks that ask it are skipped.
  - In a real run the engine is there (the C(docker_engine) role installed and started it)
    and the module returns RV(up=true) without asking; a task that needs the engine then
    fails with the engine's own error if it does not answer.
author:
  - onnxfleet developers (@onnxfleet)
extends_documentation_fragment:
  - onnxfleet.serving.docker_cli
"""

EXAMPLES = r"""
- name: Ask whether the node's Docker engine answers (check mode)
  onnxfleet.serving.docker_engine_up:
  register: engine

- name: Look at the container, when there is an engine to ask
  community.docker.docker_container_info:
    name: onnxfleet-orchestrator-blue
  when: engine.up
"""

RETURN = r"""
up:
  description: Whether the tasks that ask the engine can run.
  returned: always
  type: bool
  sample: true
asked:
  description: Whether the engine was asked (in check mode only).
  returned: always
  type: bool
  sample: false
reason:
  description: Why the engine is not up.
  returned: when RV(up) is false
  type: str
  sample: "Cannot connect to the Docker daemon at unix:///var/run/docker.sock"
"""

from ansible.module_utils.basic import AnsibleModule


def main():
    module = AnsibleModule(
        argument_spec=dict(docker_cli=dict(type="str", default="docker")),
        supports_check_mode=True,
    )
    if not module.check_mode:
        module.exit_json(changed=False, up=True, asked=False)
    cli = module.get_bin_path(module.params["docker_cli"])
    if cli is None:
        module.exit_json(
            changed=False,
            up=False,
            asked=True,
            reason="no %s client on the node" % module.params["docker_cli"],
        )
    code, err = module.run_command([cli, "version", "--format", "{{.Server.Version}}"])[::2]
    if code != 0:
        module.exit_json(
            changed=False, up=False, asked=True, reason=err.strip() or "docker version exited %d" % code
        )
    module.exit_json(changed=False, up=True, asked=True)


if __name__ == "__main__":
    main()
