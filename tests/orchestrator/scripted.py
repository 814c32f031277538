"""Scripted fake containers (raw asyncio servers on loopback) and a core without HTTP front."""

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


async def until(condition: Callable[[], object], timeout: float = 5.0) -> None:
    """Wait until ``condition()`` holds (a loaded machine makes any fixed sleep too short)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.005)


async def answer_ok(_r: asyncio.StreamReader, writer: asyncio.StreamWriter, _n: int) -> bool:
    writer.write(OK)
    return True


async def never(_r: asyncio.StreamReader, _w: asyncio.StreamWriter, _n: int) -> bool:
    """Takes the request and never answers (a host that stopped)."""
    await asyncio.sleep(30)
    return False


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
        self.dispatcher.start = self.forwarder.send  # (as the model's pool wires them)
        self.dispatcher.apply(specs, self.dispatcher.queue_spec)
        for c in self.dispatcher.containers:
            c.record_check(True, 1, 1)
        self.dispatcher.changed()

    def container(self, name: str) -> Container:
        return self.dispatcher.roster.by_name[name]

    def send(self, deadline: float | None = None) -> tuple[Exchange, asyncio.Future[Exchange]]:
        future: asyncio.Future[Exchange] = asyncio.get_running_loop().create_future()
        data = request_bytes("POST", b"/run_model", [(b"host", b"t")], b"{}")
        ex = Exchange(data, deadline, future.set_result)
        self.dispatcher.submit(ex)
        return ex, future

    async def outcome(self, deadline: float | None = None) -> Exchange:
        _, future = self.send(deadline)
        return await asyncio.wait_for(future, 5)


def run(main: Callable[[], Awaitable[Any]]) -> None:
    asyncio.run(main())
