"""The connections' shared budget of request body bytes (``--max-connection-bytes``): the
ledger alone, then every way a request ends on a fake transport, each giving back exactly
what it held (issue 17: memory bounded in bytes)."""

from __future__ import annotations

import json
import re

import pytest

from onnxfleet.orchestrator.errors import HTTPError
from onnxfleet.orchestrator.limits import BodyBudget, BodyLedger, Limits
from onnxfleet.orchestrator.messages import Reply, Request, Route
from onnxfleet.orchestrator.server import HTTPConnection, HTTPServer
from tests.orchestrator.test_connection_states_unit import Clock, Transport, receive, sweep

KIB = 1024
MIB = 1024 * KIB


class Msg:
    """Stands for a request: the ledger only needs what it holds."""

    def __init__(self) -> None:
        self.held = 0


def ledger(capacity: int, allowance: int = 64 * KIB) -> tuple[BodyBudget, BodyLedger]:
    budget = BodyBudget(capacity, allowance)
    return budget, budget.ledger()


def test_a_ledger_draws_only_beyond_its_allowance_and_refuses_what_does_not_fit() -> None:
    budget, one = ledger(1 * MIB, allowance=64 * KIB)
    a, b = Msg(), Msg()
    assert one.hold(a, 32 * KIB)  # type: ignore[arg-type]
    assert (budget.used, budget.held) == (0, 32 * KIB)
    assert one.hold(a, 512 * KIB)  # type: ignore[arg-type]  # grows: the difference only
    assert (budget.used, budget.held) == (448 * KIB, 512 * KIB)
    assert one.hold(a, 100 * KIB)  # type: ignore[arg-type]  # less than held: nothing changes
    assert budget.held == 512 * KIB
    assert not one.hold(b, 700 * KIB)  # type: ignore[arg-type]  # 1148 KiB drawn > 1 MiB
    assert (budget.used, budget.held) == (448 * KIB, 512 * KIB)  # a refusal takes nothing
    assert one.hold(b, 576 * KIB)  # type: ignore[arg-type]  # exactly the capacity
    assert budget.used == 1 * MIB


def test_release_gives_back_once_and_close_gives_back_the_rest() -> None:
    budget, one = ledger(1 * MIB, allowance=64 * KIB)
    other = budget.ledger()
    a, b, c = Msg(), Msg(), Msg()
    assert one.hold(a, 300 * KIB)
    assert one.hold(b, 200 * KIB)
    assert other.hold(c, 100 * KIB)  # type: ignore[arg-type]
    assert budget.used == (500 - 64) * KIB + (100 - 64) * KIB
    one.release(a)  # type: ignore[arg-type]
    one.release(a)  # type: ignore[arg-type]  # twice: the second gives back nothing
    assert (budget.used, budget.held) == ((200 - 64) * KIB + 36 * KIB, 300 * KIB)
    one.close()
    one.close()
    assert (budget.used, budget.held) == (36 * KIB, 100 * KIB)  # the other ledger's only
    assert not one.hold(Msg(), 1)  # type: ignore[arg-type]  # a closed connection holds nothing new
    one.release(b)  # type: ignore[arg-type]  # after close: nothing more given back
    assert (budget.used, budget.held) == (36 * KIB, 100 * KIB)
    other.release(c)  # type: ignore[arg-type]
    assert (budget.used, budget.held) == (0, 0)


# -- on connections ----------------------------------------------------------------------------
LIMITS = Limits(max_body_bytes=1 * MIB, max_connection_bytes=2 * MIB, body_timeout_s=5.0)


class App:
    """/nowhere: 404 on the head; else 200 at once, or (``later``) when the test answers."""

    def __init__(self, later: bool = False) -> None:
        self.later = later
        self.waiting: list[Request] = []

    def route(self, request: Request) -> Route:
        if request.path == "/nowhere":
            raise HTTPError("no such route", status=404, code="not_found")
        if self.later:
            return Route(self.waiting.append)
        return Route(lambda _r: Reply(200, b"ok", []))


