#!/usr/bin/python
# Copyright: onnxfleet contributors
# Apache-2.0 (see COPYING or https://www.apache.org/licenses/LICENSE-2.0)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: local_fact
short_description: Read or write a node's local fact (a JSON object in /etc/ansible/facts.d)
version_added: 0.3.0
description:
  - Reads the JSON object a local fact file holds (what C(ansible -m setup) shows as
    C(ansible_local.<name>)), or, with O(value), writes that object to it - the record a
    role keeps on the node (the colour that serves, the model version a node serves).
  - A missing file reads as an empty object; a file that is not a JSON object fails the
    task, naming the file.
  - The file is written as C(to_nice_json) writes (4 spaces, sorted keys, a final newline),
    replaced atomically, and only when its text would change; its directory is made when
    missing.
author:
  - onnxfleet developers (@onnxfleet)
options:
  path:
    description:
      - The fact file, e.g. V(/etc/ansible/facts.d/onnxfleet_model.fact).
    type: path
    required: true
  value:
    description:
      - The object to record. Omitted, the module only reads.
    type: dict
extends_documentation_fragment:
  - ansible.builtin.files
attributes:
  check_mode:
    support: full
    description: Tells whether the file would change, and reads it, without writing.
  diff_mode:
    support: full
    description: The file's text before and after.
"""

EXAMPLES = r"""
- name: Read the node's model state
  onnxfleet.serving.local_fact:
    path: /etc/ansible/facts.d/onnxfleet_model.fact
  register: state

- name: Record the node's model state
  onnxfleet.serving.local_fact:
    path: /etc/ansible/facts.d/onnxfleet_model.fact
    value: {version: "2", file: digits.onnx}
    owner: root
    group: root
    mode: "0644"
"""

RETURN = r"""
value:
  description:
    - The object the file holds after the task (in check mode, what it would hold); V({})
      when there is none.
  returned: always
  type: dict
  sample: {"version": "2", "file": "digits.onnx"}
exists:
  description: Whether the file existed before the task.
  returned: always
  type: bool
  sample: true
"""

import json
import os
import tempfile

from ansible.module_utils.basic import AnsibleModule


def text_of(value):
    """The file's text for ``value``: ansible's to_nice_json, and a final newline."""
    return json.dumps(value, indent=4, sort_keys=True, separators=(",", ": ")) + "\n"


def read(module, path):
    """(whether the file exists, its text, the object it holds)."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        return False, "", {}
    except OSError as e:
        module.fail_json(msg="%s: cannot read the local fact: %s" % (path, e))
    try:
        value = json.loads(text)
    except ValueError as e:
        module.fail_json(msg="%s: expected a JSON object, the file is not JSON (%s)" % (path, e))
    if not isinstance(value, dict):
        module.fail_json(msg="%s: expected a JSON object, the file holds a %s" % (path, type(value).__name__))
    return True, text, value


def write(module, path, text):
    directory = os.path.dirname(path) or "."
    if not os.path.isdir(directory):
        os.makedirs(directory, 0o755)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".local_fact.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        module.atomic_move(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            path=dict(type="path", required=True),
            value=dict(type="dict"),
        ),
        add_file_common_args=True,
        supports_check_mode=True,
    )
    path = module.params["path"]
    exists, before, value = read(module, path)
    result = dict(changed=False, exists=exists, value=value)
    if module.params["value"] is None:
        module.exit_json(**result)
    after = text_of(module.params["value"])
    result["value"] = json.loads(after)
    if after != before:
        result["changed"] = True
        result["diff"] = dict(before_header=path, after_header=path, before=before, after=after)
        if not module.check_mode:
            write(module, path, after)
    if os.path.exists(path):
        file_args = module.load_file_common_arguments(module.params)
        result["changed"] = module.set_fs_attributes_if_different(file_args, result["changed"])
    module.exit_json(**result)


if __name__ == "__main__":
    main()
