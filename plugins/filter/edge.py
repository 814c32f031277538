# Copyright: onnxfleet contributors
# Apache-2.0
"""Filters for the edge: the orchestrator's client tokens file (hashes, never tokens) and
the names the edge's server certificate covers."""

from __future__ import annotations

import hashlib
import ipaddress
import re

from ansible.errors import AnsibleFilterError

# A name the orchestrator's tokens file can hold (one word, no '#' to start a comment).
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]*$")


def api_token_lines(tokens):
    """``<name> sha256:<hex>`` lines, one per ``{name, token}``: what the node's
    --api-tokens-file holds (the orchestrator hashes a client's token and compares)."""
    if not isinstance(tokens, (list, tuple)):
        raise AnsibleFilterError(
            "api_token_lines: expected a list of {name, token}, got %s" % type(tokens).__name__
        )
    lines, seen = [], set()
    for index, entry in enumerate(tokens):
        if not isinstance(entry, dict) or set(entry) != {"name", "token"}:
            raise AnsibleFilterError(
                "api_token_lines: entry %d must have exactly the keys name and token" % index
            )
        name, token = str(entry["name"]), entry["token"]
        if not _NAME.match(name):
            raise AnsibleFilterError(
                "api_token_lines: entry %d: the name %r must be one word of letters, digits, "
                "'.', '_', '@' or '-'" % (index, name)
            )
        if name in seen:
            raise AnsibleFilterError("api_token_lines: the name %r is given twice" % name)
        if not isinstance(token, str) or len(token.strip()) < 16 or token != token.strip():
            raise AnsibleFilterError(
                "api_token_lines: the token of %r must be a string of at least 16 characters "
                "without surrounding spaces" % name
            )
        seen.add(name)
        lines.append("%s sha256:%s" % (name, hashlib.sha256(token.encode()).hexdigest()))
    return lines


def subject_alt_names(names):
    """``DNS:``/``IP:`` entries for community.crypto, in order, without duplicates or
    empty names (localhost, 127.0.0.1, the node's address, its public DNS name...)."""
    found = []
    for given in names:
        name = str(given or "").strip()
        if not name:
            continue
        try:
            entry = "IP:%s" % ipaddress.ip_address(name)
        except ValueError:
            entry = "DNS:%s" % name.lower()
        if entry not in found:
            found.append(entry)
    return found


class FilterModule:
    def filters(self):
        return {"api_token_lines": api_token_lines, "subject_alt_names": subject_alt_names}