def server(limits: Limits = LIMITS, app: App | None = None) -> tuple[HTTPServer, Clock]:
    clock = Clock()
    return HTTPServer(app or App(), limits, loop=clock), clock  # type: ignore[arg-type]


def connect(srv: HTTPServer) -> tuple[HTTPConnection, Transport]:
    conn = srv.protocol()
    transport = Transport()
    transport.protocol = conn
    conn.connection_made(transport)  # type: ignore[arg-type]
    return conn, transport


def post(size: int, chunked: bool = False) -> bytes:
    if chunked:
        return b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
    return b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % size


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def answers(transport: Transport) -> list[tuple[int, bytes]]:
    """(status, body) of each answer written (bodies here are short)."""
    out, data = [], transport.written
    while data:
        head, _, data = data.partition(b"\r\n\r\n")
        size = int(re.search(rb"Content-Length: (\d+)", head).group(1))  # type: ignore[union-attr]
        out.append((int(head[9:12]), data[:size]))
        data = data[size:]
    return out


def lost(conn: HTTPConnection) -> None:
    conn.connection_lost(None)


def test_a_declared_body_is_held_from_its_head_and_given_back_with_its_answer() -> None:
    srv, clock = server()
    conn, transport = connect(srv)
    receive(conn, clock, post(MIB) + b"a" * KIB)
    assert srv.budget.held == MIB
    assert srv.budget.used == MIB - 64 * KIB
    receive(conn, clock, b"a" * (MIB - KIB))
    assert [s for s, _ in answers(transport)] == [200]
    assert (srv.budget.used, srv.budget.held) == (0, 0)


def test_a_declared_body_that_does_not_fit_gets_503_busy_and_the_connection_goes_on() -> None:
    srv, clock = server()
    holder, _ = connect(srv)
    receive(holder, clock, post(MIB) + b"a")
    receive(connect(srv)[0], clock, post(MIB) + b"a")
    used = srv.budget.used
    assert used == 2 * (MIB - 64 * KIB)
    conn, transport = connect(srv)
    receive(conn, clock, post(200 * KIB))
    [(code, body)] = answers(transport)
    assert code == 503
    assert json.loads(body)["code"] == "busy"
    assert b"Retry-After: 1" in transport.written
    assert srv.budget.used == used  # nothing taken for it
    receive(conn, clock, b"a" * 200 * KIB)  # its body: read and dropped
    receive(conn, clock, post(KIB) + b"b" * KIB)  # within the connection's allowance: fits
    assert [s for s, _ in answers(transport)] == [503, 200]
    lost(holder)
    assert srv.budget.used == MIB - 64 * KIB


def test_a_chunked_body_is_held_as_it_grows_and_refused_busy_when_the_budget_is_gone() -> None:
    srv, clock = server(Limits(max_body_bytes=2 * MIB, max_connection_bytes=2 * MIB))
    holder, _ = connect(srv)
    receive(holder, clock, post(MIB + 64 * KIB) + b"a")  # draws 1 MiB: 1 MiB left
    conn, transport = connect(srv)
    receive(conn, clock, post(0, chunked=True) + chunk(b"c" * 512 * KIB))
    assert srv.budget.used == MIB + (512 - 64) * KIB
    assert answers(transport) == []
    receive(conn, clock, chunk(b"c" * 700 * KIB))  # 1212 KiB: 124 KiB too many
    [(code, body)] = answers(transport)
    assert code == 503
    assert json.loads(body)["code"] == "busy"
    assert srv.budget.used == MIB  # its part given back at once
    receive(conn, clock, chunk(b"c" * 100 * KIB) + b"0\r\n\r\n")  # dropped, then the next request
    receive(conn, clock, post(10) + b"0123456789")
    assert [s for s, _ in answers(transport)] == [503, 200]
    lost(conn)
    lost(holder)
    assert (srv.budget.used, srv.budget.held) == (0, 0)


