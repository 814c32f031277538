#!/usr/bin/python
# Copyright: onnxfleet contributors
# Apache-2.0 (see COPYING or https://www.apache.org/licenses/LICENSE-2.0)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: container_logs
short_description: The last log lines of Docker containers, or a failure that quotes them
version_added: 0.3.0
description:
  - Reads each container's last O(lines) log lines (C(docker logs --tail), its standard
    output then its standard error) and returns them. No module of C(community.docker)
    returns a container's log, and an operator needs it to see why a container did not
    become ready.
  - With O(fail_msg), the module fails with that message followed by each container's
    lines, the one task of a C(rescue) that stops the play.
  - A container that does not exist gives Docker's error as its lines; it does not fail
    the module.
author:
  - onnxfleet developers (@onnxfleet)
options:
  names:
    description:
      - The containers' names (or ids).
    type: list
    elements: str
    required: true
  lines:
    description:
      - How many of each container's last lines.
    type: int
    default: 20
  fail_msg:
    description:
      - When given, fail with this message and the containers' last lines.
    type: str
extends_documentation_fragment:
  - onnxfleet.serving.docker_cli
"""

EXAMPLES = r"""
- name: Wait until the container is ready
  block:
    - name: Ask /readyz until it answers 200
      onnxfleet.serving.http_ready:
        urls: [http://127.0.0.1:8001/readyz]
  rescue:
    - name: Stop, the container is not ready (with its last log lines)
      onnxfleet.serving.container_logs:
        names: [onnxfleet-worker-0]
        lines: 6
        fail_msg: onnxfleet-worker-0 is not ready
"""

RETURN = r"""
logs:
  description: Each container's last lines, by name.
  returned: always
  type: dict
  sample: {"onnxfleet-worker-0": ["starting", "error: no such model /model/digits.onnx"]}
"""

from ansible.module_utils.basic import AnsibleModule


def last_lines(module, cli, name, count):
    """The container's last ``count`` lines: its output, then its errors (or Docker's)."""
    out, err = module.run_command([cli, "logs", "--tail", str(count), name])[1:]
    lines = out.splitlines() + err.splitlines()
    return lines[-count:] if count > 0 else []


def main():
    module = AnsibleModule(
        argument_spec=dict(
            names=dict(type="list", elements="str", required=True),
            lines=dict(type="int", default=20),
            fail_msg=dict(type="str"),
            docker_cli=dict(type="str", default="docker"),
        ),
        supports_check_mode=True,
    )
    names, count = module.params["names"], module.params["lines"]
    if count < 0:
        module.fail_json(msg="lines: expected a count >= 0, got %d" % count)
    cli = module.get_bin_path(module.params["docker_cli"], required=True)
    logs = {name: last_lines(module, cli, name, count) for name in names}
    if module.params["fail_msg"] is not None:
        quoted = "; ".join("%s: %s" % (name, lines) for name, lines in logs.items())
        module.fail_json(
            msg="%s. Last log lines: %s" % (module.params["fail_msg"].rstrip(". "), quoted), logs=logs
        )
    module.exit_json(changed=False, logs=logs)


if __name__ == "__main__":
    main()
