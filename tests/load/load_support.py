"""The load suite's helpers: the real CLI in a subprocess, and a stand-in fleet.

The stand-in fleet is real HTTP on loopback ports, served from a thread.

``LoadServer`` answers a request of any method like the orchestrator does (JSON body,
``X-Container``, ``X-Model-Version``, ``X-Queue-Wait-Ms``), picking the container and
version at random (seeded), and counts everything it sees so tests can compare the
client's report with the server's own counts; ``seen`` keeps every request's method, body
and headers in arrival order. Query parameters make it misbehave:

- ``delay=S``: answer after S seconds;
- ``fail_every=K``: every K-th request (by arrival) gets a 503;
- ``answers=401:unauthorized,429:rate_limited,200``: requests take these answers in turn
  (by arrival), a refusal as the error envelope ``{"error", "code"}``.

``https_url`` serves the same over TLS with a certificate of ``ca_file``'s test CA.

``drop_url`` and ``reset_url`` are raw TCP listeners that read a request and then close
the connection (FIN) or reset it (RST) without answering.
"""

from __future__ import annotations

import asyncio
import functools
import random
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from aiohttp import web

from tests.edge.pki import make_pki

CONTAINERS = ("worker-1/0", "worker-1/1", "worker-2/0", "worker-2/1", "worker-3/0")
VERSIONS = ("1", "2")


def load_cli(*args: str, timeout: float = 60, **options: Any) -> subprocess.CompletedProcess[str]:
    """The real `onnxfleet load` in a subprocess (``options`` go to ``subprocess.run``)."""
    return subprocess.run(
        [sys.executable, "-m", "onnxfleet", "load", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        **options,
    )


class LoadServer:
    def __init__(self, seed: int = 6) -> None:
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.arrived = 0  # requests received (counted before any delay)
        self.in_flight = 0
        self.max_in_flight = 0
        self.paths: Counter[str] = Counter()
        self.statuses: Counter[int] = Counter()
        self.containers: Counter[str] = Counter()
        self.versions: Counter[str] = Counter()
        self.peers: set[tuple[str, int]] = set()
        self.last_body = b""
        self.last_headers: dict[str, str] = {}
        self.seen: list[tuple[str, bytes, dict[str, str]]] = []  # (method, body, headers) by arrival
        self.raw_connections = 0
        self.pki = make_pki(Path(tempfile.mkdtemp(prefix="onnxfleet-load-pki-")))
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None
        self._raw: list[asyncio.Server] = []
        self.port = self.https_port = self.drop_port = self.reset_port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def https_url(self) -> str:
        return f"https://localhost:{self.https_port}"

    @property
    def ca_file(self) -> Path:
        return self.pki.ca_file

    @property
    def drop_url(self) -> str:
        return f"http://127.0.0.1:{self.drop_port}"

    @property
    def reset_url(self) -> str:
        return f"http://127.0.0.1:{self.reset_port}"

    def reset_counts(self) -> None:
        """Zero the counts, once the previous test's requests are gone."""
        deadline = time.monotonic() + 10
        while self.in_flight and time.monotonic() < deadline:
            time.sleep(0.05)
        with self.lock:
            self.arrived = self.in_flight = self.max_in_flight = self.raw_connections = 0
            for counter in (self.paths, self.statuses, self.containers, self.versions):
                counter.clear()
            self.peers.clear()
            self.seen.clear()

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        with self.lock:
            self.arrived += 1
            number = self.arrived
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            self.paths[request.path] += 1
            self.peers.add(request.transport.get_extra_info("peername") if request.transport else ("?", 0))
            self.last_body = body
            self.last_headers = dict(request.headers)
            self.seen.append((request.method, body, self.last_headers))
        try:
            await asyncio.sleep(float(request.query.get("delay", 0)))
            fail_every = int(request.query.get("fail_every", 0))
            answers = request.query.get("answers", "200").split(",")
            status, _, code = answers[(number - 1) % len(answers)].partition(":")
            with self.lock:
                container = self.rng.choice(CONTAINERS)
                version = self.rng.choice(VERSIONS)
                wait_ms = round(self.rng.uniform(0, 20), 3)
                status = 503 if fail_every and number % fail_every == 0 else int(status)
                self.statuses[status] += 1
                self.containers[container] += 1
                self.versions[version] += 1
            payload: dict[str, Any] = (
                {"prediction": 0, "container": container, "version": version}
                if status == 200
                else {"error": "refused by the test server", "code": code or "overloaded"}
            )
            headers = {"X-Container": container, "X-Model-Version": version, "X-Queue-Wait-Ms": str(wait_ms)}
            return web.json_response(payload, status=status, headers=headers)
        finally:
            with self.lock:
                self.in_flight -= 1

    async def _raw_client(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, rst: bool
    ) -> None:
        with self.lock:
            self.raw_connections += 1
        await reader.readuntil(b"\r\n\r\n")
        if rst:  # linger 0: close() sends RST instead of FIN
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.close()

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False, handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(self.pki.pem_file)
        secure = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=tls)
        await secure.start()
        self.https_port = secure._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        for rst in (False, True):
            server = await asyncio.start_server(functools.partial(self._raw_client, rst=rst), "127.0.0.1", 0)
            self._raw.append(server)
        self.drop_port = self._raw[0].sockets[0].getsockname()[1]
        self.reset_port = self._raw[1].sockets[0].getsockname()[1]

    async def _stop(self) -> None:
        for server in self._raw:
            server.close()
        if self._runner is not None:
            await self._runner.cleanup()

    def __enter__(self) -> LoadServer:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()
