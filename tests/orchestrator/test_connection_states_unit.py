"""The connection's deadlines, state by state, on a fake transport and a fake clock: every
state ends in bounded time, the closing one (answers left unsent) included."""

from __future__ import annotations

import asyncio
from typing import Any

from onnxfleet.orchestrator.limits import Limits
from onnxfleet.orchestrator.messages import Reply, Request, Route
from onnxfleet.orchestrator.server import HTTPConnection, HTTPServer


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0
        self.soon: list[asyncio.Handle] = []

    def time(self) -> float:
        return self.now

    def call_later(self, _delay: float, _fn: Any) -> asyncio.TimerHandle:
        raise AssertionError("the test sweeps by itself")

    def call_soon(self, fn: Any, *args: Any) -> asyncio.Handle:
        handle = asyncio.Handle(fn, args, self)  # type: ignore[arg-type]
        self.soon.append(handle)
        return handle

    def run_soon(self) -> None:
        while self.soon:
            handle = self.soon.pop(0)
            if not handle.cancelled():
                handle._run()

    def get_debug(self) -> bool:
        return False


class Transport:
    """What the connection writes, and a write buffer that a client that never reads fills."""

    def __init__(self, reads: bool = True) -> None:
        self.reads = reads
        self.written = b""
        self.unsent = 0
        self.closed = self.aborted = False
        self.reading = True
        self.protocol: HTTPConnection | None = None

    def get_extra_info(self, name: str) -> Any:
        return ("127.0.0.1", 5555) if name == "peername" else None

    def set_write_buffer_limits(self, high: int) -> None:
        self.high = high

    def write(self, data: bytes) -> None:
        self.written += data
        if not self.reads:
            self.unsent += len(data)
            if self.unsent > self.high and self.protocol is not None and not self.protocol.write_paused:
                self.protocol.pause_writing()

    def get_write_buffer_size(self) -> int:
        return self.unsent

    def is_closing(self) -> bool:
        return self.closed or self.aborted

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True


class App:
    def route(self, request: Request) -> Route:
        return Route(lambda _r: Reply(200, b"x" * 1000, [(b"Content-Type", b"text/plain")]))


def connection(limits: Limits, reads: bool = True) -> tuple[HTTPServer, HTTPConnection, Transport, Clock]:
    clock = Clock()
    server = HTTPServer(App(), limits, loop=clock)  # type: ignore[arg-type]
    conn = server.protocol()
    transport = Transport(reads)
    transport.protocol = conn
    conn.connection_made(transport)  # type: ignore[arg-type]
    return server, conn, transport, clock


def receive(conn: HTTPConnection, clock: Clock, data: bytes) -> None:
    conn.data_received(data)
    clock.run_soon()


def sweep(server: HTTPServer, clock: Clock, seconds: float) -> None:
    """Time passes; the server's sweep runs every 0.25 s of it."""
    end = clock.now + seconds
    while clock.now < end:
        clock.now += 0.25
        for conn in [c for c in server.connections if min(c.deadline, c.send_deadline) <= clock.now]:
            conn.timed_out(clock.now)


def test_a_client_that_never_reads_is_no_longer_read_and_then_reset() -> None:
    server, conn, transport, clock = connection(Limits(send_timeout_s=2.0), reads=False)
    receive(conn, clock, b"GET / HTTP/1.1\r\nHost: t\r\n\r\n" * 500)
    answers = transport.written.count(b"HTTP/1.1 200")
    assert 50 < answers < 150, answers  # up to the high-water mark (and a slice's worth)
    assert not transport.reading
    sweep(server, clock, 1.5)
    assert not transport.aborted
    sweep(server, clock, 1.0)
    assert transport.aborted


def test_a_closing_connection_with_unsent_answers_is_reset_at_the_send_timeout() -> None:
    server, conn, transport, clock = connection(Limits(send_timeout_s=2.0, keep_alive_s=100.0), reads=False)
    receive(conn, clock, b"GET / HTTP/1.0\r\n\r\n")  # answered, then closed
    assert transport.closed
    assert transport.unsent > 0
    sweep(server, clock, 1.5)
    assert not transport.aborted
    sweep(server, clock, 1.0)
    assert transport.aborted


def test_a_body_sent_one_byte_per_pause_meets_the_whole_body_deadline() -> None:
    server, conn, transport, clock = connection(Limits(body_timeout_s=3.0))
    receive(conn, clock, b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n")
    for _ in range(20):
        if transport.is_closing():
            break
        receive(conn, clock, b"x")
        sweep(server, clock, 0.5)
    assert b"408" in transport.written.split(b"\r\n", 1)[0]
    assert transport.closed or transport.aborted
    assert clock.now - 1000.0 <= 3.5


def test_at_the_cap_a_closing_connection_makes_room_by_a_reset() -> None:
    server, conn, transport, clock = connection(Limits(max_connections=1, keep_alive_s=100.0), reads=False)
    receive(conn, clock, b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    assert transport.closed
    newcomer = server.protocol()
    fresh = Transport()
    fresh.protocol = newcomer
    newcomer.connection_made(fresh)  # type: ignore[arg-type]
    assert transport.aborted
    assert server.connections == {newcomer}


class LaterApp:
    """Answers nothing by itself: the test answers, as the dispatcher would later."""

    def __init__(self) -> None:
        self.waiting: list[Request] = []

    def route(self, request: Request) -> Route:
        return Route(self.waiting.append)


def test_requests_read_ahead_are_bounded_in_bytes_and_parsed_on_their_turn() -> None:
    clock = Clock()
    app = LaterApp()
    server = HTTPServer(app, Limits(max_body_bytes=1000), loop=clock)  # type: ignore[arg-type]
    conn = server.protocol()
    transport = Transport()
    transport.protocol = conn
    conn.connection_made(transport)  # type: ignore[arg-type]
    one = b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 600\r\n\r\n" + b"x" * 600
    receive(conn, clock, one * 12)
    assert len(app.waiting) == 1
    assert sum(len(r.body) for r in conn.pending) <= 1000 + 600 * 7  # a 4 KiB slice's worth past it
    assert len(conn.pending) < 11
    assert not transport.reading
    for _ in range(12):  # answered in turn: the rest is parsed, nothing lost, in order
        app.waiting[-1].respond(Reply(200, b"ok", []))
        clock.run_soon()
    assert transport.written.count(b"HTTP/1.1 200") == 12
    assert transport.reading


def test_a_request_whose_head_came_while_answers_were_unsent_is_answered_once_they_are() -> None:
    _server, conn, transport, clock = connection(Limits(), reads=False)
    gets = b"GET / HTTP/1.1\r\nHost: t\r\n\r\n" * 70  # answers past the high-water mark
    receive(conn, clock, gets + b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\n\r\n")
    assert conn.write_paused
    assert transport.written.count(b"HTTP/1.1 200") < 70
    transport.unsent, transport.reads = 0, True
    conn.resume_writing()
    clock.run_soon()
    assert transport.written.count(b"HTTP/1.1 200") == 70
    receive(conn, clock, b"abcd")  # the POST's body, after its head was put aside
    assert transport.written.count(b"HTTP/1.1 200") == 71
