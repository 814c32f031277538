"""The orchestrator in the test process: its Service on its own event loop, in a thread.

Same command line as the real process (``onnxfleet orchestrator ...``, parsed by its own
``cli``), real sockets on loopback, no gunicorn: for tests of the HTTP layer and the core
where starting a process adds nothing. ``call_soon`` runs a function on the orchestrator's
loop (its state belongs to that thread) and returns its result.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import uvloop

from onnxfleet.orchestrator import cli
from onnxfleet.orchestrator.app import Orchestrator
from onnxfleet.orchestrator.service import Service

T = TypeVar("T")


class Records(logging.Handler):
    """Log records of the orchestrator's loggers, kept for assertions."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def errors(self) -> list[logging.LogRecord]:
        return [r for r in self.records if r.levelno >= logging.ERROR or r.exc_info]


def _listener() -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    return sock


class InProcess:
    def __init__(self, service: Service) -> None:
        self.service = service
        self.sock = _listener()
        self.port = int(self.sock.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}"
        # --admin-bind: the admin listener (else the API one serves the admin API too)
        self.admin_sock = _listener() if service.settings.admin_listener else None
        self.admin_url = self.url
        if self.admin_sock is not None:
            self.admin_url = f"http://127.0.0.1:{self.admin_sock.getsockname()[1]}"
        self.loop = uvloop.new_event_loop()
        self.records = Records()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    @property
    def orchestrator(self) -> Orchestrator:
        assert self.service.orchestrator is not None
        return self.service.orchestrator

    def run(self, work: Any, timeout: float = 30.0) -> Any:
        """Run the coroutine ``work`` on the orchestrator's loop; its result."""
        return asyncio.run_coroutine_threadsafe(work, self.loop).result(timeout)

    def call_soon(self, fn: Callable[[], T], timeout: float = 10.0) -> T:
        future: concurrent.futures.Future[T] = concurrent.futures.Future()

        def call() -> None:
            try:
                future.set_result(fn())
            except BaseException as exc:
                future.set_exception(exc)

        self.loop.call_soon_threadsafe(call)
        return future.result(timeout)

    def start(self) -> InProcess:
        self.thread.start()
        self.run(self.service.start([self.sock], [self.admin_sock] if self.admin_sock else []))
        return self

    def stop(self, grace_s: float = 5.0) -> None:
        if self.thread.is_alive():
            self.run(self.service.stop(grace_s), timeout=grace_s + 10)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
        self.loop.close()
        self.sock.close()
        if self.admin_sock is not None:
            self.admin_sock.close()


@contextmanager
def in_process(routes_file: Path, *args: str, wait_ready: bool = True) -> Iterator[InProcess]:
    """``onnxfleet orchestrator --routes FILE ARGS...`` in this process (``--bind`` and
    ``--admin-bind`` are loopback ports chosen here).

    Like the real process's tests, it is entered once a container is ready (``wait_ready``).
    """
    parser = argparse.ArgumentParser()
    cli.configure(parser)
    settings, limits, files = cli.load(parser.parse_args(["--routes", str(routes_file), *args]))
    orch = InProcess(Service(settings, files.table, limits, files.tokens))
    logger = logging.getLogger("onnxfleet")
    logger.addHandler(orch.records)
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        orch.start()
        deadline = time.monotonic() + 10
        while wait_ready and not orch.call_soon(orch.orchestrator.dispatcher.any_accepting):
            assert time.monotonic() < deadline, "no container became ready in 10 s"
            time.sleep(0.02)
        yield orch
    finally:
        orch.stop()
        logger.removeHandler(orch.records)
        logger.setLevel(level)
