# Copyright: onnxfleet contributors
# Apache-2.0
"""The fleet_image action: build on the controller, whatever host the task runs for."""

from __future__ import annotations

from ansible.errors import AnsibleActionFail
from ansible.plugins.action import ActionBase
from ansible_collections.onnxfleet.serving.plugins.plugin_utils.fleet_image import ImageError, ensure_image

ARGUMENT_SPEC = {
    "context": {"type": "path", "required": True},
    "repository": {"type": "str", "required": True},
    "base_image": {"type": "str", "default": "python:3.11-slim-bookworm"},
    "fallback_base_image": {"type": "str", "default": "onnxfleet/base:bookworm"},
    "archive_dir": {"type": "path"},
    "build_args": {"type": "dict", "default": {}},
    "pull": {"type": "bool", "default": True},
    "architecture": {"type": "str", "default": ""},
}


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _requires_connection = False

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        del tmp
        args = self.validate_argument_spec(argument_spec=ARGUMENT_SPEC)[1]
        try:
            result.update(
                ensure_image(
                    context=args["context"],
                    repository=args["repository"],
                    preferred_base=args["base_image"],
                    fallback_base=args["fallback_base_image"],
                    archive_dir=args["archive_dir"],
                    build_args={key: str(value) for key, value in args["build_args"].items()},
                    pull=args["pull"],
                    architecture=args["architecture"],
                    check_mode=self._task.check_mode,
                )
            )
        except ImageError as exc:
            raise AnsibleActionFail(str(exc)) from None
        return result
