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

from onnxfleet.oip import DATATYPES, Signature, TensorSpec


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
class ModelSpec:
    """What the containers serve (from the model card): requests are merged only for it."""

    name: str
    signature: Signature  # .batch: the first dimension of every tensor is a batch of rows


@dataclass(frozen=True)
class BatchingSpec:
    max_batch_size: int = 32  # rows in one container call at most
    # how long a request that could go at once waits for others (0: the event-loop turn)
    max_delay_s: float = 0.0


@dataclass(frozen=True)
class RoutingTable:
    containers: tuple[ContainerSpec, ...]
    queue: QueueSpec = field(default_factory=QueueSpec)
    health: HealthSpec = field(default_factory=HealthSpec)
    model: ModelSpec | None = None
    batching: BatchingSpec | None = None  # asked for; on only when the model batches


_CONTAINER_KEYS = {"name", "url", "node", "max_concurrency"}
_TOP_KEYS = {"containers", "queue", "health", "model", "batching"}
_MAX_DELAY_MS = 1000


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


def _tensors(where: str, value: Any, batch: bool) -> tuple[TensorSpec, ...]:
    if not isinstance(value, list) or not value:
        raise RoutesError(f"{where}: expected a non-empty list of {{name, datatype, shape}}")
    specs: list[TensorSpec] = []
    for i, item in enumerate(value):
        here = f"{where}[{i}]"
        raw = _object(here, item, {"name", "datatype", "shape"})
        for key in ("name", "datatype", "shape"):
            if key not in raw:
                raise RoutesError(f"{here}: missing required field {key!r}")
        name = _str(f"{here}.name", raw["name"])
        if raw["datatype"] not in DATATYPES:
            raise RoutesError(f"{here}.datatype: expected one of {list(DATATYPES)}, got {raw['datatype']!r}")
        shape = raw["shape"]
        if not isinstance(shape, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= -1 for d in shape
        ):
            raise RoutesError(f"{here}.shape: expected a list of integers >= -1 (-1: any), got {shape!r}")
        if batch and (not shape or shape[0] != -1):
            raise RoutesError(
                f"{here}.shape: a model with batch: true has a first dimension -1 (the batch) in "
                f"every input and output, got {shape!r}"
            )
        if any(s.name == name for s in specs):
            raise RoutesError(f"{here}.name: duplicate name {name!r}")
        specs.append(TensorSpec(name, raw["datatype"], tuple(shape)))
    return tuple(specs)


def _model(where: str, raw: Any) -> ModelSpec:
    raw = _object(where, raw, {"name", "batch", "inputs", "outputs"})
    for key in ("name", "inputs", "outputs"):
        if key not in raw:
            raise RoutesError(f"{where}: missing required field {key!r}")
    batch = raw.get("batch", False)
    if not isinstance(batch, bool):
        raise RoutesError(f"{where}.batch: expected true or false, got {batch!r}")
    inputs = _tensors(f"{where}.inputs", raw["inputs"], batch)
    outputs = _tensors(f"{where}.outputs", raw["outputs"], batch)
    return ModelSpec(_str(f"{where}.name", raw["name"]), Signature(inputs, outputs, batch))


def _batching(where: str, raw: Any) -> BatchingSpec:
    raw = _object(where, raw, {"max_batch_size", "max_delay_ms"})
    default = BatchingSpec()
    delay = raw.get("max_delay_ms", default.max_delay_s * 1000)
    if (
        isinstance(delay, bool)
        or not isinstance(delay, int | float)
        or not math.isfinite(delay)
        or not 0 <= delay <= _MAX_DELAY_MS
    ):
        raise RoutesError(
            f"{where}.max_delay_ms: expected milliseconds from 0 to {_MAX_DELAY_MS}, got {delay!r}"
        )
    return BatchingSpec(
        max_batch_size=_int(f"{where}.max_batch_size", raw.get("max_batch_size", default.max_batch_size), 1),
        max_delay_s=delay / 1000.0,
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
    model = _model(f"{source}: model", top["model"]) if "model" in top else None
    batching = _batching(f"{source}: batching", top["batching"]) if "batching" in top else None
    if batching is not None and model is None:
        raise RoutesError(
            f"{source}: batching: needs the model's signature: a 'model' object "
            "{name, batch, inputs, outputs} from its card"
        )
    return RoutingTable(containers=containers, queue=queue, health=health, model=model, batching=batching)


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
