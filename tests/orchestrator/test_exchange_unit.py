"""Exchanges with scripted containers (raw asyncio servers): re-sends, slots, outcomes."""

from __future__ import annotations

import asyncio
import gc
import time

from onnxfleet.orchestrator.errors import HTTPError
from onnxfleet.orchestrator.exchange import Exchange
from onnxfleet.orchestrator.forward import request_bytes, response_headers
from onnxfleet.orchestrator.routes import ContainerSpec
from onnxfleet.orchestrator.upstream import Response
from tests.orchestrator.scripted import OK, Fleet, Scripted, answer_after, answer_ok, never, run, until
from tests.support import free_port


def test_a_request_whose_answer_had_begun_is_never_sent_again() -> None:
    async def partial(_r: asyncio.StreamReader, writer: asyncio.StreamWriter, _n: int) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
        return False  # and close

    async def main() -> None:
        async with Scripted(partial) as a, Scripted(answer_ok) as b:
            fleet = Fleet([a.spec("a"), b.spec("b")])
            ex = await fleet.outcome()
            assert ex.error is not None
            assert (ex.error.status, ex.error.code) == (502, "upstream_error")
            assert "a" in ex.error.message
            assert (len(a.requests), len(b.requests)) == (1, 0)
            assert fleet.forwarder.retried == 0
            assert fleet.container("a").healthy  # one broken answer is not a dead container

    run(main)


