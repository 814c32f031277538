#!/usr/bin/python
# Copyright: onnxfleet contributors
# Apache-2.0 (see COPYING or https://www.apache.org/licenses/LICENSE-2.0)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: orchestrator_admin
short_description: Call the orchestrator's admin API (reload, drain, ready) on its node
version_added: 0.2.0
description:
  - POSTs to O(url)C(/admin/)O(action) with the bearer token read from O(token_file) on
    the node where the module runs, and returns the answer. Fails unless the answer is
    200, naming the status and the answer's body.
  - The token is read by the module itself, so it is never an Ansible variable, a task
    argument or a line of the log.
author:
  - onnxfleet developers (@onnxfleet)
options:
  url:
    description:
      - The admin API as reached on this node, e.g. V(http://127.0.0.1:9000).
    type: str
    required: true
  action:
    description:
      - V(reload) re-reads the routing table and the client tokens; V(drain) takes a node
        out of service; V(ready) puts it back.
    type: str
    required: true
    choices: [reload, drain, ready]
  token_file:
    description:
      - The file on this node holding the admin token.
    type: path
    required: true
  body:
    description:
      - "The JSON body, e.g. V({\"node\": \"worker-1\", \"wait\": true, \"timeout_s\": 60})."
    type: dict
    default: {}
  timeout:
    description:
      - Seconds the request may take.
    type: float
    default: 30
attributes:
  check_mode:
    support: full
    description: In check mode nothing is sent; the call is reported as a change.
notes:
  - Certificates are validated for C(https) URLs with the system's trust store.
"""

EXAMPLES = r"""
- name: Drain worker-1 and wait until nothing is in flight on it
  onnxfleet.serving.orchestrator_admin:
    url: http://127.0.0.1:9000
    action: drain
    token_file: /etc/onnxfleet/admin-token
    body: {node: worker-1, wait: true, timeout_s: 60}
    timeout: 70
"""

RETURN = r"""
status:
  description: The answer's HTTP status (not in check mode).
  returned: success or an answer other than 200
  type: int
  sample: 200
json:
  description: The answer's JSON body (empty when it is not JSON).
  returned: success or an answer other than 200
  type: dict
  sample: {"containers": ["worker-1/0", "worker-1/1"], "in_flight": 0}
"""

import json
from urllib.error import HTTPError, URLError

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.urls import open_url


def decoded(raw):
    """The body as JSON, {} when it is not a JSON object."""
    try:
        found = json.loads(raw)
    except ValueError:
        return {}
    return found if isinstance(found, dict) else {}


def main():
    module = AnsibleModule(
        argument_spec=dict(
            url=dict(type="str", required=True),
            action=dict(type="str", required=True, choices=["reload", "drain", "ready"]),
            token_file=dict(type="path", required=True),
            body=dict(type="dict", default={}),
            timeout=dict(type="float", default=30),
        ),
        supports_check_mode=True,
    )
    target = "%s/admin/%s" % (module.params["url"].rstrip("/"), module.params["action"])
    if module.check_mode:
        module.exit_json(changed=True)
    try:
        with open(module.params["token_file"], encoding="utf-8") as handle:
            token = handle.read().strip()
    except OSError as e:
        module.fail_json(msg="cannot read the admin token in %s: %s" % (e.filename, e.strerror))
    try:
        with open_url(
            target,
            method="POST",
            data=json.dumps(module.params["body"]),
            headers={"Authorization": "Bearer " + token, "Content-Type": "application/json"},
            timeout=module.params["timeout"],
            follow_redirects="none",
        ) as response:
            status, raw = response.getcode(), response.read()
    except HTTPError as e:
        status, raw = e.code, e.read()
    except (URLError, OSError, ValueError) as e:
        module.fail_json(msg="POST %s failed: %s" % (target, getattr(e, "reason", e)))
    answer = decoded(raw)
    if status != 200:
        shown = json.dumps(answer) if answer else raw[:500].decode("utf-8", "replace")
        module.fail_json(msg="POST %s answered %s: %s" % (target, status, shown), status=status, json=answer)
    module.exit_json(changed=True, status=status, json=answer)


if __name__ == "__main__":
    main()
