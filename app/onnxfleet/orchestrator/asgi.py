"""A minimal HTTP layer on raw ASGI: routing, requests, replies, JSON errors, lifespan.

Served by uvicorn's httptools protocol under gunicorn (``worker.py``). No framework: the
orchestrator has a dozen routes, and its per-request CPU time is what limits it at short
service times (docs/orchestrator.md, "Why this design").
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

log = logging.getLogger("onnxfleet.orchestrator")

Headers = list[tuple[bytes, bytes]]
Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

JSON_TYPE = b"application/json; charset=utf-8"
LINGER_SECONDS = 10.0  # like aiohttp's lingering_time


class Reply:
    """A complete answer: status, headers (``content-length`` is added when sent), body."""

    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, body: bytes, headers: Headers) -> None:
        self.status = status
        self.body = body
        self.headers = headers


def json_reply(data: Any, status: int = 200, headers: Iterable[tuple[bytes, bytes]] = ()) -> Reply:
    return Reply(status, json.dumps(data).encode(), [(b"content-type", JSON_TYPE), *headers])


def error_reply(
    status: int,
    error: str,
    reason: str,
    retry_after: int | None = None,
    headers: Iterable[tuple[bytes, bytes]] = (),
    **extra: Any,
) -> Reply:
    """The orchestrator's own refusals: JSON ``{"error", "reason", ...}``."""
    reply = json_reply({"error": error, "reason": reason, **extra}, status, headers)
    if retry_after is not None:
        reply.headers.append((b"retry-after", b"%d" % retry_after))
    return reply


class HTTPError(Exception):
    """Ends a handler with a JSON error answer."""

    def __init__(
        self, status: int, error: str, reason: str, headers: Iterable[tuple[bytes, bytes]] = ()
    ) -> None:
        super().__init__(reason)
        self.status, self.error, self.reason, self.headers = status, error, reason, headers

    def reply(self) -> Reply:
        return error_reply(self.status, self.error, self.reason, headers=self.headers)


class ClientLeft(Exception):
    """The client disconnected before its answer: nothing is sent."""


