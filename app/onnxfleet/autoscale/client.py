"""The orchestrator's /status, read, and the decision, reported (``PUT /admin/autoscaler``),
over the admin listener (an SSH tunnel to port 9000, docs/operations.md "The dashboard")
or any URL that answers them."""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any


class Unreachable(Exception):
    pass


@dataclass(frozen=True)
class Orchestrator:
    url: str
    token: str | None = None
    cafile: str | None = None
    timeout_s: float = 10.0

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url.rstrip("/") + path, data, headers, method=method)
        context = ssl.create_default_context(cafile=self.cafile) if self.url.startswith("https") else None
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s, context=context) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            detail = exc.read()[:500].decode(errors="replace")
            raise Unreachable(f"{method} {path} answered {exc.code}: {detail}") from None
        except (OSError, ValueError) as exc:
            raise Unreachable(f"{method} {path}: {exc}") from None

    def status(self) -> Any:
        return self._call("GET", "/status")

    def report(self, decision: dict[str, Any]) -> None:
        self._call("PUT", "/admin/autoscaler", decision)
