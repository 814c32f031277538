"""The admin API: reload the routing table and the tokens, drain and ready containers."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

from onnxfleet.orchestrator.canary import CanarySpec
from onnxfleet.orchestrator.errors import BadRequest, HTTPError, NotFound
from onnxfleet.orchestrator.messages import Reply, Request, json_reply
from onnxfleet.orchestrator.pool import ModelPool, wait_idle
from onnxfleet.orchestrator.roster import Container
from onnxfleet.orchestrator.routes import RoutesError, load_table
from onnxfleet.orchestrator.tokens import Tokens, TokensError, load_tokens

if TYPE_CHECKING:
    from onnxfleet.orchestrator.guards import Guards
    from onnxfleet.orchestrator.pool import Models
    from onnxfleet.orchestrator.settings import Settings
    from onnxfleet.orchestrator.state import DrainState

# answers a request when the work is done (Orchestrator.later)
Later = Callable[[Request, Coroutine[Any, Any, Reply]], None]

log = logging.getLogger("onnxfleet.orchestrator")


class Admin:
    """The admin API's handlers: it changes the pools (``Models``), the drain flags and,
    through the guards, the client tokens; nothing else."""

    def __init__(
        self, settings: Settings, models: Models, drains: DrainState, guards: Guards, later: Later
    ) -> None:
        self.settings = settings
        self.models = models
        self.drains = drains
        self.guards = guards
        self.later = later

    def reload_files(self) -> dict[str, Any]:
        """Re-read the routing table and the tokens file; raises (and keeps both) when either is bad."""
        settings = self.settings
        table = load_table(settings.routes_path, settings.health_defaults)
        tokens = self.guards.tokens
        if settings.api_tokens_path is not None:
            tokens = Tokens(load_tokens(settings.api_tokens_path), tokens.raw_token)
        changes = self.models.apply(table, self.drains.drained)
        self.guards.use_tokens(tokens)
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
        if self.drains.refresh():
            self._apply_flags()

    def _apply_flags(self) -> None:
        drained = self.drains.drained
        for c in self.models.containers():
            if not c.removed:
                c.draining = drained(c.name, c.node)
        self.models.changed()

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
        selected = self.models.select(**{key: body[key]})
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
        self.drains.drain(node, names)
        self._apply_flags()
        log.info("draining %s", names, extra={"containers": names})
        if not wait:
            return self._drained(selected)
        self.later(request, self._wait_drained(selected, timeout))
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
        siblings = {n: [c.name for c in self.models.select(node=n)] for n in nodes}
        self.drains.ready(node, names, siblings)
        self._apply_flags()
        log.info("back in service: %s", names, extra={"containers": names})
        return json_reply({"containers": names, "states": {c.name: c.state for c in selected}})

    # -- canary ---------------------------------------------------------------------------
    def _pool(self, name: object) -> ModelPool:
        models = self.models
        if name is None:
            return models.default
        pool = models.pools.get(name) if isinstance(name, str) else None
        if pool is None:
            raise NotFound(
                f"model: no model {name!r} is served here: expected one of {list(models.pools)}",
                code="model_not_found",
            )
        return pool

    def _asked_pool(self, request: Request) -> ModelPool:
        """``?model=NAME`` (the default model without it)."""
        _, _, query = request.url.partition(b"?")
        names = [v for k, v in parse_qsl(query.decode("latin-1"), keep_blank_values=True) if k == "model"]
        if len(names) > 1:
            raise BadRequest("?model= is given twice: expected it once")
        return self._pool(names[0] if names else None)

    def start_canary(self, request: Request) -> Reply:
        """Send a share of a model's requests to one of its versions, judged on their answers."""
        try:
            body = json.loads(request.body) if request.body else None
            spec = CanarySpec.from_json(body)
        except ValueError as exc:
            raise BadRequest(str(exc)) from None
        assert isinstance(body, dict)
        pool = self._pool(body.get("model"))
        served = pool.versions()
        if spec.version not in served:
            raise NotFound(
                f"version: model {pool.name!r} has no container serving version {spec.version!r}: "
                f"expected one of {list(served)}",
                code="version_not_found",
                versions=list(served),
            )
        if pool.baseline_version(spec.version) is None:
            raise HTTPError(
                f"version: every ready container of model {pool.name!r} serves version "
                f"{spec.version!r}: a canary needs another version to be judged against",
                status=409,
                code="no_baseline",
            )
        now = time.monotonic()
        if pool.canary is not None and pool.canary.verdict(now) is None:
            raise HTTPError(
                f"model {pool.name!r} has a canary of version {pool.canary.spec.version!r} "
                "being judged: end it first (DELETE /admin/canary)",
                status=409,
                code="canary_running",
            )
        canary = pool.start_canary(spec, now)
        view = canary.view(now)
        log.info("canary of %s version %s started", pool.name, spec.version, extra={"canary": view})
        return json_reply({"model": pool.name, **view}, status=201)

    def get_canary(self, request: Request) -> Reply:
        pool = self._asked_pool(request)
        if pool.canary is None:
            raise NotFound(f"model {pool.name!r} has no canary", code="no_canary")
        return json_reply({"model": pool.name, **pool.canary.view(time.monotonic())})

    def end_canary(self, request: Request) -> Reply:
        """Every version serves the model's requests again; the answer is the canary's last view."""
        pool = self._asked_pool(request)
        canary = pool.end_canary()
        if canary is None:
            raise NotFound(f"model {pool.name!r} has no canary", code="no_canary")
        view = canary.view(time.monotonic())
        log.info("canary of %s version %s ended: %s", pool.name, canary.spec.version, view["state"])
        return json_reply({"model": pool.name, **view})