def everything_given_back(srv: HTTPServer) -> None:
    assert (srv.budget.used, srv.budget.held) == (0, 0)
    assert all(c.bodies.held == 0 for c in srv.connections)


@pytest.mark.parametrize(
    "ending",
    [
        "client leaves in the body",
        "body timeout",
        "chunked body too large",
        "refused on its head",
        "malformed chunk",
        "pipelined then client leaves",
        "answered later, client leaves first",
        "answered later",
    ],
)
def test_every_way_a_request_ends_gives_back_what_it_held(ending: str) -> None:
    later = App(later=True)
    srv, clock = server(app=later if "later" in ending else None)
    conn, transport = connect(srv)
    if ending == "client leaves in the body":
        receive(conn, clock, post(MIB) + b"a" * 300 * KIB)
        assert srv.budget.held == MIB
        lost(conn)
    elif ending == "body timeout":
        receive(conn, clock, post(MIB) + b"a" * 300 * KIB)
        sweep(srv, clock, 6.0)
        assert answers(transport)[0][0] == 408
        everything_given_back(srv)  # before the connection is gone
        lost(conn)
    elif ending == "chunked body too large":
        receive(conn, clock, post(0, chunked=True) + chunk(b"c" * 900 * KIB))
        assert srv.budget.held == 900 * KIB
        receive(conn, clock, chunk(b"c" * 200 * KIB))
        assert answers(transport)[0][0] == 413
        everything_given_back(srv)
    elif ending == "refused on its head":
        receive(conn, clock, post(MIB).replace(b"POST / ", b"POST /nowhere ") + b"a" * KIB)
        assert answers(transport)[0][0] == 404
        everything_given_back(srv)  # its body is read and dropped
        receive(conn, clock, b"a" * (MIB - KIB))
        assert srv.budget.held == 0
        lost(conn)
    elif ending == "malformed chunk":
        receive(conn, clock, post(0, chunked=True) + chunk(b"c" * 300 * KIB) + b"zz\r\n")
        assert answers(transport)[0][0] == 400
        everything_given_back(srv)
        lost(conn)
    elif ending == "pipelined then client leaves":
        srv, clock = server(app=later)
        conn, transport = connect(srv)
        receive(conn, clock, (post(300 * KIB) + b"p" * 300 * KIB) * 3)
        assert srv.budget.held >= 600 * KIB  # the one being answered and one read ahead
        lost(conn)
    elif ending == "answered later, client leaves first":
        receive(conn, clock, post(MIB) + b"a" * MIB)
        assert srv.budget.held == MIB  # handed over: held until answered
        lost(conn)
    else:
        receive(conn, clock, post(MIB) + b"a" * MIB)
        assert srv.budget.held == MIB
        later.waiting[0].respond(Reply(200, b"ok", []))
        assert answers(transport)[0][0] == 200
        everything_given_back(srv)
        lost(conn)
    everything_given_back(srv)


@pytest.mark.parametrize("why", ["too large", "busy"])
def test_a_body_refused_while_read_ahead_gives_back_at_once_not_on_its_turn(why: str) -> None:
    limits = Limits(max_body_bytes=MIB, max_connection_bytes=MIB if why == "busy" else 2 * MIB)
    later = App(later=True)
    srv, clock = server(limits, app=later)
    conn, transport = connect(srv)
    receive(conn, clock, post(10) + b"0123456789")  # waits for its answer
    size = 1100 * KIB if why == "too large" else 1000 * KIB  # busy: 936 + 136 KiB drawn > 1 MiB
    if why == "busy":
        receive(connect(srv)[0], clock, post(0, chunked=True) + chunk(b"h" * 200 * KIB))
    receive(conn, clock, post(0, chunked=True) + chunk(b"c" * size) + b"0\r\n\r\n")
    assert srv.budget.held == 10 + (200 * KIB if why == "busy" else 0)  # the read-ahead body: dropped
    later.waiting[0].respond(Reply(200, b"ok", []))
    clock.run_soon()
    assert [s for s, _ in answers(transport)] == [200, 413 if why == "too large" else 503]
