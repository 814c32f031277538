"""The containers the orchestrator knows: their addresses, health and counters.

A container record is what the routing table names; its slots live on its ``Endpoint``
(one per host:port), so two records on one address, a removed one still draining and a
new one under another name, never take more than the address's slots between them.
The health state machine (HAProxy's ``fall``/``rise``) and the reconciliation of a new
routing table with the current records are here too: plain methods, no I/O.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable

from onnxfleet.orchestrator.routes import ContainerSpec
from onnxfleet.orchestrator.upstream import Connection, Pool


class Endpoint:
    """One container address: its keep-alive connections and the requests it is computing."""

    def __init__(self, host: str, port: int) -> None:
        self.address = (host, port)
        self.pool = Pool(host, port, max_idle=0)  # raised by the records: slots + 1
        self.inflight = 0  # requests sent and not yet answered (or their connection closed)
        self.sending: set[Connection] = set()  # connections carrying one of those requests
        self.users = 0  # container records on this address


class Container:
    """One routing-table entry: its state, its share of its endpoint's slots, its counters."""

    def __init__(self, spec: ContainerSpec, endpoint: Endpoint) -> None:
        self.spec = spec
        self.name = spec.name
        self.node = spec.node
        self.max_concurrency = spec.max_concurrency
        self.endpoint = endpoint
        endpoint.pool.max_idle = max(endpoint.pool.max_idle, spec.max_concurrency + 1)
        self.inflight = 0  # of the endpoint's, those this record sent
        self.served = 0
        self.errors = 0
        self.healthy = False  # until its first successful readiness check
        self.checked = False
        self.draining = False  # by the admin API (kept across reloads)
        self.removed = False  # gone from the routing table: drains, then disappears
        self.ok_streak = 0
        self.fail_streak = 0
        self.last_error: str | None = None
        self.model_version: str | None = None
        self.idle_waiters: list[asyncio.Future[None]] = []

    @property
    def accepting(self) -> bool:
        return self.healthy and not self.draining and not self.removed

    @property
    def free(self) -> bool:
        """Accepting, with a slot free at its address."""
        return self.endpoint.inflight < self.max_concurrency and self.accepting

    @property
    def state(self) -> str:
        if self.draining or self.removed:
            return "draining"
        if not self.healthy:
            return "down"
        return "busy" if self.endpoint.inflight >= self.max_concurrency else "ready"

    def record_check(self, ok: bool, rise: int, fall: int, error: str | None = None) -> bool:
        """One readiness check result; True when ``healthy`` changed.

        Down after ``fall`` consecutive failures, up after ``rise`` consecutive passes;
        the very first check decides at once (a new container need not wait ``rise``).
        """
        first = not self.checked
        self.checked = True
        if ok:
            self.fail_streak = 0
            self.ok_streak += 1
            if not self.healthy and (first or self.ok_streak >= rise):
                self.healthy = True
                self.last_error = None
                return True
            return False
        self.ok_streak = 0
        self.fail_streak += 1
        self.last_error = error
        if self.healthy and self.fail_streak >= fall:
            self.healthy = False
            return True
        return False

    def eject(self, error: str) -> bool:
        """Passive check: a real request could not connect. True when it was up."""
        self.ok_streak = 0
        self.last_error = error
        if self.healthy:
            self.healthy = False
            return True
        return False

    def as_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "node": self.node,
            "url": self.spec.url,
            "state": self.state,
            "healthy": self.healthy,
            "max_concurrency": self.max_concurrency,
            "in_flight": self.inflight,
            "served": self.served,
            "errors": self.errors,
            "model_version": self.model_version,
            "last_error": self.last_error,
        }


Drained = Callable[[str, str], bool]  # (container name, node) → drained by the admin API


class Roster:
    def __init__(self) -> None:
        self.containers: list[Container] = []
        self.by_name: dict[str, Container] = {}
        self.endpoints: dict[tuple[str, int], Endpoint] = {}

    def _endpoint(self, spec: ContainerSpec) -> Endpoint:
        endpoint = self.endpoints.get((spec.host, spec.port))
        if endpoint is None:
            endpoint = self.endpoints[(spec.host, spec.port)] = Endpoint(spec.host, spec.port)
        endpoint.users += 1
        return endpoint

    def apply(self, specs: Iterable[ContainerSpec], drained: Drained | None = None) -> dict[str, list[str]]:
        """Adopt a routing table: new names join, removed ones (or moved ones) drain first.

        A new record drains from the start when ``drained`` says so (the admin API's flags),
        else when the record it replaces was draining.
        """
        wanted = {spec.name: spec for spec in specs}
        added: list[str] = []
        removed: list[str] = []
        updated: list[str] = []
        for c in list(self.containers):
            if c.removed:
                continue
            spec = wanted.get(c.name)
            if spec is not None and (spec.host, spec.port) == (c.spec.host, c.spec.port):
                if spec != c.spec:
                    c.spec, c.node, c.max_concurrency = spec, spec.node, spec.max_concurrency
                    c.endpoint.pool.max_idle = max(c.endpoint.pool.max_idle, spec.max_concurrency + 1)
                    updated.append(c.name)
                continue
            c.removed = True
            removed.append(c.name)
            self.forget_if_idle(c)
        for spec in wanted.values():
            current = self.by_name.get(spec.name)
            if current is None or current.removed:
                c = Container(spec, self._endpoint(spec))
                if drained is not None:
                    c.draining = drained(spec.name, spec.node)
                elif current is not None:
                    c.draining = current.draining
                self.containers.append(c)
                self.by_name[spec.name] = c
                added.append(spec.name)
        return {"added": added, "removed": removed, "updated": updated}

    def forget_if_idle(self, c: Container) -> None:
        """A removed record leaves once nothing it sent is in flight."""
        if not c.removed or c.inflight > 0 or c not in self.containers:
            return
        self.containers.remove(c)
        if self.by_name.get(c.name) is c:
            del self.by_name[c.name]
        endpoint = c.endpoint
        endpoint.users -= 1
        if endpoint.users == 0:  # (its records' requests are over: so are its own)
            endpoint.pool.close()
            del self.endpoints[endpoint.address]

    def select(self, node: str | None = None, container: str | None = None) -> list[Container]:
        return [
            c
            for c in self.containers
            if not c.removed and (c.node == node if node is not None else c.name == container)
        ]

    def close(self) -> None:
        for endpoint in self.endpoints.values():
            endpoint.pool.close()
