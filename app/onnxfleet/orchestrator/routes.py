"""The routing table: the models, their containers and slots, the queue and health settings.

Version 2 lists ``models``, each with its own containers, queue bounds, signature and
batching; version 1 (top-level ``containers``, optional ``model`` and ``batching``) is one
model whose requests are forwarded whatever model name or version they ask for (the
workers judge them, as before version 2).

Loaded from the ``--routes`` JSON file at start, on ``SIGHUP`` and on ``POST /admin/reload``.
Every error names the file, the field and what was expected, because the file is written
by Ansible templates and read by an operator when a reload is refused.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from onnxfleet.oip import DATATYPES, Signature, TensorSpec
from onnxfleet.orchestrator.settings import HealthSpec


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
class ModelRoute:
    """One model of the table: the containers serving it and how its requests wait."""

    name: str  # "" for a version-1 table without a model name
    containers: tuple[ContainerSpec, ...]
    queue: QueueSpec = field(default_factory=QueueSpec)
    model: ModelSpec | None = None  # the signature (batching, Triton's /config)
    batching: BatchingSpec | None = None  # asked for; on only when the model batches
    # version 2: requests are routed by model name and version; version 1 (False): any
    # name and version is forwarded and the container judges it
    by_name: bool = True


@dataclass(frozen=True)
class RoutingTable:
    containers: tuple[ContainerSpec, ...]  # of all models
    queue: QueueSpec = field(default_factory=QueueSpec)
    health: HealthSpec = field(default_factory=HealthSpec)
    model: ModelSpec | None = None  # version 1 only
    batching: BatchingSpec | None = None  # version 1 only
    models: tuple[ModelRoute, ...] = ()  # the default one first
    default: str = ""  # the name of the model /run_model and /jobs go to

    def routes(self) -> tuple[ModelRoute, ...]:
        """The models (a table built by hand with ``containers`` only: one, as version 1)."""
        if self.models:
            return self.models
        name = self.model.name if self.model is not None else ""
        return (ModelRoute(name, self.containers, self.queue, self.model, self.batching, by_name=False),)


_CONTAINER_KEYS = {"name", "url", "node", "max_concurrency"}
_TOP_KEYS = {"containers", "queue", "health", "model", "batching", "models"}
_MODEL_KEYS = {"name", "default", "containers", "queue", "signature", "batching"}
_MAX_DELAY_MS = 1000
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


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


def _model(where: str, raw: Any, name: str | None = None) -> ModelSpec:
    """A version-1 ``model`` object, or (``name`` given) a version-2 model's ``signature``."""
    keys = {"batch", "inputs", "outputs"}
    raw = _object(where, raw, keys if name is not None else keys | {"name"})
    for key in ("name", "inputs", "outputs") if name is None else ("inputs", "outputs"):
        if key not in raw:
            raise RoutesError(f"{where}: missing required field {key!r}")
    batch = raw.get("batch", False)
    if not isinstance(batch, bool):
        raise RoutesError(f"{where}.batch: expected true or false, got {batch!r}")
    inputs = _tensors(f"{where}.inputs", raw["inputs"], batch)
    outputs = _tensors(f"{where}.outputs", raw["outputs"], batch)
    if name is None:
        name = _str(f"{where}.name", raw["name"])
    return ModelSpec(name, Signature(inputs, outputs, batch))


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


def _containers(where: str, value: Any, seen: dict[str, str], model: str = "") -> tuple[ContainerSpec, ...]:
    """A ``containers`` list; ``seen``: every model's container names and addresses so far
    (the model they belong to): a name is unique, an address serves one model."""
    if not isinstance(value, list):
        raise RoutesError(f"{where}: expected a list of containers {{name, url, node, max_concurrency}}")
    containers = tuple(_container(f"{where}[{i}]", raw) for i, raw in enumerate(value))
    for i, spec in enumerate(containers):
        if spec.name in seen:
            raise RoutesError(f"{where}: duplicate name {spec.name!r}")
        address = f"{spec.host}:{spec.port}"
        if seen.get(address, model) != model:
            raise RoutesError(
                f"{where}[{i}].url: {spec.url!r} is a container of model {seen[address]!r} too: "
                "expected one model per container address"
            )
        seen[spec.name] = seen[address] = model
    return containers


