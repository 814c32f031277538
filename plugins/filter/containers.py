# Copyright: onnxfleet contributors
# Apache-2.0
"""Filters for the containers the roles run."""

from __future__ import annotations

from ansible.errors import AnsibleFilterError


def container_hardening(user, tmpfs=("/tmp",)):
    """The community.docker.docker_container options every onnxfleet container runs with:
    a non-root user, a read-only root file system (with ``tmpfs`` writable), no
    capabilities, no privilege gain. For a task's module_defaults."""
    if not isinstance(user, str) or not user.strip() or user.split(":")[0] in ("", "0", "root"):
        raise AnsibleFilterError(
            "container_hardening: expected a non-root user (uid or uid:gid, e.g. 10001:10001), got %r"
            % (user,)
        )
    if isinstance(tmpfs, str) or not all(isinstance(p, str) and p.startswith("/") for p in tmpfs):
        raise AnsibleFilterError(
            "container_hardening: tmpfs must be a list of absolute paths, got %r" % (tmpfs,)
        )
    options = {
        "user": user,
        "read_only": True,
        "cap_drop": ["ALL"],
        "security_opts": ["no-new-privileges"],
    }
    if tmpfs:
        options["tmpfs"] = list(tmpfs)
    return options


class FilterModule:
    def filters(self):
        return {"container_hardening": container_hardening}
