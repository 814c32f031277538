"""A lean HTTP/1.1 client for the containers: keep-alive connections over asyncio protocols.

aiohttp's client costs several times the whole per-request budget of the orchestrator
(the goal is about 1 ms of overhead at thousands of requests per second on one core), and
the containers are our own services answering small bodies: one request at a time per
connection, ``Content-Length`` or chunked framing. Errors say whether any response byte
arrived, which decides whether a request may be retried elsewhere.
"""

from __future__ import annotations

import asyncio
import re
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

MAX_HEAD_BYTES = 64 * 1024


class UpstreamError(Exception):
    """The container gave no usable answer."""

    retryable = False


class ConnectFailed(UpstreamError):
    """No connection could be opened (refused, unreachable, connect timeout)."""

    retryable = True


class ClosedBeforeResponse(UpstreamError):
    """The connection closed or reset before the first response byte."""

    retryable = True


class Abandoned(UpstreamError):
    """Given up before the first response byte: the container failed its health checks."""

    retryable = True


class UpstreamTimeout(UpstreamError):
    """No complete answer within the timeout."""


class BadResponse(UpstreamError):
    """A malformed answer, or the connection closed in the middle of it."""


Headers = list[tuple[bytes, bytes]]


@dataclass(slots=True)
class Response:
    status: int
    headers: Headers  # as received: names in their case, values without leading blanks
    body: bytes
    keep_alive: bool

    def header(self, name: str) -> str | None:
        wanted = name.lower().encode("latin-1")
        size = len(wanted)
        for key, value in self.headers:
            if len(key) == size and key.lower() == wanted:
                return value.strip().decode("latin-1")
        return None


# A response head: the status line, then header fields whose names are RFC 9110 tokens
# and whose values carry no control character but tab. The answer is passed on to the
# orchestrator's client, whose server (uvicorn) refuses to send anything else. Two C-level
# regex passes cost a third of a Python loop over the lines.
_CTL = rb"\x00-\x08\x0a-\x1f\x7f"
_FIELD = rb"\r\n([!#$%&'*+\-.^_`|~0-9A-Za-z]+):[ \t]*([^" + _CTL + rb"]*)"
_HEAD = re.compile(rb"HTTP/1\.([01]) ([1-5][0-9][0-9])(?: [^" + _CTL + rb"]*)?((?:" + _FIELD + rb")*)")
_FIELDS = re.compile(_FIELD)
_FRAMING = re.compile(rb"\r\n(content-length|transfer-encoding|connection):[ \t]*([^\r\n]*)", re.IGNORECASE)


def _parse_head(head: bytes) -> tuple[int, Headers, int | None, bool, bool]:
    """(status, headers, content_length or None, chunked, keep_alive) of a response head."""
    match = _HEAD.fullmatch(head)
    if match is None:
        raise BadResponse(f"malformed response head {head[:120]!r}")
    keep_alive = match[1] == b"1"
    length: int | None = None
    chunked = False
    for name, raw in _FRAMING.findall(head):
        field = name.lower()
        value = raw.strip().lower()
        if field == b"content-length":
            if not value.isdigit():
                raise BadResponse(f"bad Content-Length {value!r}")
            length = int(value)
        elif field == b"transfer-encoding":
            chunked = value.endswith(b"chunked")
        else:
            keep_alive = b"close" not in value and (keep_alive or b"keep-alive" in value)
    return int(match[2]), _FIELDS.findall(head, match.start(3)), length, chunked, keep_alive


def _parse_chunked(buf: bytearray, start: int) -> tuple[bytes, int] | None:
    """(body, end offset) of a complete chunked body in ``buf`` from ``start``, or None."""
    body = bytearray()
    pos = start
    while True:
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            return None
        size_text = bytes(buf[pos:eol]).split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            raise BadResponse(f"bad chunk size {size_text[:20]!r}") from None
        pos = eol + 2
        if size == 0:
            # trailers end with an empty line
            end = buf.find(b"\r\n\r\n", pos - 2)
            return (bytes(body), end + 4) if end >= 0 else None
        if len(buf) < pos + size + 2:
            return None
        body += buf[pos : pos + size]
        pos += size + 2


Callback = Callable[[Any, "Connection", "Response | None", "UpstreamError | None"], None]


