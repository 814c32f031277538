"""What handlers and guards see of HTTP: a ``Request``, the ``Reply`` they give, the
``Route`` that names them (the server, server.py, reads and writes the bytes)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Protocol

from onnxfleet.orchestrator.errors import JSON_TYPE, Headers, HTTPError

if TYPE_CHECKING:
    from onnxfleet.orchestrator.server import HTTPConnection


class Reply:
    """A complete answer: status, headers (``Content-Length`` is added when sent), body."""

    __slots__ = ("body", "close", "headers", "status")

    def __init__(self, status: int, body: bytes, headers: Headers, close: bool = False) -> None:
        self.status = status
        self.body = body
        self.headers = headers
        self.close = close


def json_reply(data: Any, status: int = 200, headers: Iterable[tuple[bytes, bytes]] = ()) -> Reply:
    return Reply(status, json.dumps(data).encode(), [(b"Content-Type", JSON_TYPE), *headers])


def error_reply(exc: HTTPError) -> Reply:
    return Reply(exc.status, exc.body(), exc.all_headers())


class Request:
    __slots__ = (
        "body",
        "busy",
        "conn",
        "early",
        "expect",
        "headers",
        "held",
        "http10",
        "keep_alive",
        "method",
        "on_abort",
        "params",
        "path",
        "raw_path",
        "received",
        "remote",
        "replied",
        "route",
        "state",
        "too_large",
        "upgrade",
        "url",
    )

    def __init__(self, conn: HTTPConnection) -> None:
        self.conn = conn
        self.remote = conn.remote
        self.url = b""
        self.method = ""
        self.path = ""  # percent-decoded, for routing and messages
        self.raw_path = b""  # as sent (without the query), for forwarding
        self.headers: Headers = []  # names lowercased
        self.body = b""
        self.params: dict[str, str] = {}
        self.keep_alive = True
        self.http10 = False
        self.expect = False  # Expect: 100-continue
        self.route: Route | None = None
        self.state: Any = None  # the application's, set by a guard for its handler
        self.early = False  # answered before its body was read
        self.too_large = False
        self.held = 0  # body bytes held for it in the connections' budget (BodyLedger)
        self.busy = False  # its body did not fit the connections' budget: 503, dropped
        self.upgrade = False  # CONNECT or Upgrade: refused, then the connection closes
        self.received = False  # the whole request was read
        self.replied = False
        self.on_abort: Callable[[], None] | None = None  # the client left before its answer

    def header(self, name: bytes) -> bytes | None:
        """The first value of header ``name`` (lowercase), or None."""
        for key, value in self.headers:
            if key == name:
                return value
        return None

    def respond(self, reply: Reply) -> None:
        """Send the answer (once; nothing happens when the client is gone)."""
        self.conn.reply(self, reply)


Handler = Callable[[Request], "Reply | None"]  # None: the handler answers later (respond)
Guard = Callable[[Request], None]  # raises HTTPError to refuse a request on its head


class Route:
    __slots__ = ("guard", "handler")

    def __init__(self, handler: Handler, guard: Guard | None = None) -> None:
        self.handler = handler
        self.guard = guard


class App(Protocol):
    def route(self, request: Request) -> Route:
        """The route for ``request`` (raises HTTPError: 404, 405)."""
