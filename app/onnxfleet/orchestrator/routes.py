"""The routing table: which containers exist, their slots, and the queue and health settings.

Loaded from the ``--routes`` JSON file at start, on ``SIGHUP`` and on ``POST /admin/reload``.
Every error names the file, the field and what was expected, because the file is written
by Ansible templates and read by an operator when a reload is refused.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit


class RoutesError(ValueError):
    """The routing table is unreadable or invalid (the message says where and why)."""


@dataclass(frozen=True)
class ContainerSpec:
    name: str
    url: str
    node: str
    host: str
    port: int
    max_concurrency: int = 1


@dataclass(frozen=True)
class QueueSpec:
    max_length: int = 1000
    timeout_s: float = 30.0


@dataclass(frozen=True)
class HealthSpec:
    path: str = "/readyz"
    interval_s: float = 1.0
    timeout_s: float = 1.0
    fall: int = 2
    rise: int = 2


@dataclass(frozen=True)
class RoutingTable:
    containers: tuple[ContainerSpec, ...]
    queue: QueueSpec = field(default_factory=QueueSpec)
    health: HealthSpec = field(default_factory=HealthSpec)


_CONTAINER_KEYS = {"name", "url", "node", "max_concurrency"}
_TOP_KEYS = {"containers", "queue", "health"}


def _int(where: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise RoutesError(f"{where}: expected an integer >= {minimum}, got {value!r}")
    return value


def _seconds(where: str, value: Any) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise RoutesError(f"{where}: expected a number of seconds > 0, got {value!r}")
    return float(value)


def _str(where: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise RoutesError(f"{where}: expected a non-empty string, got {value!r}")
    return value


def _object(where: str, value: Any, allowed: set[str]) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise RoutesError(f"{where}: expected a JSON object, got {type(value).__name__}")
    unknown = sorted(set(value) - allowed)
    if unknown:
        raise RoutesError(f"{where}: unknown field(s) {unknown}; expected some of {sorted(allowed)}")
    return value


def _container(where: str, raw: Any) -> ContainerSpec:
    raw = _object(where, raw, _CONTAINER_KEYS)
    for key in ("name", "url", "node"):
        if key not in raw:
            raise RoutesError(f"{where}: missing required field {key!r}")
    name = _str(f"{where}.name", raw["name"])
    node = _str(f"{where}.node", raw["node"])
    url = _str(f"{where}.url", raw["url"]).rstrip("/")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise RoutesError(f"{where}.url: {exc} in {url!r}") from None
    if parts.scheme != "http" or not parts.hostname or parts.path or parts.query:
        raise RoutesError(f"{where}.url: expected http://HOST:PORT (no path), got {url!r}")
    return ContainerSpec(
        name=name,
        url=url,
        node=node,
        host=parts.hostname,
        port=port or 80,
        max_concurrency=_int(f"{where}.max_concurrency", raw.get("max_concurrency", 1), 1),
    )


def parse_table(
    data: Any, source: str = "<routes>", health_defaults: HealthSpec | None = None
) -> RoutingTable:
    top = _object(source, data, _TOP_KEYS)
    if "containers" not in top or not isinstance(top["containers"], list):
        raise RoutesError(f"{source}: expected a 'containers' list")
    containers = tuple(
        _container(f"{source}: containers[{i}]", raw) for i, raw in enumerate(top["containers"])
    )
    seen: set[str] = set()
    for spec in containers:
        if spec.name in seen:
            raise RoutesError(f"{source}: containers: duplicate name {spec.name!r}")
        seen.add(spec.name)

    queue = QueueSpec()
    if "queue" in top:
        raw = _object(f"{source}: queue", top["queue"], {"max_length", "timeout_s"})
        queue = QueueSpec(
            max_length=_int(f"{source}: queue.max_length", raw.get("max_length", queue.max_length), 0),
            timeout_s=_seconds(f"{source}: queue.timeout_s", raw.get("timeout_s", queue.timeout_s)),
        )
    health = health_defaults or HealthSpec()
    if "health" in top:
        where = f"{source}: health"
        raw = _object(where, top["health"], {"path", "interval_s", "timeout_s", "fall", "rise"})
        path = _str(f"{where}.path", raw.get("path", health.path))
        if not path.startswith("/"):
            raise RoutesError(f"{where}.path: expected a path starting with '/', got {path!r}")
        health = HealthSpec(
            path=path,
            interval_s=_seconds(f"{where}.interval_s", raw.get("interval_s", health.interval_s)),
            timeout_s=_seconds(f"{where}.timeout_s", raw.get("timeout_s", health.timeout_s)),
            fall=_int(f"{where}.fall", raw.get("fall", health.fall), 1),
            rise=_int(f"{where}.rise", raw.get("rise", health.rise), 1),
        )
    return RoutingTable(containers=containers, queue=queue, health=health)


def load_table(path: str | Path, health_defaults: HealthSpec | None = None) -> RoutingTable:
    """Read and validate the routing table at ``path`` (raises RoutesError)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise RoutesError(f"{path}: cannot read the routing table: {exc.strerror or exc}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RoutesError(
            f"{path}: not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    return parse_table(data, str(path), health_defaults)
