"""The orchestrator's HTTP/1.1 server: an asyncio protocol on httptools' request parser.

Its own protocol rather than an ASGI server because the orchestrator is one process whose
CPU time per request limits it at short service times, and because it must bound what a
client can make it hold (docs/orchestrator.md): the request head (size and header count,
checked before the parser joins header pieces), the body (``Content-Length`` refused
before reading, chunked bodies when they grow past the limit), the time to send a head,
a body and between requests, and the number of connections. A handler answers at once
or later (``Request.respond``): an inference request needs no task, only callbacks.
Checks that need only the head (route, method, token, limits) run before the body is
read, and their refusals are sent at once; the rest of that body is read and dropped for
a while, so a client that sends its whole body before reading gets the answer.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from email.utils import formatdate
from http import HTTPStatus
from typing import Any, Protocol
from urllib.parse import unquote

from httptools import HttpParserCallbackError, HttpParserError, HttpParserUpgrade, HttpRequestParser

from onnxfleet.orchestrator.errors import (
    JSON_TYPE,
    BadRequest,
    Headers,
    HTTPError,
    PayloadTooLarge,
    ShuttingDown,
)

log = logging.getLogger("onnxfleet.orchestrator.server")

_STATUS_LINES = {s.value: b"HTTP/1.1 %d %s\r\n" % (s.value, s.phrase.encode()) for s in HTTPStatus}
_INF = float("inf")
SWEEP_S = 0.25  # time limits are enforced to within this
FRESH_GRACE_S = 1.0  # stopping: how long a new connection may take to send its request


@dataclass(frozen=True)
class Limits:
    max_head_bytes: int = 64 * 1024  # request line + headers
    max_headers: int = 100
    max_body_bytes: int = 8 * 1024 * 1024
    head_timeout_s: float = 10.0  # from a request's first byte to the end of its head
    body_timeout_s: float = 30.0  # longest pause while a body is sent
    keep_alive_s: float = 75.0  # idle time between requests
    linger_s: float = 10.0  # reading and dropping the rest of a refused body
    max_connections: int = 1000


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
        "conn",
        "early",
        "expect",
        "headers",
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


class _HeadTooLarge(Exception):
    pass


def _internal() -> HTTPError:
    return HTTPError("the orchestrator failed on this request (see its log)")


_IDLE, _HEAD, _BODY, _WAIT, _LINGER = range(5)


class HTTPConnection(asyncio.Protocol):
    """One client connection: requests answered in order, one at a time."""

    def __init__(self, server: HTTPServer) -> None:
        self.server = server
        self.app = server.app
        self.limits = server.limits
        self.loop = server.loop
        self.transport: asyncio.Transport | None = None
        self.remote: str | None = None
        self.parser = HttpRequestParser(self)
        self.msg: Request | None = None  # being read
        self.active: Request | None = None  # being answered
        self.pending: deque[Request] = deque()  # pipelined, read while another was answered
        self.head_size = 0
        self.head_fed = 0  # bytes given to the parser since the head began
        self.body_size = 0
        self.body_parts: list[bytes] = []
        self.state = _IDLE
        self.deadline = _INF  # loop.time() by which the current state must end (server sweep)
        self.write_paused = False
        self.closing = False
        self.requests = 0  # read on this connection so far

    # -- asyncio.Protocol ---------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no asyncio.Transport
        peer = transport.get_extra_info("peername")
        self.remote = peer[0] if isinstance(peer, tuple) else None
        if not self.server.admit(self):
            return
        self._set_deadline(self.limits.head_timeout_s)  # a new connection is for a request

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        self.closing = True
        active, self.active = self.active, None
        self.pending.clear()
        if active is not None and not active.replied and active.on_abort is not None:
            active.on_abort()

    def eof_received(self) -> bool:
        return False  # a client that stops sending has left: close (and drop its queued request)

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        self._next()

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        if self.state == _IDLE:
            self.state = _HEAD
            self.head_fed = 0
            self._set_deadline(self.limits.head_timeout_s)
        elif self.state == _BODY:
            self._set_deadline(self.limits.body_timeout_s)
        if self.state == _HEAD:
            # bound the head before the parser joins its pieces: a head must end within
            # max_head_bytes of its start
            end = data.find(b"\r\n\r\n")
            limit = self.limits.max_head_bytes
            if (end < 0 and self.head_fed + len(data) > limit) or self.head_fed + end > limit:
                self._refuse_head()
                return
            self.head_fed += len(data)
        try:
            self.parser.feed_data(data)
        except HttpParserUpgrade:
            self._stop_reading()  # an upgrade or CONNECT: answered, then closed
        except HttpParserError as exc:
            if isinstance(exc, HttpParserCallbackError) and isinstance(exc.__context__, _HeadTooLarge):
                self._refuse_head()
            elif isinstance(exc, HttpParserCallbackError):  # a bug of ours, not the client's
                log.error("reading a request failed", exc_info=exc.__context__)
                self._refuse(_internal())
            else:
                self._refuse(
                    BadRequest("malformed HTTP/1.1 request: expected a request line, headers, a body")
                )

    # -- httptools callbacks --------------------------------------------------------------------
    def on_message_begin(self) -> None:
        self.requests += 1
        self.msg = Request(self)
        self.head_size = 0
        self.head_fed = 0
        self.body_size = 0
        self.body_parts = []
        if self.state != _HEAD:  # a pipelined request began in the same read
            self.state = _HEAD
            self._set_deadline(self.limits.head_timeout_s)

    def on_url(self, url: bytes) -> None:
        assert self.msg is not None
        self.head_size += len(url)
        if self.head_size > self.limits.max_head_bytes:
            raise _HeadTooLarge
        self.msg.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        msg = self.msg
        assert msg is not None
        self.head_size += len(name) + len(value) + 4
        if self.head_size > self.limits.max_head_bytes or len(msg.headers) >= self.limits.max_headers:
            raise _HeadTooLarge
        msg.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        msg = self.msg
        assert msg is not None
        parser = self.parser
        msg.method = parser.get_method().decode("ascii")
        msg.keep_alive = parser.should_keep_alive()
        msg.http10 = parser.get_http_version() == "1.0"
        url = msg.url
        query = url.find(b"?")
        raw = url if query < 0 else url[:query]
        msg.raw_path = raw
        msg.path = (
            unquote(raw.decode("latin-1"), encoding="latin-1") if b"%" in raw else raw.decode("latin-1")
        )
        self.state = _BODY
        self._set_deadline(self.limits.body_timeout_s)
        if self.active is not None or self.pending:
            return  # pipelined: checked when its turn comes, in order
        self._check_head(msg)

    def on_body(self, body: bytes) -> None:
        msg = self.msg
        assert msg is not None
        if msg.early or msg.too_large:
            return  # refused: dropped
        self.body_size += len(body)
        if self.body_size > self.limits.max_body_bytes:
            msg.too_large = True
            self.body_parts = []
            if msg is self.active:
                self._early(msg, PayloadTooLarge(self.limits.max_body_bytes))
            return
        self.body_parts.append(body)

    def on_message_complete(self) -> None:
        msg = self.msg
        assert msg is not None
        self.msg = None
        parts = self.body_parts
        msg.body = parts[0] if len(parts) == 1 else b"".join(parts)
        self.body_parts = []
        msg.received = True
        self.state = _WAIT
        self._set_deadline(None)
        if msg is self.active:
            if msg.replied:  # answered early: the refused body is read, go on
                self._done(msg)
            else:
                self._handle(msg)
        else:
            self.pending.append(msg)
            self.transport.pause_reading()  # type: ignore[union-attr]  # one request ahead is enough

    # -- requests ---------------------------------------------------------------------------------
    def _check_head(self, msg: Request) -> None:
        """Route, guard and declared size: refusals go out before the body is read."""
        self.active = msg
        try:
            msg.route = route = self.app.route(msg)
            if route.guard is not None:
                route.guard(msg)
            declared = msg.header(b"content-length")
            if declared is not None and int(declared) > self.limits.max_body_bytes:
                raise PayloadTooLarge(self.limits.max_body_bytes)
        except HTTPError as exc:
            self._early(msg, exc)
            return
        except Exception:
            log.exception("%s %s failed", msg.method, msg.path)
            self._early(msg, _internal())
            return
        msg.expect = msg.header(b"expect") is not None
        if msg.expect and not msg.received:
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")  # type: ignore[union-attr]

    def _early(self, msg: Request, exc: HTTPError) -> None:
        msg.early = True
        reply = error_reply(exc)
        if msg.header(b"expect") is not None:
            reply.close = True  # the client has not sent its body and will not: no linger
        self.reply(msg, reply)
        if not msg.received and not self.closing and self.transport is not None:
            self.state = _LINGER
            self._set_deadline(self.limits.linger_s)

    def _handle(self, msg: Request) -> None:
        route = msg.route
        assert route is not None
        try:
            reply = route.handler(msg)
        except HTTPError as exc:
            reply = error_reply(exc)
        except Exception:
            log.exception("%s %s failed", msg.method, msg.path)
            reply = error_reply(_internal())
        if reply is not None:
            self.reply(msg, reply)

    def reply(self, msg: Request, reply: Reply) -> None:
        transport = self.transport
        if msg.replied or msg is not self.active or transport is None or transport.is_closing():
            return
        msg.replied = True
        msg.on_abort = None  # nothing to abort anymore (and no reference cycle through it)
        keep = msg.keep_alive and not reply.close and not self.closing and not self.server.closing
        head = [_STATUS_LINES.get(reply.status) or b"HTTP/1.1 %d \r\n" % reply.status]
        for name, value in reply.headers:
            head += (name, b": ", value, b"\r\n")
        head.append(b"Content-Length: %d\r\n" % len(reply.body))
        if not keep:
            head.append(b"Connection: close\r\n")
        elif msg.http10:
            head.append(b"Connection: keep-alive\r\n")
        head.append(self.server.date())
        if msg.method != "HEAD":
            head.append(reply.body)
        transport.write(b"".join(head))
        if not keep:
            msg.keep_alive = False
        if msg.received:
            self._done(msg)

    def _done(self, msg: Request) -> None:
        """``msg`` is answered and read: the next request, or the end of the connection."""
        self.active = None
        if not msg.keep_alive or self.closing:
            self.close()
            return
        self.state = _IDLE
        self._set_deadline(self.limits.keep_alive_s)
        self._next()

    def _next(self) -> None:
        if self.active is not None or self.write_paused or not self.pending or self.closing:
            return
        msg = self.pending.popleft()
        self.transport.resume_reading()  # type: ignore[union-attr]
        self._check_head(msg)
        if msg.replied:
            return  # refused on its head (reply() went on to the next)
        if msg.too_large:
            self.reply(msg, error_reply(PayloadTooLarge(self.limits.max_body_bytes)))
        else:
            self.state = _WAIT
            self._set_deadline(None)
            self._handle(msg)

    def _refuse(self, exc: HTTPError) -> None:
        """A request that cannot be read on: answer and close (after the answer in progress)."""
        self._stop_reading()
        if self.active is None:
            msg = self.msg or Request(self)
            self.active = msg
            msg.received = True
            msg.keep_alive = False
            self.reply(msg, error_reply(exc))
            self.close()

    def _refuse_head(self) -> None:
        self._refuse(
            HTTPError(
                f"the request head is larger than {self.limits.max_head_bytes} bytes "
                f"or has more than {self.limits.max_headers} header lines",
                status=431,
                code="header_too_large",
            )
        )

    def _stop_reading(self) -> None:
        self.closing = True
        self.pending.clear()
        if self.transport is not None and not self.transport.is_closing():
            self.transport.pause_reading()
        if self.active is not None:
            self.active.keep_alive = False

    # -- time limits (checked by the server's sweep) -------------------------------------------
    def _set_deadline(self, seconds: float | None) -> None:
        self.deadline = _INF if seconds is None else self.loop.time() + seconds

    def timed_out(self) -> None:
        self.deadline = _INF
        if self.closing:
            return
        reading = self.msg
        if self.state in (_HEAD, _BODY) and (self.active is None or self.active is reading):
            what = "head" if self.state == _HEAD else "body"
            late = HTTPError(
                f"the request {what} was not received in time", status=408, code="request_timeout"
            )
            if self.active is None:
                self._refuse(late)
                return
            assert reading is not None
            reading.received = True  # as far as this connection goes: answer, then close
            reading.keep_alive = False
            self._stop_reading()
            self.reply(reading, error_reply(late))
        self.close()  # idle, lingering, or a pipelined request behind another: just close

    @property
    def idle(self) -> bool:
        """Between two requests (a new connection is not: its request is on its way)."""
        return self.state == _IDLE and self.active is None and self.requests > 0

    def close(self) -> None:
        self.closing = True
        if self.transport is not None:
            self.transport.close()


class HTTPServer:
    """The listeners' shared state: the application, the limits, the open connections."""

    def __init__(self, app: App, limits: Limits, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.app = app
        self.limits = limits
        self.loop = loop or asyncio.get_running_loop()
        self.connections: set[HTTPConnection] = set()
        self.servers: list[asyncio.AbstractServer] = []
        self.closing = False
        self._sweeper: asyncio.TimerHandle | None = None
        self._date_second = 0
        self._date = b""

    def protocol(self) -> HTTPConnection:
        return HTTPConnection(self)

    def admit(self, conn: HTTPConnection) -> bool:
        """Take a new connection; at the cap, an idle one makes room, else it is refused."""
        if len(self.connections) >= self.limits.max_connections:
            victim = next((c for c in self.connections if c.idle), None)
            if victim is None:
                busy = HTTPError(
                    "the orchestrator has too many open connections: retry later",
                    status=503,
                    code="busy",
                    retry_after=1,
                )
                assert conn.transport is not None
                msg = Request(conn)
                msg.received, msg.keep_alive = True, False
                conn.active = msg
                conn.reply(msg, error_reply(busy))
                return False
            victim.close()
            self.connections.discard(victim)
        self.connections.add(conn)
        return True

    def date(self) -> bytes:
        now = int(time.time())
        if now != self._date_second:
            self._date_second = now
            self._date = b"Date: %s\r\n\r\n" % formatdate(now, usegmt=True).encode()
        return self._date

    async def listen(self, sockets: Iterable[Any]) -> None:
        for sock in sockets:
            self.servers.append(await self.loop.create_server(self.protocol, sock=sock))
        if self._sweeper is None:
            self._sweep()

    def _sweep(self) -> None:
        """Time limits, all connections at once: a timer per request would cost more."""
        now = self.loop.time()
        for conn in [c for c in self.connections if c.deadline <= now]:
            conn.timed_out()
        self._sweeper = self.loop.call_later(SWEEP_S, self._sweep)

    def stop_accepting(self) -> None:
        """Close the listeners and idle connections; the others close after their answer.

        A connection accepted but still without a request gets a second for it: its client
        has just connected to send one, and closing it would reset that request.
        """
        self.closing = True
        for server in self.servers:
            server.close()
        soon = self.loop.time() + FRESH_GRACE_S
        for conn in list(self.connections):
            if conn.idle:
                conn.close()
            elif conn.state == _IDLE and conn.active is None:  # new, its request on its way
                conn.deadline = min(conn.deadline, soon)

    def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None

    def fail_active(self) -> None:
        """Answer every request still waiting 503 (stopping) and close."""
        for conn in list(self.connections):
            if conn.active is not None and not conn.active.replied:
                conn.reply(
                    conn.active, error_reply(ShuttingDown("the orchestrator is stopping", retry_after=1))
                )
            conn.close()
