"""Exchanges with scripted containers (raw asyncio servers): re-sends, slots, outcomes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from onnxfleet.orchestrator.dispatcher import Dispatcher
from onnxfleet.orchestrator.exchange import Exchange, Forwarder
from onnxfleet.orchestrator.forward import request_bytes
from onnxfleet.orchestrator.roster import Container, Roster
from onnxfleet.orchestrator.routes import ContainerSpec, QueueSpec
from tests.support import free_port

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Model-Version: 3\r\n\r\nok"

# behaviour(reader, writer, n): n counts the requests on this connection (0, 1, ...);
# return False to stop serving the connection
Behaviour = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[bool]]


async def read_request(reader: asyncio.StreamReader) -> bytes | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return head + await reader.readexactly(length)


class Scripted:
    """A fake container on loopback: counts requests, runs ``behaviour`` for each."""

    def __init__(self, behaviour: Behaviour) -> None:
        self.behaviour = behaviour
        self.port = free_port()
        self.requests: list[bytes] = []
        self.connections = 0
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> Scripted:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        n = 0
        while True:
            request = await read_request(reader)
            if request is None:
                break
            self.requests.append(request)
            if not await self.behaviour(reader, writer, n):
                break
            n += 1
        writer.close()

    def spec(self, name: str) -> ContainerSpec:
        return ContainerSpec(name, f"http://127.0.0.1:{self.port}", name, "127.0.0.1", self.port, 1)


async def answer_ok(_r: asyncio.StreamReader, writer: asyncio.StreamWriter, _n: int) -> bool:
    writer.write(OK)
    return True


def answer_after(seconds: float) -> Behaviour:
    async def behaviour(_r: asyncio.StreamReader, writer: asyncio.StreamWriter, _n: int) -> bool:
        await asyncio.sleep(seconds)
        writer.write(OK)
        return True

    return behaviour


class Fleet:
    def __init__(self, specs: list[ContainerSpec], retries: int = 2, upstream_timeout: float = 5.0) -> None:
        self.dispatcher = Dispatcher(QueueSpec(max_length=10, timeout_s=10), Roster())
        self.forwarder = Forwarder(self.dispatcher, upstream_timeout, retries)
        self.dispatcher.apply(specs, self.dispatcher.queue_spec)
        for c in self.dispatcher.containers:
            c.record_check(True, 1, 1)
        self.dispatcher.changed()

    def container(self, name: str) -> Container:
        return self.dispatcher.roster.by_name[name]

    def send(self, deadline: float | None = None) -> tuple[Exchange, asyncio.Future[Exchange]]:
        future: asyncio.Future[Exchange] = asyncio.get_running_loop().create_future()
        data = request_bytes(b"/run_model", [(b"host", b"t")], b"{}")
        ex = Exchange(data, deadline, future.set_result)
        self.dispatcher.submit(ex)
        return ex, future

    async def outcome(self, deadline: float | None = None) -> Exchange:
        _, future = self.send(deadline)
        return await asyncio.wait_for(future, 5)


def run(main: Callable[[], Awaitable[Any]]) -> None:
    asyncio.run(main())


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
    That is not a failure of the container: same container, new connection, no ejection."""

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
            assert fleet.container("a").healthy
            assert fleet.forwarder.retried == 0

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

    async def main() -> None:
        async with Scripted(answer_after(0.3)) as a:
            fleet = Fleet([a.spec("a")])
            started = time.monotonic()
            ex = await fleet.outcome(deadline=time.monotonic() + 0.05)
            assert ex.error is not None
            assert ex.error.code == "upstream_timeout"
            assert time.monotonic() - started < 0.2
            c = fleet.container("a")
            assert c.inflight == 1  # the container is still computing
            nxt, future = fleet.send()
            assert nxt.key is not None  # so the next request waits its turn
            await asyncio.wait_for(future, 5)
            assert nxt.response is not None
            assert nxt.response.status == 200
            assert time.monotonic() - started >= 0.3
            assert c.inflight == 0
            assert c.served == 2

    run(main)


def test_containers_failing_health_checks_hand_their_waiting_requests_on_but_keep_the_slot() -> None:
    async def never(_r: asyncio.StreamReader, _w: asyncio.StreamWriter, _n: int) -> bool:
        await asyncio.sleep(30)
        return False

    async def main() -> None:
        async with Scripted(never) as a, Scripted(answer_ok) as b:
            fleet = Fleet([a.spec("a"), b.spec("b")])
            fleet.dispatcher.set_draining([fleet.container("b")], True)
            ex, future = fleet.send()
            await asyncio.sleep(0.1)
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
