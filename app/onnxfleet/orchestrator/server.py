"""The orchestrator's HTTP/1.1 server: an asyncio protocol on httptools' request parser.

Its own protocol rather than an ASGI server because the orchestrator is one process whose
CPU time per request limits it at short service times, and because it must bound what a
client can make it hold (docs/orchestrator.md): the request head (size and header count,
checked before the parser joins header pieces), the body (``Content-Length`` refused
before reading, chunked bodies when they grow past the limit), the bodies all
connections hold together (``BodyBudget``: 503 ``busy`` past it), the chunked framing
(chunk-size lines and trailers, as the head), the answers a client leaves unread (it is
no longer read while they are above the write buffer's high-water mark, and reset when
they stay there, or stay unsent after a close, longer than the send timeout), the
requests read ahead of their turn (``MAX_PIPELINED``), the time to send a whole head, a
whole body and between requests, and the number of connections (closing ones included).
A handler answers at once or later (``Request.respond``): an inference request needs no
task, only callbacks. Checks that need only the head (route, method, token, limits) run
before the body is read, and their refusals are sent at once; the rest of that body is
read and dropped for a while, so a client that sends its whole body before reading gets
the answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
import time
from collections import deque
from collections.abc import Iterable
from email.utils import formatdate
from http import HTTPStatus
from typing import Any
from urllib.parse import unquote

from httptools import HttpParserCallbackError, HttpParserError, HttpParserUpgrade, HttpRequestParser

from onnxfleet.orchestrator.errors import (
    BadRequest,
    HTTPError,
    PayloadTooLarge,
    ShuttingDown,
)
from onnxfleet.orchestrator.limits import BodyBudget, Limits
from onnxfleet.orchestrator.messages import App, Reply, Request, error_reply

log = logging.getLogger("onnxfleet.orchestrator.server")

_STATUS_LINES = {s.value: b"HTTP/1.1 %d %s\r\n" % (s.value, s.phrase.encode()) for s in HTTPStatus}
_INF = float("inf")
_LINGER_RESET = struct.pack("ii", 1, 0)
SWEEP_S = 0.25  # time limits are enforced to within this
FRESH_GRACE_S = 1.0  # stopping: how long a new connection may take to send its request
MAX_PIPELINED = 32  # requests read ahead of the one being answered; then: parsing waits
FEED_SLICE = 4 * 1024  # bytes parsed at a time (or the rest of a body): checks between two
WRITE_HIGH_WATER = 64 * 1024  # unsent answer bytes above which the client is no longer read
# the kernel's send buffer (it doubles it): fixed, so that a client that does not read
# fills ours (and is no longer read) after this, not after what autotuning allows (4 MiB)
SEND_BUFFER = 128 * 1024


class _HeadTooLarge(Exception):
    pass


def _busy() -> HTTPError:
    return HTTPError(
        "the orchestrator holds too many request bytes: retry later",
        status=503,
        code="busy",
        retry_after=1,
    )


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
        self.pending_bytes = 0  # their bodies: read ahead up to one body limit
        self.head_size = 0
        self.head_fed = 0  # bytes given to the parser since the head began
        self.body_size = 0
        self.body_read = 0  # body bytes the parser gave, kept or dropped
        self.body_left = 0  # of a Content-Length body: parsed in one piece
        self.framing = 0  # bytes of a chunked body that are no body: chunk-size lines, trailers
        self.chunk_seen = False
        self.body_parts: list[bytes] = []
        self.bodies = server.budget.ledger()
        self.state = _IDLE
        self.deadline = _INF  # loop.time() by which the current state must end (server sweep)
        # by which the client must have read its answers (high-water mark, or closing): every
        # state, the closing one too, ends in bounded time
        self.send_deadline = _INF
        self.write_paused = False
        self.reading = True
        self.read_more = True  # False: answer what was read, then close
        self.closing = False
        self.aborted = False
        self.unfed = b""  # read, not parsed yet: from unfed_at on
        self.unfed_at = 0
        self.parsing = False
        self.feeding: asyncio.Handle | None = None
        self.requests = 0  # read on this connection so far

    # -- asyncio.Protocol ---------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no asyncio.Transport
        self.transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)  # type: ignore[union-attr]
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
        peer = transport.get_extra_info("peername")
        self.remote = peer[0] if isinstance(peer, tuple) else None
        if not self.server.admit(self):
            return
        self._set_deadline(self.limits.head_timeout_s)  # a new connection is for a request

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        self.closing = True
        self.bodies.close()
        if self.feeding is not None:
            self.feeding.cancel()
            self.feeding = None
        self.unfed = b""
        active, self.active = self.active, None
        self.pending.clear()
        self.pending_bytes = 0
        if active is not None and not active.replied and active.on_abort is not None:
            active.on_abort()

    def eof_received(self) -> bool:
        self.close()  # a client that stops sending has left (and its queued request is dropped)
        return False

    def pause_writing(self) -> None:
        self.write_paused = True
        if self.send_deadline == _INF:
            self.send_deadline = self.loop.time() + self.limits.send_timeout_s
        self._update_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        if not self.closing:
            self.send_deadline = _INF
        self._next()
        self._feed_soon()
        self._update_reading()

    def _feed_soon(self) -> None:
        if self.unfed and self.feeding is None and not self.parsing:
            self.feeding = self.loop.call_soon(self._feed)

    def _update_reading(self) -> None:
        """Read while nothing waits: no request queued, answers sent, more requests wanted."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        want = not (self.closing or self.write_paused or self.pending or not self.read_more or self.unfed)
        if want != self.reading:
            self.reading = want
            if want:
                transport.resume_reading()
            else:
                transport.pause_reading()

    def data_received(self, data: bytes) -> None:
        if self.closing or not self.read_more:
            return
        if self.unfed_at < len(self.unfed):
            self.unfed = self.unfed[self.unfed_at :] + data
        else:
            self.unfed = data
        self.unfed_at = 0
        self._feed()

    def _feed(self) -> None:
        """Parse what was read, a slice at a time; stop while answers wait to be sent or
        requests to be answered (the rest is parsed when they are), and let the other
        connections have their turn between two slices."""
        self.feeding = None
        if self.parsing:
            return  # called back from within the parser: it goes on by itself
        while self.unfed_at < len(self.unfed):
            if self.closing or not self.read_more:
                self.unfed, self.unfed_at = b"", 0
                break
            if (
                self.write_paused
                or len(self.pending) >= MAX_PIPELINED
                or self.pending_bytes >= self.limits.max_body_bytes
            ):
                break  # resume_writing, _next: on again
            at = self.unfed_at
            size = max(FEED_SLICE, self.body_left) if self.state == _BODY else FEED_SLICE
            self.unfed_at = at + size
            whole = at == 0 and len(self.unfed) <= size
            self.parsing = True
            try:
                self._parse(self.unfed if whole else self.unfed[at : at + size])
            finally:
                self.parsing = False
            if self.unfed_at < len(self.unfed):
                self.feeding = self.loop.call_soon(self._feed)
                break
        if self.unfed_at >= len(self.unfed):
            self.unfed, self.unfed_at = b"", 0
        self._update_reading()

    def _parse(self, data: bytes) -> None:  # noqa: PLR0912 (one branch per way a read ends)
        if self.state == _IDLE:
            self.state = _HEAD
            self.head_fed = 0
            if self.requests > 0:  # the first request's head counts from the connection
                self._set_deadline(self.limits.head_timeout_s)
        reading_body = self.msg if self.state == _BODY else None
        body_before = self.body_read
        self.chunk_seen = False
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
            self._read_no_more()  # an upgrade or CONNECT: refused (on its turn), then closed
            return
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
            return
        if reading_body is not None and self.msg is reading_body and self.state == _BODY:
            # what a chunked body's framing holds unparsed (a chunk-size line, a trailer) is
            # bounded as a head is; counted from the last chunk-size line that ended
            if self.chunk_seen:
                self.framing = 0
            else:
                self.framing += len(data) - (self.body_read - body_before)
                if self.framing > self.limits.max_head_bytes:
                    self._refuse(
                        HTTPError(
                            f"a chunk-size line or the trailer of this chunked body is larger than "
                            f"{self.limits.max_head_bytes} bytes",
                            status=431,
                            code="header_too_large",
                        )
                    )

    # -- httptools callbacks --------------------------------------------------------------------
    def on_message_begin(self) -> None:
        self.requests += 1
        self.msg = Request(self)
        self.head_size = 0
        self.head_fed = 0
        self.body_size = 0
        self.framing = 0
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
        msg.upgrade = parser.should_upgrade()
        declared = msg.header(b"content-length")
        self.body_left = int(declared) if declared is not None and declared.isdigit() else 0
        if 0 < self.body_left <= self.limits.max_body_bytes and not self.bodies.hold(msg, self.body_left):
            msg.busy = True
        self.state = _BODY
        self._set_deadline(self.limits.body_timeout_s)
        if self.active is not None or self.pending or self.write_paused:
            return  # pipelined, or answers unsent: checked when its turn comes, in order
        self._check_head(msg)

    def on_chunk_header(self) -> None:
        self.chunk_seen = True

    def on_body(self, body: bytes) -> None:
        msg = self.msg
        assert msg is not None
        self.body_read += len(body)
        self.body_left -= len(body)
        if msg.early or msg.too_large or msg.busy:
            return  # refused: dropped
        self.body_size += len(body)
        if self.body_size > self.limits.max_body_bytes:
            msg.too_large = True
        elif self.body_size > msg.held and not self.bodies.hold(msg, self.body_size):  # chunked
            msg.busy = True
        else:
            self.body_parts.append(body)
            return
        self.body_parts = []
        self.bodies.release(msg)
        if msg is self.active:
            self._early(msg, PayloadTooLarge(self.limits.max_body_bytes) if msg.too_large else _busy())

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
            self.pending_bytes += len(msg.body)
            self._update_reading()  # one request ahead is enough
            if self.active is None:  # deferred while answers were unsent, and they are sent now
                self._next()

    # -- requests ---------------------------------------------------------------------------------
    def _check_head(self, msg: Request) -> None:
        """Route, guard and declared size: refusals go out before the body is read."""
        self.active = msg
        try:
            if msg.upgrade:
                raise _upgrade_refused(msg)
            msg.route = route = self.app.route(msg)
            if route.guard is not None:
                route.guard(msg)
            declared = msg.header(b"content-length")
            if declared is not None and int(declared) > self.limits.max_body_bytes:
                raise PayloadTooLarge(self.limits.max_body_bytes)
            if msg.busy:
                raise _busy()
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
        if msg.header(b"expect") is not None or msg.upgrade:
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
        if msg.held:
            self.bodies.release(msg)  # what is still held after the answer, the queue counts
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
        self.pending_bytes -= len(msg.body)
        self._feed_soon()
        self._update_reading()
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
        """A request that cannot be read on: answer and close (after the answer in progress).

        The request being read may already be the active one (its head was checked): it has
        no answer yet, or an early one; either way nothing more comes from this connection.
        """
        self._stop_reading()
        active = self.active
        if active is None or (active is self.msg and not active.replied):
            msg = self.msg or Request(self)
            self.active = msg
            msg.received = True
            msg.keep_alive = False
            self.reply(msg, error_reply(exc))
            self.close()
        elif active is self.msg:  # answered early, its body was being dropped
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
        for msg in self.pending:
            self.bodies.release(msg)
        self.pending.clear()
        self.pending_bytes = 0
        self._update_reading()
        # no read deadline is left: an answer in progress is bounded by the application, its
        # sending by the send deadline
        self._set_deadline(None)
        if self.active is not None:
            self.active.keep_alive = False

    def _read_no_more(self) -> None:
        """Answer the requests read so far, in order, then close."""
        self.read_more = False
        self._update_reading()
        last = self.pending[-1] if self.pending else self.active
        if last is None:
            self.close()
        else:
            last.keep_alive = False
        if self.msg is not None and self.msg is not last:  # a request cut short: never answered
            self.bodies.release(self.msg)
            self.msg = None
            self.state = _WAIT
            self._set_deadline(None)
        elif self.msg is not None and not self.msg.received:  # its head checked, its body cut
            self._refuse(BadRequest("the request ended before its body did"))

    # -- time limits (checked by the server's sweep) -------------------------------------------
    def _set_deadline(self, seconds: float | None) -> None:
        self.deadline = _INF if seconds is None else self.loop.time() + seconds

    def timed_out(self, now: float) -> None:
        if self.send_deadline <= now:
            log.info(
                "a client did not read its answers within %ss: connection reset", self.limits.send_timeout_s
            )
            self.abort()
            return
        self.deadline = _INF
        if self.closing:
            self.abort()
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
        self._set_deadline(None)
        transport = self.transport
        if transport is not None:
            transport.close()
            if transport.get_write_buffer_size() and self.send_deadline == _INF:
                self.send_deadline = self.loop.time() + self.limits.send_timeout_s

    def abort(self) -> None:
        """Close at once, unsent bytes dropped."""
        self.closing = True
        self.deadline = self.send_deadline = _INF
        transport = self.transport
        if transport is not None and not self.aborted:
            self.aborted = True
            sock = transport.get_extra_info("socket")
            if sock is not None:
                # a reset: else the kernel keeps the unsent bytes and retries a client that
                # does not read, past the process's end of the connection
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
            transport.abort()