class Connection(asyncio.Protocol):
    """One keep-alive connection carrying one exchange at a time.

    ``send`` writes a complete request; the callback runs exactly once, synchronously in
    the event loop callback that completed (or broke) the exchange, so the caller can
    hand the connection to the next queued request without waking any task.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.reused = False
        self._buf = bytearray()
        self._callback: Callback | None = None
        self._arg: Any = None
        self._timer: asyncio.TimerHandle | None = None
        self._head: tuple[int, Headers, int | None, bool, bool] | None = None
        self._body_start = 0

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no asyncio.Transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        if self._callback is None:
            self.close()  # bytes nobody asked for: the connection is unusable
            return
        self._buf += data
        try:
            response = self._parse()
        except BadResponse as exc:
            self.close()
            self._done(None, exc)
            return
        if response is not None:
            if not response.keep_alive:
                self.close()
            self._done(response, None)

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._callback is None:
            return
        head = self._head
        if head is not None and head[2] is None and not head[3]:
            # no framing: the body ends with the connection
            self._done(Response(head[0], head[1], bytes(self._buf[self._body_start :]), False), None)
        elif self._buf:
            self._done(None, BadResponse("connection closed in the middle of the answer"))
        else:
            self._done(None, ClosedBeforeResponse(f"connection closed before any answer ({exc or 'EOF'})"))

    def _parse(self) -> Response | None:
        buf = self._buf
        if self._head is None:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > MAX_HEAD_BYTES:
                    raise BadResponse("response head too large")
                return None
            self._head = _parse_head(bytes(buf[:end]))
            self._body_start = end + 4
            if 100 <= self._head[0] < 200:  # interim answer: skip it
                del buf[: self._body_start]
                self._head = None
                return self._parse()
        status, headers, length, chunked, keep_alive = self._head
        start = self._body_start
        if chunked:
            parsed = _parse_chunked(buf, start)
            if parsed is None:
                return None
            body, end = parsed
        elif length is not None:
            end = start + length
            if len(buf) < end:
                return None
            body = bytes(buf[start:end])
        else:
            return None  # read until close
        if len(buf) != end:
            keep_alive = False  # pipelined garbage: don't reuse
        return Response(status, headers, body, keep_alive)

    def _done(self, response: Response | None, error: UpstreamError | None) -> None:
        callback, arg = self._callback, self._arg
        self._callback = self._arg = None
        self._head = None
        self._buf = bytearray()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if callback is not None:
            callback(arg, self, response, error)

    def _timed_out(self) -> None:
        self._timer = None
        self.close()
        self._done(None, UpstreamTimeout("no answer in time"))

    def send(self, data: bytes, timeout: float, callback: Callback, arg: Any) -> None:
        """Write one complete request; ``callback(arg, conn, response, error)`` follows."""
        assert self.transport is not None
        assert self._callback is None
        self._callback, self._arg = callback, arg
        self._timer = self.loop.call_later(timeout, self._timed_out)
        self.transport.write(data)

    def abandon(self, reason: str) -> None:
        """End the exchange with ``Abandoned`` if no answer byte has arrived yet.

        A stopped host sends no reset: without this its requests would wait for the
        upstream timeout although the health checks already know it is gone.
        """
        if self._callback is not None and not self._buf and self._head is None:
            self.close()
            self._done(None, Abandoned(reason))

    async def request(self, data: bytes, timeout: float) -> Response:
        """``send`` for callers that just wait (health checks)."""
        future: asyncio.Future[Response] = self.loop.create_future()

        def done(
            _arg: Any, _conn: Connection, response: Response | None, error: UpstreamError | None
        ) -> None:
            if not future.done():
                if response is not None:
                    future.set_result(response)
                else:
                    future.set_exception(error or UpstreamError("no answer"))

        self.send(data, timeout, done, None)
        try:
            return await future
        except asyncio.CancelledError:
            self.close()
            raise

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class Pool:
    """Keep-alive connections to one container (at most ``max_idle`` kept open)."""

    def __init__(self, host: str, port: int, max_idle: int = 4, connect_timeout: float = 2.0) -> None:
        self.host = host
        self.port = port
        self.max_idle = max_idle
        self.connect_timeout = connect_timeout
        self.idle: list[Connection] = []

    def take_idle(self) -> Connection | None:
        idle = self.idle
        while idle:
            conn = idle.pop()
            if not conn.closed:
                return conn
        return None

    def put(self, conn: Connection, keep_alive: bool) -> None:
        if keep_alive and not conn.closed and len(self.idle) < self.max_idle:
            conn.reused = True
            self.idle.append(conn)
        else:
            conn.close()

    async def connect(self, timeout: float | None = None) -> Connection:
        loop = asyncio.get_running_loop()
        limit = self.connect_timeout if timeout is None else min(timeout, self.connect_timeout)
        try:
            async with asyncio.timeout(limit):
                _, conn = await loop.create_connection(lambda: Connection(loop), self.host, self.port)
        except TimeoutError:
            raise ConnectFailed(f"connect to {self.host}:{self.port} timed out") from None
        except OSError as exc:
            raise ConnectFailed(f"connect to {self.host}:{self.port}: {exc.strerror or exc}") from None
        return conn

    async def request(self, data: bytes, timeout: float) -> Response:
        """One exchange on a pooled connection (health checks; inference uses ``send``)."""
        conn = self.take_idle()
        if conn is None:
            conn = await self.connect(timeout)
        response = await conn.request(data, timeout)
        self.put(conn, response.keep_alive)
        return response

    def close(self) -> None:
        for conn in self.idle:
            conn.close()
        self.idle.clear()