class Request:
    __slots__ = ("client", "consumed", "headers", "method", "params", "path", "raw_path", "receive")

    def __init__(self, scope: Scope, receive: Receive) -> None:
        self.method: str = scope["method"]
        self.path: str = scope["path"]  # percent-decoded, for routing and messages
        self.raw_path: bytes = scope.get("raw_path") or self.path.encode()  # as sent, for forwarding
        self.headers: Headers = scope["headers"]  # names lowercased by the server
        self.client: tuple[str, int] | None = scope.get("client")
        self.receive = receive
        self.params: dict[str, str] = {}
        self.consumed = False  # the whole body was received

    def header(self, name: bytes) -> bytes | None:
        """The first value of header ``name`` (lowercase), or None."""
        for key, value in self.headers:
            if key == name:
                return value
        return None

    @property
    def remote(self) -> str | None:
        return self.client[0] if self.client else None

    async def body(self, limit: int) -> bytes:
        """The whole body; 413 as soon as it is known to exceed ``limit`` bytes.

        Never holds more than ``limit`` bytes plus one chunk: a declared larger
        ``Content-Length`` is refused before reading, a chunked body when it grows past it
        (``App.http`` then drops the rest, see ``discard_body``).
        """
        declared = self.header(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise too_large(limit)
        message = await self.receive()
        if message["type"] != "http.request":
            raise ClientLeft
        body: bytes = message.get("body", b"")
        if not message.get("more_body", False):
            self.consumed = True
            if len(body) > limit:
                raise too_large(limit)
            return body
        parts = [body]
        size = len(body)
        while True:
            message = await self.receive()
            if message["type"] != "http.request":
                raise ClientLeft
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise too_large(limit)
            parts.append(chunk)
            if not message.get("more_body", False):
                self.consumed = True
                return b"".join(parts)

    async def discard_body(self, seconds: float = LINGER_SECONDS) -> None:
        """Read and drop the rest of an unread body, for at most ``seconds``.

        Answered early (401, 404, 413...), a client that is still sending its body would
        otherwise get a connection reset instead of the answer when the server closes the
        connection after it (``Connection: close``). A client that waits for
        ``100 Continue`` has sent nothing: nothing to drop.
        """
        if self.consumed or self.header(b"expect") is not None:
            return
        message = await self.receive()
        if message["type"] != "http.request" or not message.get("more_body", False):
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                while True:
                    message = await self.receive()
                    if message["type"] != "http.request" or not message.get("more_body", False):
                        return


def too_large(limit: int) -> HTTPError:
    return HTTPError(413, "request_entity_too_large", f"the body is larger than the limit ({limit} bytes)")


Handler = Callable[[Request], Awaitable[Reply]]


class Router:
    """Exact paths, plus paths with one ``{param}`` segment (``/jobs/{id}``)."""

    def __init__(self) -> None:
        self.exact: dict[str, dict[str, Handler]] = {}
        self.patterns: list[tuple[str, str, str, dict[str, Handler]]] = []

    def add(self, method: str, path: str, handler: Handler) -> None:
        methods = (method, "HEAD") if method == "GET" else (method,)
        if "{" in path:
            prefix, rest = path.split("{", 1)
            param, suffix = rest.split("}", 1)
            table = next((t for p, n, s, t in self.patterns if (p, n, s) == (prefix, param, suffix)), None)
            if table is None:
                table = {}
                self.patterns.append((prefix, param, suffix, table))
        else:
            table = self.exact.setdefault(path, {})
        for m in methods:
            table[m] = handler

    def find(self, request: Request) -> Handler:
        """The handler for ``request`` (its ``params`` filled in); HTTPError 404 or 405."""
        path = request.path
        table = self.exact.get(path)
        if table is None:
            for prefix, param, suffix, candidate in self.patterns:
                if path.startswith(prefix) and path.endswith(suffix):
                    value = path[len(prefix) : len(path) - len(suffix)]
                    if value and "/" not in value and "{" not in value and "}" not in value:
                        request.params[param] = value
                        table = candidate
                        break
            else:
                raise HTTPError(404, "not_found", f"no route {path}")
        handler = table.get(request.method)
        if handler is None:
            raise HTTPError(
                405,
                "method_not_allowed",
                f"{request.method} is not allowed on {path}",
                [(b"allow", ", ".join(sorted(table)).encode())],
            )
        return handler


class App:
    """The ASGI callable: HTTP requests through the router, lifespan start and stop."""

    def __init__(
        self,
        router: Router,
        startup: Callable[[], Awaitable[None]],
        shutdown: Callable[[], Awaitable[None]],
    ) -> None:
        self.router = router
        self.startup = startup
        self.shutdown = shutdown

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self.http(Request(scope, receive), send)
        elif kind == "lifespan":
            await self.lifespan(receive, send)

    async def http(self, request: Request, send: Send) -> None:
        try:
            reply = await self.router.find(request)(request)
        except HTTPError as exc:
            reply = exc.reply()
        except ClientLeft:
            return
        except asyncio.CancelledError:
            # the server stopped waiting for this request (graceful shutdown timeout)
            reply = error_reply(503, "shutting_down", "the orchestrator is stopping", retry_after=1)
        except Exception:
            log.exception("%s %s failed", request.method, request.path)
            reply = error_reply(500, "internal", "the orchestrator failed on this request (see its log)")
        if not request.consumed:
            await request.discard_body()
        headers = reply.headers
        headers.append((b"content-length", b"%d" % len(reply.body)))
        await send({"type": "http.response.start", "status": reply.status, "headers": headers})
        await send({"type": "http.response.body", "body": reply.body})

    async def lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as exc:
                    log.exception("start-up failed")
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return
