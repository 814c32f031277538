"""Active readiness checks: ``GET <health.path>`` on every container, on its own connection.

The checks never share a connection or a slot with inference, so a container whose slots
are all busy is still seen alive (busy is not dead). Each answer's ``X-Model-Version`` is
the version the container serves now (a container restarted with another version says so
at its next check): requests pinned to a version go by it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from onnxfleet.orchestrator.dispatcher import Dispatcher
from onnxfleet.orchestrator.exchange import Forwarder
from onnxfleet.orchestrator.roster import Container
from onnxfleet.orchestrator.settings import HealthSpec
from onnxfleet.orchestrator.upstream import Pool, UpstreamError

log = logging.getLogger("onnxfleet.orchestrator.health")


class HealthChecker:
    def __init__(self, dispatcher: Dispatcher, forwarder: Forwarder, spec: HealthSpec) -> None:
        self.dispatcher = dispatcher
        self.forwarder = forwarder
        self.spec = spec
        self.tasks: dict[Container, asyncio.Task[None]] = {}

    def sync(self, spec: HealthSpec | None = None) -> None:
        """Start checks for new containers; restart them all when the settings changed."""
        if spec is not None and spec != self.spec:
            self.spec = spec
            for task in self.tasks.values():
                task.cancel()
            self.tasks.clear()
        for c in self.dispatcher.containers:
            if c not in self.tasks:
                self.tasks[c] = asyncio.get_running_loop().create_task(self._loop(c))

    def record(self, c: Container, error: str | None, version: str | None = None) -> None:
        """One check result (None: passed) and the version it named; a change of state or
        of version reaches the queue at once."""
        if version is not None and version != c.model_version:
            c.model_version = version
            log.info("container %s serves version %s", c.name, version)  # pragma: no mutate
            if not c.record_check(error is None, self.spec.rise, self.spec.fall, error):
                self.dispatcher.changed()
                return
        elif not c.record_check(error is None, self.spec.rise, self.spec.fall, error):
            return
        # pragma: no mutate start (log text)
        log.info(
            "container %s is %s",
            c.name,
            "up" if c.healthy else "down",
            extra={"container": c.name, "error": error},
        )
        # pragma: no mutate end
        if not c.healthy:
            self.forwarder.abandon(c, f"{c.name} failed its health checks before answering ({error})")
        self.dispatcher.changed()

    async def _loop(self, c: Container) -> None:
        spec = self.spec
        pool = Pool(c.spec.host, c.spec.port)
        request = f"GET {spec.path} HTTP/1.1\r\nHost: {c.spec.host}:{c.spec.port}\r\n\r\n".encode()
        try:
            while c in self.dispatcher.containers:
                error: str | None = None
                version: str | None = None
                try:
                    response = await pool.request(request, spec.timeout_s)
                    version = response.header("X-Model-Version")
                    if response.status != 200:
                        error = f"{spec.path} answered {response.status}"
                except UpstreamError as exc:
                    error = f"{spec.path}: {exc}"
                except Exception as exc:  # a bug must not stop the checks of this container
                    log.exception("health check of %s failed", c.name)  # pragma: no mutate
                    error = f"{spec.path}: {type(exc).__name__}"
                self.record(c, error, version)
                await asyncio.sleep(spec.interval_s)
        finally:
            pool.close()
            if self.tasks.get(c) is asyncio.current_task():
                del self.tasks[c]

    async def close(self) -> None:
        tasks = list(self.tasks.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
