"""The orchestrator process's life: start serving on given sockets, stop without losing requests."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from typing import Any

from onnxfleet.orchestrator.app import Orchestrator
from onnxfleet.orchestrator.limits import BodyBudget, Limits
from onnxfleet.orchestrator.routes import RoutingTable
from onnxfleet.orchestrator.server import HTTPServer
from onnxfleet.orchestrator.settings import Settings
from onnxfleet.orchestrator.tokens import Tokens

log = logging.getLogger("onnxfleet.orchestrator")


class Service:
    def __init__(
        self, settings: Settings, table: RoutingTable, limits: Limits, tokens: Tokens | None = None
    ) -> None:
        self.settings = settings
        self.table = table
        self.limits = limits
        self.tokens = tokens
        self.orchestrator: Orchestrator | None = None
        self.servers: list[HTTPServer] = []

    async def start(self, api: Iterable[Any], admin: Iterable[Any] = ()) -> None:
        """Serve the API on the ``api`` sockets and the admin API on the ``admin`` ones."""
        budget = BodyBudget(self.limits.max_connection_bytes)
        orchestrator = self.orchestrator = Orchestrator(self.settings, self.table, self.tokens, budget)
        await orchestrator.start()
        server = HTTPServer(orchestrator.api_router, self.limits, budget=budget)
        await server.listen(api)
        self.servers.append(server)
        if orchestrator.admin_router is not orchestrator.api_router:
            server = HTTPServer(orchestrator.admin_router, self.limits, budget=budget)
            await server.listen(admin)
            self.servers.append(server)
        log.info("orchestrator started", extra={"containers": len(self.table.containers)})

    def _quiet(self) -> bool:
        assert self.orchestrator is not None
        return self.orchestrator.idle() and not any(server.connections for server in self.servers)

    async def stop(self, grace_s: float) -> None:
        """Stop accepting; let the queue and the requests in flight finish for ``grace_s``.

        What still waits then gets 503 ``shutting_down``.
        """
        orchestrator = self.orchestrator
        if orchestrator is None:
            return
        log.info("stopping: no new connections, finishing the queue and the requests in flight")
        for server in self.servers:
            server.stop_accepting()
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and not self._quiet():
            await asyncio.sleep(0.05)
        orchestrator.fail_queue()
        for server in self.servers:
            server.fail_active()
        await orchestrator.stop()
        for server in self.servers:
            server.close()
        log.info("orchestrator stopped")
