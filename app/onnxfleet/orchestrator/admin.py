"""The admin API: reload the routing table and the tokens, drain and ready containers."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import TYPE_CHECKING, Any

from onnxfleet.orchestrator.errors import BadRequest, HTTPError, NotFound
from onnxfleet.orchestrator.pool import wait_idle
from onnxfleet.orchestrator.roster import Container
from onnxfleet.orchestrator.routes import RoutesError, load_table
from onnxfleet.orchestrator.server import Reply, Request, json_reply
from onnxfleet.orchestrator.tokens import Tokens, TokensError, load_tokens

if TYPE_CHECKING:
    from onnxfleet.orchestrator.app import Orchestrator

log = logging.getLogger("onnxfleet.orchestrator")


class Admin:
    def __init__(self, orchestrator: Orchestrator) -> None:
        self.o = orchestrator

    def reload_files(self) -> dict[str, Any]:
        """Re-read the routing table and the tokens file; raises (and keeps both) when either is bad."""
        o = self.o
        table = load_table(o.settings.routes_path, o.settings.health_defaults)
        tokens = o.tokens
        if o.settings.api_tokens_path is not None:
            tokens = Tokens(load_tokens(o.settings.api_tokens_path), o.tokens.raw_token)
        changes = o.models.apply(table, o.drains.drained)
        o.table, o.tokens = table, tokens
        log.info("routing table reloaded", extra={**changes, "api_tokens": len(tokens.hashed)})
        return {
            **changes,
            "containers": len(table.containers),
            "models": [m.name for m in table.routes()],
            "api_tokens": len(tokens.hashed),
        }

    def reload(self, _request: Request) -> Reply:
        try:
            return json_reply(self.reload_files())
        except (RoutesError, TokensError) as exc:
            raise HTTPError(
                f"{exc}; the current table and tokens are kept", status=400, code="bad_routing_table"
            ) from None

    def refresh(self) -> None:
        """Drain flags changed by another process on the same state directory: apply them."""
        if self.o.drains.refresh():
            self._apply_flags()

    def _apply_flags(self) -> None:
        drained = self.o.drains.drained
        for c in self.o.models.containers():
            if not c.removed:
                c.draining = drained(c.name, c.node)
        self.o.models.changed()

    def _selection(self, request: Request) -> tuple[dict[str, Any], str | None, list[Container]]:
        expected = 'expected a JSON object {"node": NAME} or {"container": NAME}'
        try:
            body = json.loads(request.body) if request.body else {}
        except ValueError:
            body = None
        if not isinstance(body, dict) or len({"node", "container"} & set(body)) != 1:
            raise BadRequest(expected)
        key = "node" if "node" in body else "container"
        if not isinstance(body[key], str):
            raise BadRequest(f"{key}: expected a string")
        selected = self.o.models.select(**{key: body[key]})
        if not selected:
            raise NotFound(f"no {key} named '{body[key]}' in the routing table")
        return body, body[key] if key == "node" else None, selected

    def drain(self, request: Request) -> Reply | None:
        body, node, selected = self._selection(request)
        wait = body.get("wait", False)
        timeout = body.get("timeout_s", 60)
        if not isinstance(wait, bool):
            raise BadRequest("wait: expected true or false")
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not 0 < timeout <= 86400:
            raise BadRequest("timeout_s: expected a number of seconds in (0, 86400]")
        names = [c.name for c in selected]
        self.o.drains.drain(node, names)
        self._apply_flags()
        log.info("draining %s", names, extra={"containers": names})
        if not wait:
            return self._drained(selected)
        self.o.later(request, self._wait_drained(selected, timeout))
        return None

    async def _wait_drained(self, selected: list[Container], timeout: float) -> Reply:
        try:
            await asyncio.wait_for(wait_idle(selected), timeout)
        except TimeoutError:
            in_flight = sum(c.inflight for c in selected)
            raise HTTPError(
                f"{in_flight} request(s) still in flight after {timeout}s",
                status=504,
                code="drain_timeout",
                containers=[c.name for c in selected],
                in_flight=in_flight,
            ) from None
        return self._drained(selected)

    def _drained(self, selected: list[Container]) -> Reply:
        return json_reply(
            {
                "containers": [c.name for c in selected],
                "state": "draining",
                "in_flight": sum(c.inflight for c in selected),
            }
        )

    def ready(self, request: Request) -> Reply:
        _, node, selected = self._selection(request)
        names = [c.name for c in selected]
        nodes = {c.node for c in selected}
        siblings = {n: [c.name for c in self.o.models.select(node=n)] for n in nodes}
        self.o.drains.ready(node, names, siblings)
        self._apply_flags()
        log.info("back in service: %s", names, extra={"containers": names})
        return json_reply({"containers": names, "states": {c.name: c.state for c in selected}})