def _upgrade_refused(msg: Request) -> HTTPError:
    if msg.method == "CONNECT":
        return HTTPError(
            "CONNECT is not supported: the orchestrator is no proxy",
            status=405,
            code="method_not_allowed",
        )
    return HTTPError(
        "protocol upgrades are not supported: send HTTP/1.1 requests without 'Upgrade'",
        status=501,
        code="upgrade_not_supported",
    )


class HTTPServer:
    """The listeners' shared state: the application, the limits, the open connections."""

    def __init__(
        self,
        app: App,
        limits: Limits,
        loop: asyncio.AbstractEventLoop | None = None,
        budget: BodyBudget | None = None,
    ) -> None:
        self.app = app
        self.limits = limits
        self.loop = loop or asyncio.get_running_loop()
        self.connections: set[HTTPConnection] = set()
        # one for the process: the API and admin listeners share it
        self.budget = budget or BodyBudget(limits.max_connection_bytes)
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
            victim = next((c for c in self.connections if c.idle or c.closing), None)
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
            unsent = victim.transport is not None and victim.transport.get_write_buffer_size() > 0
            if victim.closing or unsent:
                victim.abort()  # a close would wait for a client that does not read
            else:
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
        for conn in [c for c in self.connections if c.deadline <= now or c.send_deadline <= now]:
            conn.timed_out(now)
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