def _queue(where: str, value: Any, default: QueueSpec) -> QueueSpec:
    raw = _object(where, value, {"max_length", "timeout_s"})
    return QueueSpec(
        max_length=_int(f"{where}.max_length", raw.get("max_length", default.max_length), 0),
        timeout_s=_seconds(f"{where}.timeout_s", raw.get("timeout_s", default.timeout_s)),
    )


def _model_route(where: str, raw: Any, queue: QueueSpec, seen: dict[str, str]) -> tuple[ModelRoute, bool]:
    """One entry of ``models`` and whether it says ``default: true``."""
    raw = _object(where, raw, _MODEL_KEYS)
    for key in ("name", "containers"):
        if key not in raw:
            raise RoutesError(f"{where}: missing required field {key!r}")
    name = raw["name"]
    if not isinstance(name, str) or not MODEL_NAME.fullmatch(name):
        raise RoutesError(
            f"{where}.name: expected a model name of 1 to 64 letters, digits, '.', '_' or '-' "
            f"(starting with a letter or digit), got {name!r}"
        )
    default = raw.get("default", False)
    if not isinstance(default, bool):
        raise RoutesError(f"{where}.default: expected true or false, got {default!r}")
    containers = _containers(f"{where}.containers", raw["containers"], seen, name)
    if "queue" in raw:
        queue = _queue(f"{where}.queue", raw["queue"], queue)
    model = _model(f"{where}.signature", raw["signature"], name) if "signature" in raw else None
    batching = _batching(f"{where}.batching", raw["batching"]) if "batching" in raw else None
    if batching is not None and model is None:
        raise RoutesError(
            f"{where}.batching: needs the model's signature: a 'signature' object "
            "{batch, inputs, outputs} from its card"
        )
    return ModelRoute(name, containers, queue, model, batching), default


def _models(where: str, value: Any, queue: QueueSpec) -> tuple[tuple[ModelRoute, ...], str]:
    """The ``models`` list, the default model first, and the default's name."""
    if not isinstance(value, list) or not value:
        raise RoutesError(f"{where}: expected a non-empty list of models {{name, containers, ...}}")
    seen: dict[str, str] = {}
    models: list[ModelRoute] = []
    default: str | None = None
    for i, raw in enumerate(value):
        route, is_default = _model_route(f"{where}[{i}]", raw, queue, seen)
        if any(m.name == route.name for m in models):
            raise RoutesError(f"{where}[{i}].name: duplicate model name {route.name!r}")
        if is_default:
            if default is not None:
                raise RoutesError(
                    f"{where}[{i}].default: {default!r} is the default model already; "
                    "expected at most one model with default: true"
                )
            default = route.name
        models.append(route)
    if default is None:
        default = models[0].name
    models.sort(key=lambda m: m.name != default)  # stable: the others keep their order
    return tuple(models), default


def parse_table(
    data: Any, source: str = "<routes>", health_defaults: HealthSpec | None = None
) -> RoutingTable:
    top = _object(source, data, _TOP_KEYS)
    v2 = "models" in top
    if v2:
        mixed = sorted({"containers", "model", "batching"} & set(top))
        if mixed:
            raise RoutesError(
                f"{source}: {mixed} beside 'models': expected either 'models' (each model with its "
                "containers, signature and batching) or 'containers' (one model), not both"
            )
    elif "containers" not in top or not isinstance(top["containers"], list):
        raise RoutesError(f"{source}: expected a 'containers' list (one model) or a 'models' list")

    queue = QueueSpec()
    if "queue" in top:
        queue = _queue(f"{source}: queue", top["queue"], queue)
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
    if v2:
        models, default = _models(f"{source}: models", top["models"], queue)
        every = tuple(c for m in models for c in m.containers)
        return RoutingTable(every, queue, health, models=models, default=default)

    containers = _containers(f"{source}: containers", top["containers"], {})
    model = _model(f"{source}: model", top["model"]) if "model" in top else None
    batching = _batching(f"{source}: batching", top["batching"]) if "batching" in top else None
    if batching is not None and model is None:
        raise RoutesError(
            f"{source}: batching: needs the model's signature: a 'model' object "
            "{name, batch, inputs, outputs} from its card"
        )
    table = RoutingTable(containers=containers, queue=queue, health=health, model=model, batching=batching)
    return RoutingTable(
        containers, queue, health, model, batching, models=table.routes(), default=table.routes()[0].name
    )


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
