"""The orchestrator's own answers to what went wrong: one exception, one JSON envelope.

Every refusal is ``{"error": "<what was wrong, what was expected>", "code": "<snake_case>"}``
plus optional fields (``retry_after``, ``container``...), as OIP clients read
``body["error"]`` (docs/design.md): the worker's envelope (``oip.errors.envelope``).
Never a ``repr()`` or a library's raw message.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from onnxfleet.oip.errors import envelope

Headers = list[tuple[bytes, bytes]]
JSON_TYPE = b"application/json"


class HTTPError(Exception):
    """Ends a request with an error answer of ``status``."""

    status = 500
    code = "internal"

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        retry_after: int | None = None,
        headers: Iterable[tuple[bytes, bytes]] = (),
        **extra: Any,
    ) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        if code is not None:
            self.code = code
        self.retry_after = retry_after
        self.headers: Headers = list(headers)
        self.extra = extra

    def body(self) -> bytes:
        if self.retry_after is not None:
            return json.dumps(
                envelope(self.message, self.code, retry_after=self.retry_after, **self.extra)
            ).encode()
        return json.dumps(envelope(self.message, self.code, **self.extra)).encode()

    def all_headers(self) -> Headers:
        headers = [(b"Content-Type", JSON_TYPE), *self.headers]
        if self.retry_after is not None:
            headers.append((b"Retry-After", b"%d" % self.retry_after))
        return headers


# -- refusals of the queue and the fleet --------------------------------------------------
class QueueFull(HTTPError):
    status = 429
    code = "queue_full"


class QueueTimeout(HTTPError):
    status = 503
    code = "queue_timeout"


class NoContainer(HTTPError):
    status = 503
    code = "no_ready_container"


class Unreachable(HTTPError):
    status = 502
    code = "upstream_unreachable"


class UpstreamFailed(HTTPError):
    status = 502
    code = "upstream_error"


class GatewayTimeout(HTTPError):
    status = 504
    code = "upstream_timeout"


class ShuttingDown(HTTPError):
    status = 503
    code = "shutting_down"


# -- the client's mistakes -----------------------------------------------------------------
class BadRequest(HTTPError):
    status = 400
    code = "bad_request"


class Unauthorized(HTTPError):
    status = 401
    code = "unauthorized"

    def __init__(self, message: str = "expected Authorization: Bearer <token>") -> None:
        super().__init__(message, headers=[(b"WWW-Authenticate", b"Bearer")])


class NotFound(HTTPError):
    status = 404
    code = "not_found"


class MethodNotAllowed(HTTPError):
    status = 405
    code = "method_not_allowed"


class PayloadTooLarge(HTTPError):
    status = 413
    code = "payload_too_large"

    def __init__(self, limit: int) -> None:
        super().__init__(f"the body is larger than the limit: expected at most {limit} bytes", limit=limit)
