"""Triton's model repository extensions, answered from what the pools know.

``/v2/repository/index`` (models, learnt versions, READY or UNAVAILABLE),
``/v2/models/{m}[/versions/{v}]/config`` (Triton's model configuration, from the
signature in the routing table) and ``/v2/models[/{m}[/versions/{v}]]/stats`` (Triton's
statistics extension, from each pool's figures): the shapes tritonclient reads.
"""

from __future__ import annotations

import json
from typing import Any

from onnxfleet.orchestrator.errors import BadRequest, NotFound
from onnxfleet.orchestrator.messages import Reply, Request, json_reply
from onnxfleet.orchestrator.pool import ModelPool, Models, VersionFigures

# OIP datatypes → Triton's model configuration data types
TRITON_TYPES = {
    "BOOL": "TYPE_BOOL",
    "UINT8": "TYPE_UINT8",
    "UINT16": "TYPE_UINT16",
    "UINT32": "TYPE_UINT32",
    "UINT64": "TYPE_UINT64",
    "INT8": "TYPE_INT8",
    "INT16": "TYPE_INT16",
    "INT32": "TYPE_INT32",
    "INT64": "TYPE_INT64",
    "FP16": "TYPE_FP16",
    "FP32": "TYPE_FP32",
    "FP64": "TYPE_FP64",
    "BYTES": "TYPE_STRING",
    "BF16": "TYPE_BF16",
}


class Repository:
    def __init__(self, models: Models) -> None:
        self.models = models

    def _pool(self, request: Request) -> tuple[ModelPool, str | None]:
        """The model (and version) a path names: 404 ``model_not_found``/``version_not_found``."""
        name = request.params["name"]
        pool = self.models.get(name)
        if pool is None:
            served = self.models.served()
            raise NotFound(
                f"no model {name!r} is served here: expected one of {[m['name'] for m in served]}",
                code="model_not_found",
                models=served,
            )
        version = request.params.get("version")
        if version is not None and version not in pool.versions() and version not in pool.figures.versions:
            versions = list(pool.versions())
            raise NotFound(
                f"model {pool.name!r} has no version {version!r}: expected one of {versions}",
                code="version_not_found",
                model=pool.name,
                versions=versions,
            )
        return pool, version

    # -- /v2/repository/index ------------------------------------------------------------------
    def index(self, request: Request) -> Reply:
        ready_only = False
        if request.body:
            try:
                body = json.loads(request.body)
            except ValueError:
                body = None
            if not isinstance(body, dict) or not isinstance(body.get("ready", False), bool):
                raise BadRequest('expected an empty body or a JSON object {"ready": true|false}')
            ready_only = body.get("ready", False)
        entries: list[dict[str, str]] = []
        for pool in self.models:
            versions = pool.versions()
            if not versions:
                entries.append(
                    {
                        "name": pool.name,
                        "version": "",
                        "state": "UNAVAILABLE",
                        "reason": "no container has told its version yet (readiness checks)",
                    }
                )
            for version, containers in versions.items():
                ready = [c for c in containers if c.accepting]
                if ready:
                    entries.append({"name": pool.name, "version": version, "state": "READY", "reason": ""})
                else:
                    states = ", ".join(f"{c.name}: {c.state}" for c in containers)
                    entries.append(
                        {
                            "name": pool.name,
                            "version": version,
                            "state": "UNAVAILABLE",
                            "reason": f"no container of this version takes requests ({states})",
                        }
                    )
        if ready_only:
            entries = [e for e in entries if e["state"] == "READY"]
        return json_reply(entries)

    # -- /v2/models/{m}[/versions/{v}]/config ----------------------------------------------------
    def config(self, request: Request) -> Reply:
        pool, _version = self._pool(request)
        return json_reply(model_config(pool))

    # -- /v2/models[/{m}[/versions/{v}]]/stats ---------------------------------------------------
    def stats(self, request: Request) -> Reply:
        if "name" not in request.params:
            pools = list(self.models)
            only: str | None = None
        else:
            pool, only = self._pool(request)
            pools = [pool]
        stats: list[dict[str, Any]] = []
        for pool in pools:
            versions = set(pool.versions()) | set(pool.figures.versions)
            for version in sorted(versions):
                if only is not None and version != only:
                    continue
                stats.append(_model_stats(pool.name, version, pool.figures.of(version)))
        return json_reply({"model_stats": stats})


def model_config(pool: ModelPool) -> dict[str, Any]:
    """Triton's model configuration for a pool (inputs and outputs from its signature)."""
    route = pool.route
    model = route.model
    batching = pool.dispatcher.batcher is not None and route.batching is not None
    config: dict[str, Any] = {
        "name": pool.name,
        "platform": "onnxruntime_onnx",
        "backend": "onnxruntime",
        "max_batch_size": route.batching.max_batch_size if batching and route.batching else 0,
        "input": [],
        "output": [],
        "instance_group": [
            {
                "name": pool.name,
                "count": len([c for c in pool.containers if not c.removed]),
                "kind": "KIND_CPU",
            }
        ],
    }
    if model is not None:
        for key, tensors in (("input", model.signature.inputs), ("output", model.signature.outputs)):
            config[key] = [
                {
                    "name": t.name,
                    "data_type": TRITON_TYPES.get(t.datatype, "TYPE_INVALID"),
                    # Triton's dims leave the batch dimension out when the model batches
                    "dims": list(t.shape[1:] if batching else t.shape),
                }
                for t in tensors
            ]
    if batching and route.batching is not None:
        config["dynamic_batching"] = {
            "max_queue_delay_microseconds": int(route.batching.max_delay_s * 1_000_000),
        }
    return config


def _model_stats(name: str, version: str, f: VersionFigures) -> dict[str, Any]:
    zero = {"count": 0, "ns": 0}
    return {
        "name": name,
        "version": version,
        "last_inference": f.last_inference_ms,
        "inference_count": f.inference_count,
        "execution_count": f.execution_count,
        "inference_stats": {
            "success": f.success.view(),
            "fail": f.fail.view(),
            "queue": f.queue.view(),
            "compute_input": zero,
            "compute_infer": f.compute.view(),
            "compute_output": zero,
            "cache_hit": zero,
            "cache_miss": zero,
        },
        "batch_stats": [
            {
                "batch_size": size,
                "compute_input": zero,
                "compute_infer": timing.view(),
                "compute_output": zero,
            }
            for size, timing in sorted(f.batches.items())
        ],
        "memory_usage": [],
    }
