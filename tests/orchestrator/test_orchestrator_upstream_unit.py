"""The upstream HTTP/1.1 client against a raw asyncio server: framing, errors, reuse."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from onnxfleet.orchestrator.upstream import (
    BadResponse,
    ClosedBeforeResponse,
    ConnectFailed,
    Pool,
    UpstreamTimeout,
)
from tests.support import free_port

REQUEST = b"GET /readyz HTTP/1.1\r\nHost: t\r\n\r\n"


def serve(
    answers: list[bytes | None], hold: bool = False
) -> Callable[[Callable[[Pool], Awaitable[None]]], None]:
    """Run ``check(pool)`` against a server that sends ``answers`` in turn (None: close).

    After the last answer the server closes the connection, or with ``hold`` keeps it open.
    """

    def run(check: Callable[[Pool], Awaitable[None]]) -> None:
        async def main() -> None:
            queue = list(answers)

            async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
                while queue:
                    data = await reader.read(65536)
                    if not data:
                        break
                    answer = queue.pop(0)
                    if answer is None:
                        writer.close()
                        return
                    writer.write(answer)
                    await writer.drain()
                if hold:
                    await reader.read(65536)  # until the client leaves
                writer.close()

            port = free_port()
            server = await asyncio.start_server(handle, "127.0.0.1", port)
            try:
                await check(Pool("127.0.0.1", port))
            finally:
                server.close()

        asyncio.run(main())

    return run


def test_content_length_chunked_and_keep_alive() -> None:
    async def check(pool: Pool) -> None:
        first = await pool.request(REQUEST, 2)
        assert (first.status, first.body, first.keep_alive) == (200, b"hello", True)
        assert first.header("x-model-version") == "3"
        second = await pool.request(REQUEST, 2)  # same connection, chunked body with trailers
        assert (second.status, second.body) == (503, b"abcdefg")
        assert len(pool.idle) == 1

    serve(
        [
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Model-Version: 3\r\n\r\nhello",
            b"HTTP/1.1 503 No\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"4\r\nabcd\r\n3;x=1\r\nefg\r\n0\r\nT: 1\r\n\r\n",
        ]
    )(check)


def test_body_until_close_and_interim_answers() -> None:
    async def check(pool: Pool) -> None:
        response = await pool.request(REQUEST, 2)
        assert (response.status, response.body, response.keep_alive) == (200, b"all of it", False)
        assert pool.idle == []

    serve([b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.0 200 OK\r\n\r\nall of it"])(check)


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        (None, ClosedBeforeResponse),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", BadResponse),
        (b"SMTP ready\r\n\r\n", BadResponse),
        (b"HTTP/1.1 200 OK\r\n: empty\r\n\r\n", BadResponse),
        # what the orchestrator could not pass on to its client
        (b"HTTP/1.1 700 Odd\r\nContent-Length: 0\r\n\r\n", BadResponse),
        (b"HTTP/1.1 200 OK\r\nBad(Name): x\r\nContent-Length: 0\r\n\r\n", BadResponse),
        (b"HTTP/1.1 200 OK\r\nX-Bad: a\x01b\r\nContent-Length: 0\r\n\r\n", BadResponse),
        (b"HTTP/1.1 200 OK\r\nX-A: 1\nX-B: 2\r\nContent-Length: 0\r\n\r\n", BadResponse),
    ],
)
def test_broken_answers(answer: bytes | None, error: type[Exception]) -> None:
    async def check(pool: Pool) -> None:
        with pytest.raises(error):
            await pool.request(REQUEST, 2)

    serve([answer])(check)


def test_timeout_and_refused() -> None:
    async def check(pool: Pool) -> None:
        with pytest.raises(UpstreamTimeout):
            await pool.request(REQUEST, 0.2)

    serve([b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial"], hold=True)(check)

    async def refused() -> None:
        with pytest.raises(ConnectFailed):
            await Pool("127.0.0.1", free_port()).request(REQUEST, 1)

    asyncio.run(refused())


def test_headers_are_kept_in_order_and_case() -> None:
    async def check(pool: Pool) -> None:
        response = await pool.request(REQUEST, 2)
        assert (response.status, response.body, response.keep_alive) == (201, b"{}", False)
        assert response.headers == [
            (b"Content-Type", b"application/json"),
            (b"X-Latin", b"caf\xe9"),
            (b"Connection", b"close"),
            (b"Content-Length", b"2"),
        ]
        assert response.header("x-latin") == "caf\xe9"

    serve(
        [
            b"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nX-Latin: caf\xe9\r\n"
            b"Connection: close\r\nContent-Length: 2\r\n\r\n{}"
        ]
    )(check)


def test_bytes_after_an_answer_make_the_connection_unusable() -> None:
    async def check(pool: Pool) -> None:
        response = await pool.request(REQUEST, 2)
        assert (response.status, response.body, response.keep_alive) == (200, b"ok", False)
        assert pool.idle == []

    serve([b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\n"], hold=True)(check)
