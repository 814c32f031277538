"""A lean HTTP/1.1 client for the containers: keep-alive connections, httptools' parser.

aiohttp's client costs several times the orchestrator's whole per-request budget, and the
containers are our own services answering small bodies: one request at a time per
connection, parsed by ``httptools.HttpResponseParser`` (llhttp, strict: framing, header
tokens and values are checked there). Errors say whether any answer byte arrived, which
decides whether a request may be sent again.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from typing import Any

from httptools import HttpParserError, HttpParserUpgrade, HttpResponseParser

MAX_ANSWER_BYTES = 256 * 1024 * 1024
# an answer's status line and headers at most (a worker's are a few hundred bytes): llhttp
# sets no limit and buffers a header line until it ends
MAX_HEAD_BYTES = 64 * 1024

Headers = list[tuple[bytes, bytes]]


class UpstreamError(Exception):
    """The container gave no usable answer (the message is for logs and /status)."""


class ConnectFailed(UpstreamError):
    """No connection could be opened (refused, unreachable, connect timeout)."""


class ClosedBeforeResponse(UpstreamError):
    """The connection closed or reset before the first answer byte."""


class UpstreamTimeout(UpstreamError):
    """No complete answer within the timeout."""


class BadResponse(UpstreamError):
    """A malformed answer, or the connection closed in the middle of it."""


class HeadTooLarge(BadResponse):
    """The answer's head (status line and headers) exceeds ``MAX_HEAD_BYTES``."""


class Response:
    __slots__ = ("body", "headers", "keep_alive", "status")

    def __init__(self, status: int, headers: Headers, body: bytes, keep_alive: bool) -> None:
        self.status = status
        self.headers = headers  # as received: names in their case, values stripped of leading blanks
        self.body = body
        self.keep_alive = keep_alive

    def header(self, name: str) -> str | None:
        wanted = name.lower().encode("latin-1")
        size = len(wanted)
        for key, value in self.headers:
            if len(key) == size and key.lower() == wanted:
                return value.strip().decode("latin-1")
        return None


# callback(ex, container, connection, response, error): exactly one of response/error is set
Callback = Callable[[Any, Any, "Connection", "Response | None", "UpstreamError | None"], None]


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
        self._parser = HttpResponseParser(self)
        self._callback: Callback | None = None
        self._ex: Any = None
        self.owner: Any = None  # the container record whose slot this exchange holds
        self._timer: asyncio.TimerHandle | None = None
        self._reset()

    def _reset(self) -> None:
        self._answered = False  # an answer byte arrived
        self._head_bytes = 0  # bytes received before the end of the head (all interim ones too)
        self._status = 0
        self._headers: Headers = []
        self._framed = False  # Content-Length or Transfer-Encoding: the parser finds the end
        self._head_done = False
        self._body: list[bytes] = []
        self._size = 0
        self._keep_alive = False
        self._response: Response | None = None
        self._error: UpstreamError | None = None

    # -- asyncio.Protocol -----------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no asyncio.Transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        if self._callback is None:
            self.close()  # bytes nobody asked for: the connection is unusable
            return
        self._answered = True
        if not self._head_done:
            self._head_bytes += len(data)
        try:
            self._parser.feed_data(data)
        except (HttpParserError, HttpParserUpgrade) as exc:
            if self._response is None:
                self.close()
                self._done(None, self._error or BadResponse(f"malformed answer ({exc})"))
                return
            self._response.keep_alive = False  # bytes after the answer: don't reuse
        if not self._head_done and self._head_bytes > MAX_HEAD_BYTES and self._response is None:
            self.close()
            self._done(None, HeadTooLarge(f"answer head larger than {MAX_HEAD_BYTES} bytes"))
            return
        response = self._response
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
        if self._head_done and not self._framed:
            # no framing: the body ends with the connection
            body = b"".join(self._body)
            self._done(Response(self._status, self._headers, body, False), None)
        elif self._answered:
            self._done(None, BadResponse("connection closed in the middle of the answer"))
        else:
            reason = "reset" if exc is not None else "EOF"
            self._done(None, ClosedBeforeResponse(f"connection closed before any answer ({reason})"))

    # -- httptools callbacks --------------------------------------------------------------
    def on_message_begin(self) -> None:
        if self._response is not None:
            self._response.keep_alive = False  # a second answer to one request: don't reuse

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))
        if len(name) in (14, 17) and name.lower() in (b"content-length", b"transfer-encoding"):
            self._framed = True

    def on_headers_complete(self) -> None:
        if sum(len(name) + len(value) + 4 for name, value in self._headers) > MAX_HEAD_BYTES:
            # (the head ended in the chunk that crossed the limit: the same answer)
            self._error = HeadTooLarge(f"answer head larger than {MAX_HEAD_BYTES} bytes")
            raise self._error
        status = self._parser.get_status_code()
        if not 100 <= status <= 599:
            self._error = BadResponse(f"status {status} is outside 100-599")
            raise self._error
        self._status = status
        self._head_done = True
        self._keep_alive = self._parser.should_keep_alive()

    def on_body(self, body: bytes) -> None:
        self._size += len(body)
        if self._size > MAX_ANSWER_BYTES:
            self._error = BadResponse(f"answer larger than {MAX_ANSWER_BYTES} bytes")
            raise self._error
        self._body.append(body)

    def on_message_complete(self) -> None:
        if self._response is not None:
            return
        if self._status < 200:  # an interim answer (100 Continue): the real one follows
            self._headers = []
            self._framed = self._head_done = False
            return
        body = self._body[0] if len(self._body) == 1 else b"".join(self._body)
        self._response = Response(self._status, self._headers, body, self._keep_alive)

    # -- exchanges --------------------------------------------------------------------------
    def _done(self, response: Response | None, error: UpstreamError | None) -> None:
        callback, ex, owner = self._callback, self._ex, self.owner
        self._callback = self._ex = self.owner = None
        self._reset()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if callback is not None:
            callback(ex, owner, self, response, error)

    def _timed_out(self) -> None:
        self._timer = None
        self.close()
        self._done(None, UpstreamTimeout("no answer in time"))

    def send(self, data: bytes, timeout: float, callback: Callback, ex: Any, owner: Any) -> None:
        """Write one complete request; ``callback(ex, owner, conn, response, error)`` follows."""
        assert self.transport is not None
        assert self._callback is None
        self._callback, self._ex, self.owner = callback, ex, owner
        self._timer = self.loop.call_later(timeout, self._timed_out)
        self.transport.write(data)

    @property
    def waiting_first_byte(self) -> bool:
        return self._callback is not None and not self._answered

    def detach(self) -> Any:
        """Take the exchange off this connection; the callback then gets ``None`` for it.

        The connection (and so the container's slot) stays taken until its answer is read
        and discarded, or it closes: the container may still be computing.
        """
        ex, self._ex = self._ex, None
        return ex

    async def request(self, data: bytes, timeout: float) -> Response:
        """``send`` for callers that just wait (health checks)."""
        future: asyncio.Future[Response] = self.loop.create_future()

        def done(_ex: Any, _owner: Any, _conn: Connection, response: Response | None, error: Any) -> None:
            if not future.done():
                if response is not None:
                    future.set_result(response)
                else:
                    future.set_exception(error)

        self.send(data, timeout, done, None, None)
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
    """Keep-alive connections to one container address (at most ``max_idle`` kept open)."""

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
