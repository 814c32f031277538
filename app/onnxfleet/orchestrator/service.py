"""The orchestrator process's life: start serving on given sockets, stop without losing requests."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from typing import Any

from onnxfleet.orchestrator.app import Orchestrator, Settings
from onnxfleet.orchestrator.routes import RoutingTable
from onnxfleet.orchestrator.server import HTTPServer, Limits

log = logging.getLogger("onnxfleet.orchestrator")


class Service:
    def __init__(self, settings: Settings, table: RoutingTable, limits: Limits) -> None:
        self.settings = settings
        self.table = table
        self.limits = limits
        self.orchestrator: Orchestrator | None = None
        self.server: HTTPServer | None = None

    async def start(self, sockets: Iterable[Any]) -> None:
        self.orchestrator = Orchestrator(self.settings, self.table)
        await self.orchestrator.start()
        self.server = HTTPServer(self.orchestrator, self.limits)
        await self.server.listen(sockets)
        log.info("orchestrator started", extra={"containers": len(self.table.containers)})

    async def stop(self, grace_s: float) -> None:
        """Stop accepting; let the queue and the requests in flight finish for ``grace_s``.

        What still waits then gets 503 ``shutting_down``.
        """
        orchestrator, server = self.orchestrator, self.server
        if orchestrator is None or server is None:
            return
        log.info("stopping: no new connections, finishing the queue and the requests in flight")
        server.stop_accepting()
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and not (orchestrator.idle() and not server.connections):
            await asyncio.sleep(0.05)
        orchestrator.fail_queue()
        server.fail_active()
        await orchestrator.stop()
        server.close()
        log.info("orchestrator stopped")