def test_a_reused_connection_closed_by_the_container_is_retried_on_a_fresh_one() -> None:
    """The keep-alive race: the container closes an idle connection just as it is reused.
    An empty answer like any other: sent once more (the only container: the same one, on
    a new connection), no ejection, not counted as the container's error."""

    async def close_on_second(_r: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> bool:
        if n == 0:
            writer.write(OK)
            return True
        return False  # the second request on a connection: closed without an answer

    async def main() -> None:
        async with Scripted(close_on_second) as a:
            fleet = Fleet([a.spec("a")])
            first = await fleet.outcome()
            assert first.response is not None
            assert first.response.status == 200
            second = await fleet.outcome()
            assert second.response is not None
            assert second.response.status == 200
            assert len(a.requests) == 3  # 1, then 2 on the old connection, then 2 on a new one
            assert a.connections == 2
            c = fleet.container("a")
            assert (c.healthy, c.errors, c.inflight) == (True, 0, 0)
            assert fleet.forwarder.retried == 1

    run(main)


def test_a_refused_connection_ejects_the_container_and_goes_elsewhere() -> None:
    async def main() -> None:
        async with Scripted(answer_ok) as b:
            dead = free_port()
            spec = ContainerSpec("a", f"http://127.0.0.1:{dead}", "a", "127.0.0.1", dead, 1)
            fleet = Fleet([spec, b.spec("b")])
            outcomes = [await fleet.outcome() for _ in range(3)]
            assert [ex.response.status if ex.response else None for ex in outcomes] == [200] * 3
            assert [ex.container.name if ex.container else None for ex in outcomes] == ["b"] * 3
            assert not fleet.container("a").healthy
            assert fleet.forwarder.retried == 1

    run(main)


def test_a_deadline_answers_the_client_but_the_slot_waits_for_the_container() -> None:
    """The client's deadline bounds its answer, not the container's work: the slot frees
    only when the late answer has been read, so the next request never overlaps it."""
    slow = answer_after(2.0)

    async def fast_then_slow(r: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> bool:
        if n == 0:
            writer.write(OK)
            return True
        return await slow(r, writer, n)

    async def main() -> None:
        async with Scripted(fast_then_slow) as a:
            fleet = Fleet([a.spec("a")])
            # an idle pooled connection: the request below is written at once; on a new
            # connection a loaded machine can pass the 50 ms deadline before it is sent,
            # and then (rightly) nothing is sent at all
            warm = await fleet.outcome()
            assert warm.response is not None
            started = time.monotonic()
            ex = await fleet.outcome(deadline=time.monotonic() + 0.05)
            assert ex.error is not None
            assert ex.error.code == "upstream_timeout"
            assert time.monotonic() - started < 1  # not the 2 s the container takes
            c = fleet.container("a")
            assert c.inflight == 1  # the container is still computing
            nxt, future = fleet.send()
            assert nxt.key is not None  # so the next request waits its turn
            await asyncio.wait_for(future, 5)
            assert nxt.response is not None
            assert nxt.response.status == 200
            assert time.monotonic() - started >= 1.0
            assert c.inflight == 0
            assert c.served == 3  # the warm-up, the late answer and the next one
            assert (len(a.requests), a.connections) == (3, 1)

    run(main)


def test_containers_failing_health_checks_hand_their_waiting_requests_on_but_keep_the_slot() -> None:
    async def main() -> None:
        async with Scripted(never) as a, Scripted(answer_ok) as b:
            fleet = Fleet([a.spec("a"), b.spec("b")])
            fleet.dispatcher.set_draining([fleet.container("b")], True)
            ex, future = fleet.send()
            await until(lambda: len(a.requests) == 1)
            assert ex.container is fleet.container("a")
            assert len(a.requests) == 1
            fleet.dispatcher.set_draining([fleet.container("b")], False)
            c = fleet.container("a")
            assert c.record_check(False, 1, 1, "gone")
            fleet.forwarder.abandon(c, "a failed its health checks")
            fleet.dispatcher.changed()
            await asyncio.wait_for(future, 5)
            assert ex.response is not None
            assert ex.container is fleet.container("b")
            assert c.endpoint.inflight == 1  # held until a answers or its connection closes
            assert fleet.forwarder.retried == 1

    run(main)


def test_the_upstream_timeout_closes_the_connection_and_frees_the_slot() -> None:
    async def main() -> None:
        async with Scripted(answer_after(5)) as a:
            fleet = Fleet([a.spec("a")], upstream_timeout=0.1)
            ex = await fleet.outcome()
            assert ex.error is not None
            assert (ex.error.status, ex.error.code) == (504, "upstream_timeout")
            assert fleet.container("a").inflight == 0
            assert fleet.container("a").healthy

    run(main)


def test_the_clients_credentials_are_not_forwarded() -> None:
    data = request_bytes(
        "POST",
        b"/v2/models/m/infer",
        [
            (b"host", b"h"),
            (b"authorization", b"Bearer s3cret"),
            (b"x-request-id", b"7"),
            (b"connection", b"x"),
        ],
        b"{}",
    )
    head = data.split(b"\r\n\r\n")[0].lower()
    assert b"s3cret" not in data
    assert b"authorization" not in head
    assert head.startswith(b"post /v2/models/m/infer http/1.1\r\n")
    assert b"x-request-id: 7" in head
    assert b"connection" not in head
    assert b"content-length: 2" in head


def test_answers_are_counted_per_container() -> None:
    async def fail(_r: asyncio.StreamReader, writer: asyncio.StreamWriter, _n: int) -> bool:
        writer.write(b"HTTP/1.1 500 Failed\r\nContent-Length: 0\r\n\r\n")
        return True

    async def main() -> None:
        async with Scripted(answer_ok) as a, Scripted(fail) as b:
            fleet = Fleet([a.spec("a"), b.spec("b")])
            outcomes = [await fleet.outcome() for _ in range(4)]  # two to each (round-robin)
            assert sorted(ex.response.status for ex in outcomes if ex.response) == [200, 200, 500, 500]
            ca, cb = fleet.container("a"), fleet.container("b")
            assert (ca.served, ca.errors, ca.model_version) == (2, 0, "3")
            assert (cb.served, cb.errors, cb.model_version) == (2, 2, None)
            assert cb.healthy  # a 5xx answer is the container's own, not a dead container
            assert 0 < fleet.dispatcher.service_ewma_s < 1
            assert not ca.endpoint.sending
            assert not cb.endpoint.sending
            assert all(ex.data == b"" for ex in outcomes)  # the request bytes are dropped
            assert len(ca.endpoint.pool.idle) == 1  # the keep-alive connection is kept

    run(main)


def test_when_no_container_can_be_reached_the_request_fails_after_its_resends() -> None:
    async def main() -> None:
        specs = []
        for name in ("a", "b"):
            port = free_port()
            specs.append(ContainerSpec(name, f"http://127.0.0.1:{port}", name, "127.0.0.1", port, 1))
        fleet = Fleet(specs, retries=1)
        ex = await fleet.outcome()
        assert ex.error is not None
        assert (ex.error.status, ex.error.code, ex.attempts) == (502, "upstream_unreachable", 1)
        assert ex.error.message.startswith("no container could be reached: ")
        assert ": connect to 127.0.0.1:" in ex.error.message
        assert ex.error.message.endswith("(after 1 re-sends)")
        assert fleet.container("a").last_error.startswith("connect to 127.0.0.1:")
        assert ex.error.extra == {"container": ex.container.name if ex.container else None}
        assert fleet.forwarder.retried == 1
        # one request ejects one container at most: the other is left to its health checks
        assert [c.healthy for c in fleet.dispatcher.containers].count(False) == 1
        assert all(c.errors == 1 and c.last_error for c in fleet.dispatcher.containers)
        await asyncio.sleep(0)  # the done callbacks of the connection tasks
        assert not fleet.forwarder.connecting  # the connection attempts are over

    run(main)


def test_the_deadline_message_and_a_client_gone_before_the_connection_is_made() -> None:
    async def main() -> None:
        async with Scripted(answer_after(0.2)) as a:
            fleet = Fleet([a.spec("a")])
            ex, future = fleet.send(deadline=time.monotonic() + 0.05)
            connecting = set(fleet.forwarder.connecting)
            assert len(connecting) == 1  # no idle connection yet: one is opened
            ex.abandon()  # its client leaves while the connection is being made
            await asyncio.wait(connecting, timeout=5)
            await asyncio.sleep(0.05)  # time for the container to read anything sent
            c = fleet.container("a")
            assert not a.requests  # nothing was sent
            assert c.inflight == 0  # and the slot is free again
            assert len(c.endpoint.pool.idle) == 1  # the new connection is kept for the next
            assert not future.done()
            ex = await fleet.outcome(deadline=time.monotonic() + 0.05)
            assert ex.error is not None
            assert ex.error.message == "a gave no answer before the request deadline (X-Request-Timeout-Ms)"

    run(main)


def test_a_malformed_answer_is_counted_and_ends_the_request() -> None:
    async def garbage(_r: asyncio.StreamReader, writer: asyncio.StreamWriter, _n: int) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nBad Header\r\n\r\n")
        return True

    async def main() -> None:
        async with Scripted(garbage) as a, Scripted(answer_ok) as b:
            fleet = Fleet([a.spec("a"), b.spec("b")])
            fleet.dispatcher.set_draining([fleet.container("b")], True)
            ex = await fleet.outcome()
            assert ex.error is not None
            assert ex.error.message == "a sent a malformed or incomplete answer"
            assert ex.error.extra == {"container": "a"}
            c = fleet.container("a")
            assert (c.errors, c.inflight, c.healthy) == (1, 0, True)
            assert c.last_error is not None
            assert c.last_error.startswith("malformed answer")
            assert len(b.requests) == 0

    run(main)


def test_abandon_moves_only_the_requests_of_that_container_still_without_an_answer_byte() -> None:
    async def slow_start(_r: asyncio.StreamReader, writer: asyncio.StreamWriter, _n: int) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n")  # the head now
        await asyncio.sleep(0.2)
        writer.write(b"ok")  # the body later
        return True

    async def main() -> None:
        async with Scripted(slow_start) as a, Scripted(answer_ok) as b:
            fleet = Fleet([a.spec("a"), b.spec("b")])
            fleet.dispatcher.set_draining([fleet.container("b")], True)
            _, future = fleet.send()
            c = fleet.container("a")
            await until(lambda: any(not conn.waiting_first_byte for conn in c.endpoint.sending))
            fleet.forwarder.abandon(fleet.container("b"), "not b's request")
            fleet.forwarder.abandon(c, "its answer had begun")
            done = await asyncio.wait_for(future, 2)
            assert done.response is not None
            assert done.container is c  # its answer had begun: it stayed
            assert fleet.forwarder.retried == 0
            assert len(b.requests) == 0

    run(main)


def test_the_request_bytes_sent_to_a_container() -> None:
    assert request_bytes("POST", b"/run_model", [(b"x-a", b"1")], b"{}") == (
        b"POST /run_model HTTP/1.1\r\nx-a: 1\r\nHost: onnxfleet\r\nContent-Length: 2\r\n\r\n{}"
    )
    with_host = request_bytes(
        "GET", b"/p", [(b"host", b"h:1"), (b"content-length", b"9"), (b"expect", b"x")], b""
    )
    assert with_host == b"GET /p HTTP/1.1\r\nhost: h:1\r\nContent-Length: 0\r\n\r\n"


def test_the_answer_headers_passed_back() -> None:
    response = Response(
        200,
        [
            (b"Content-Type", b"application/json"),
            (b"Connection", b"keep-alive"),
            (b"Transfer-Encoding", b"chunked"),
            (b"X-Container", b"spoofed"),
            (b"X-Model-Version", b"2"),
        ],
        b"",
        True,
    )
    assert response_headers(response) == [(b"Content-Type", b"application/json"), (b"X-Model-Version", b"2")]


def test_a_finished_or_abandoned_exchange_leaves_no_reference_cycle() -> None:
    """The request path must be freed by reference counting: a cycle per request made the
    cyclic collector pause the event loop for tens of milliseconds (docs/orchestrator.md)."""

    class Client:  # holds its exchange, whose callback holds the client (as app.infer does)
        ex: Exchange | None = None

    for end in ("finish", "abandon"):
        gc.collect()
        gc.disable()
        try:
            client = Client()
            client.ex = Exchange(b"data", None, lambda _ex, client=client: None)
            if end == "finish":
                client.ex.finish(None, HTTPError("x"))
            else:
                client.ex.abandon()
            assert client.ex.data == b""
            del client
            assert gc.collect() == 0, f"{end}: the exchange is only freed by the cyclic GC"
        finally:
            gc.enable()


def test_re_sends_are_counted_per_request() -> None:
    async def main() -> None:
        specs = []
        for name in ("a", "b", "c"):
            port = free_port()
            specs.append(ContainerSpec(name, f"http://127.0.0.1:{port}", name, "127.0.0.1", port, 1))
        fleet = Fleet(specs, retries=2)
        ex = await fleet.outcome()
        assert (ex.attempts, fleet.forwarder.retried) == (2, 2)
        assert sum(c.errors for c in fleet.dispatcher.containers) == 3

    run(main)


def test_a_malformed_answer_on_a_reused_connection_is_not_sent_again() -> None:
    async def second_is_garbage(_r: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> bool:
        writer.write(OK if n == 0 else b"HTTP/1.1 200 OK\r\nBad Header\r\n\r\n")
        return True

    async def main() -> None:
        async with Scripted(second_is_garbage) as a:
            fleet = Fleet([a.spec("a")], upstream_timeout=0.2)
            assert (await fleet.outcome()).response is not None
            ex = await fleet.outcome()
            assert ex.error is not None
            assert ex.error.code == "upstream_error"
            assert len(a.requests) == 2
            assert a.connections == 1
            fresh = await Fleet([a.spec("a")], upstream_timeout=0.2).outcome()
            assert fresh.error is None  # a new connection: its first answer is fine

    run(main)


def test_the_upstream_timeout_message() -> None:
    async def main() -> None:
        async with Scripted(answer_after(1)) as a:
            ex = await Fleet([a.spec("a")], upstream_timeout=0.1).outcome()
            assert ex.error is not None
            assert ex.error.message == "a gave no answer within 0.1s"

    run(main)


def test_requests_on_a_reused_connection_are_handed_on_when_their_container_fails() -> None:
    async def first_only(_r: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> bool:
        if n == 0:
            writer.write(OK)
        else:
            await asyncio.sleep(30)  # then silent, like a host that stopped
        return True

    async def main() -> None:
        async with Scripted(first_only) as a, Scripted(answer_ok) as b:
            fleet = Fleet([a.spec("a"), b.spec("b")])
            fleet.dispatcher.set_draining([fleet.container("b")], True)
            assert (await fleet.outcome()).response is not None  # a's connection is now pooled
            _, future = fleet.send()
            await until(lambda: len(a.requests) == 2)
            fleet.dispatcher.set_draining([fleet.container("b")], False)
            c = fleet.container("a")
            c.record_check(False, 1, 1, "gone")
            fleet.forwarder.abandon(c, "a failed its health checks")
            done = await asyncio.wait_for(future, 2)
            assert done.container is fleet.container("b")
            assert a.connections == 1  # the request went on the reused connection, and was moved

    run(main)


async def close(_r: asyncio.StreamReader, _w: asyncio.StreamWriter, _n: int) -> bool:
    """Reads the request and closes the connection without an answer (a crash)."""
    return False


def test_a_request_a_container_closed_on_goes_once_more_to_another_and_ejects_nobody() -> None:
    """HAProxy's retry-on empty-response + option redispatch: no answer byte, so sent once
    more, to another container; the one that closed stays in service (health checks decide)."""

    async def main() -> None:
        async with Scripted(close) as a, Scripted(answer_ok) as b:
            fleet = Fleet([a.spec("a"), b.spec("b")])
            ex = await fleet.outcome()  # a first: the least loaded, first in the table
            assert ex.response is not None
            assert ex.response.status == 200
            assert ex.container is fleet.container("b")
            assert (len(a.requests), len(b.requests), ex.attempts, fleet.forwarder.retried) == (1, 1, 1, 1)
            c = fleet.container("a")
            assert (c.healthy, c.errors, c.inflight) == (True, 1, 0)
            assert c.last_error == "connection closed before any answer (EOF)"

    run(main)


def test_a_request_closed_on_twice_gets_502_after_two_sends() -> None:
    """A request after which every container closes (a poison request) runs twice, not
    more: 502, nobody ejected. With one container in service, the second send goes to
    the same one on a fresh connection."""

    async def main() -> None:
        async with Scripted(close) as a, Scripted(close) as b, Scripted(close) as c3:
            fleet = Fleet([a.spec("a"), b.spec("b"), c3.spec("c")], retries=5)
            ex = await fleet.outcome()
            assert ex.error is not None
            assert (ex.error.status, ex.error.code) == (502, "upstream_error")
            assert ex.error.message == "b closed the connection without an answer"
            assert ex.error.extra == {"container": "b"}
            assert [len(s.requests) for s in (a, b, c3)] == [1, 1, 0]
            assert all(c.healthy for c in fleet.dispatcher.containers)
            assert fleet.forwarder.retried == 1
        async with Scripted(close) as a, Scripted(answer_ok) as b:
            fleet = Fleet([a.spec("a"), b.spec("b")])
            fleet.dispatcher.set_draining([fleet.container("b")], True)
            for _ in range(2):
                ex = await fleet.outcome()
                assert ex.error is not None
                assert (ex.error.status, ex.error.code) == (502, "upstream_error")
                assert ex.error.message == "a closed the connection without an answer"
            c = fleet.container("a")
            assert (c.errors, c.healthy, c.inflight) == (4, True, 0)
            assert (len(a.requests), a.connections, len(b.requests), fleet.forwarder.retried) == (4, 4, 0, 2)
        async with Scripted(close) as a:
            fleet = Fleet([a.spec("a")], retries=0)  # --retries 0: no re-send of any kind
            ex = await fleet.outcome()
            assert ex.error is not None
            assert ex.error.code == "upstream_error"
            assert len(a.requests) == 1

    run(main)


def test_a_container_that_closes_once_answers_the_request_sent_again() -> None:
    """The same container (the only one) after a reconnect, on a fresh connection."""
    closed: list[int] = []

    async def close_once(_r: asyncio.StreamReader, writer: asyncio.StreamWriter, _n: int) -> bool:
        if not closed:
            closed.append(1)
            return False
        writer.write(OK)
        return True

    async def main() -> None:
        async with Scripted(close_once) as a:
            fleet = Fleet([a.spec("a")])
            ex = await fleet.outcome()
            assert ex.response is not None
            assert ex.response.status == 200
            assert (len(a.requests), a.connections, ex.attempts) == (2, 2, 1)
            assert fleet.container("a").healthy

    run(main)


def test_the_request_sent_again_waits_for_another_containers_slot() -> None:
    """While another container is in service, the re-send never goes back to the address
    that closed on it: it waits at the head of the queue for another slot, and the next
    request takes the free slot meanwhile. A second container of its node comes after
    every container of another node."""

    async def main() -> None:
        async with Scripted(close) as a, Scripted(answer_after(0.2)) as b:
            fleet = Fleet([a.spec("a"), b.spec("b")])
            _, busy_done = fleet.send()  # to a (first in the table): closes
            await asyncio.sleep(0)
            _, other_done = fleet.send()  # to b, which takes 0.2 s
            started = time.monotonic()
            done = await asyncio.wait_for(busy_done, 5)
            assert done.response is not None
            assert done.container is fleet.container("b")
            assert time.monotonic() - started >= 0.15  # it waited for b's slot
            assert (await asyncio.wait_for(other_done, 5)).response is not None
            assert len(a.requests) == 1

    run(main)


def test_a_request_handed_on_goes_first_or_fails_with_the_reason() -> None:
    async def main() -> None:
        async with Scripted(never) as a, Scripted(answer_after(0.5)) as b:
            fleet = Fleet([a.spec("a"), b.spec("b")])
            first, first_done = fleet.send()  # to a (never answers)
            busy, _ = fleet.send()  # to b
            queued, _ = fleet.send()  # waits
            await until(lambda: (len(a.requests), len(b.requests)) == (1, 1))
            assert (first.container, busy.container) == (fleet.container("a"), fleet.container("b"))
            assert queued.key is not None
            first.waited = 0.5  # as if it had waited before
            c = fleet.container("a")
            c.record_check(False, 1, 1, "gone")
            fleet.forwarder.abandon(c, "a failed its health checks")
            assert fleet.dispatcher.position(first) == 0  # re-sent: ahead of the one that waits
            done = await asyncio.wait_for(first_done, 2)
            assert done.container is fleet.container("b")
            assert done.waited > 0.5  # the earlier wait still counts

        async with Scripted(never) as a:
            fleet = Fleet([a.spec("a")], retries=0)
            _, lost_done = fleet.send()
            await until(lambda: len(a.requests) == 1)
            c = fleet.container("a")
            c.record_check(False, 1, 1, "gone")
            fleet.forwarder.abandon(c, "a failed its health checks")
            done = await asyncio.wait_for(lost_done, 2)
            assert done.error is not None
            assert (
                done.error.message
                == "no container could be reached: a: a failed its health checks (after 0 re-sends)"
            )

        async with Scripted(never) as a:
            fleet = Fleet([a.spec("a")], retries=1)
            _, alone_done = fleet.send()
            await until(lambda: len(a.requests) == 1)
            c = fleet.container("a")
            c.record_check(False, 1, 1, "gone")
            fleet.forwarder.abandon(c, "gone")  # re-sent, but nothing accepts: refused at once
            done = await asyncio.wait_for(alone_done, 2)
            assert done.error is not None
            assert (done.error.code, done.attempts) == ("no_ready_container", 1)

    run(main)
