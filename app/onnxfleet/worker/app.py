"""The worker's Flask app: inference (``/run_model``, OIP v2), health, metrics.

Runs inside one gunicorn ``gthread`` process. The model loads in a background thread so
``/healthz`` answers at once and ``/readyz`` turns 200 only after the warm-up inference;
a model that cannot load or warm up ends the process (exit 3 stops gunicorn).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from flask import Flask, Response, g, request
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound, RequestEntityTooLarge

from onnxfleet import __version__, oip
from onnxfleet.oip import jsonio
from onnxfleet.oip.errors import CodecError, envelope
from onnxfleet.worker.body import drainer, read_body
from onnxfleet.worker.errors import ApiError
from onnxfleet.worker.gate import InferenceGate
from onnxfleet.worker.metrics import WorkerMetrics
from onnxfleet.worker.model import Model, ModelError
from onnxfleet.worker.server import IDENTITY_HEADERS
from onnxfleet.worker.settings import WorkerSettings

log = logging.getLogger("onnxfleet.worker")
access_log = logging.getLogger("onnxfleet.worker.access")

WORKER_BOOT_ERROR = 3  # gunicorn's arbiter halts when a worker exits with this code


def exit_boot_error() -> None:
    logging.shutdown()
    os._exit(WORKER_BOOT_ERROR)


class ModelHolder:
    """The model once it is loaded and warmed up, and the state on the way there."""

    def __init__(self, settings: WorkerSettings) -> None:
        self.settings = settings
        self.model: Model | None = None
        self.state = "loading"
        self.error: str | None = None

    def is_ready(self) -> bool:
        return self.model is not None

    def load(self, metrics: WorkerMetrics, on_failure: Callable[[], None]) -> None:
        s = self.settings
        try:
            started = time.perf_counter()
            model = Model(s.model_path, s.intra_op_threads, s.batch)
            loaded = time.perf_counter()
            self.state = "warming up"
            warm_up = model.warm_up()
        except Exception as exc:  # whatever it is, a worker without its model must stop
            # /readyz says that it failed; what onnxruntime said goes to the log only.
            self.state, self.error = "failed", "the model could not be loaded or warmed up; see the log"
            log.error(
                "model %s cannot be served: %s",
                s.model_path,
                exc,
                exc_info=not isinstance(exc, ModelError),
            )
            on_failure()
            return
        metrics.warm_up_seconds.set(warm_up)
        self.model, self.state = model, "ready"
        log.info(
            "model ready",
            extra={
                "model": s.model_name,
                "model_version": s.model_version,
                "load_ms": round((loaded - started) * 1000, 1),
                "warm_up_ms": round(warm_up * 1000, 1),
                "intra_op_threads": s.intra_op_threads,
                "signature": model.signature.describe(),
            },
        )


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(jsonio.dumps(body), status, headers, mimetype="application/json")


def check_json_media_type() -> None:
    """``/run_model``: 415 unless the body says it is JSON or says nothing. (OIP inference
    ignores Content-Type, as Triton does: ``Inference-Header-Content-Length`` decides.)"""
    mimetype = request.mimetype
    if mimetype and mimetype != "application/json" and not mimetype.endswith("+json"):
        raise ApiError(
            "the body must be JSON (Content-Type: application/json); "
            f"got Content-Type {request.content_type}",
            "unsupported_media_type",
            415,
        )


class Views:
    def __init__(
        self, settings: WorkerSettings, holder: ModelHolder, gate: InferenceGate, metrics: WorkerMetrics
    ) -> None:
        self.s = settings
        self.holder = holder
        self.gate = gate
        self.metrics = metrics
        self.identity = {"X-Model-Version": settings.model_version, "X-Container": settings.container}

    def register(self, app: Flask) -> None:
        route = app.add_url_rule
        route("/healthz", "healthz", self.live)
        route("/v2/health/live", "v2_live", self.live)
        route("/readyz", "readyz", self.ready)
        route("/v2/health/ready", "v2_ready", self.ready)
        route("/metrics", "metrics", self.render_metrics)
        route("/run_model", "run_model", self.run_model, methods=["POST"])
        route("/v2", "v2_server", self.v2_server)
        for prefix in ("/v2/models/<name>", "/v2/models/<name>/versions/<version>"):
            route(prefix, f"v2_model{prefix.count('/')}", self.v2_model)
            route(f"{prefix}/ready", f"v2_model_ready{prefix.count('/')}", self.v2_model_ready)
            route(f"{prefix}/infer", f"v2_infer{prefix.count('/')}", self.v2_infer, methods=["POST"])
        app.config[IDENTITY_HEADERS] = self.identity
        app.before_request(self.before)
        app.after_request(self.after)
        app.register_error_handler(CodecError, self.api_error)
        app.register_error_handler(HTTPException, self.http_error)
        app.register_error_handler(Exception, self.unexpected_error)

    # --- per request ----------------------------------------------------------------
    def before(self) -> None:
        g.started = time.perf_counter()
        g.inference_ms = None
        g.batch = None

    def after(self, response: Response) -> Response:
        response.headers.update(self.identity)
        request_id = request.headers.get("X-Request-Id")
        if request_id:
            response.headers["X-Request-Id"] = request_id
        seconds = time.perf_counter() - getattr(g, "started", time.perf_counter())
        endpoint = request.url_rule.rule if request.url_rule else "unmatched"
        self.metrics.requests.labels(endpoint, request.method, str(response.status_code)).inc()
        self.metrics.request_seconds.labels(endpoint).observe(seconds)
        access_log.info(
            "%s %s %s",
            request.method,
            request.path,
            response.status_code,
            extra={
                "method": request.method,
                "path": request.path,
                "status": response.status_code,
                "duration_ms": round(seconds * 1000, 2),
                "inference_ms": getattr(g, "inference_ms", None),
                "batch": getattr(g, "batch", None),
                "container": self.s.container,
                "model_version": self.s.model_version,
                "request_id": request_id,
                "client": request.remote_addr,
            },
        )
        return response

    # --- errors ---------------------------------------------------------------------
    def api_error(self, exc: CodecError) -> Response:
        body = exc.body()
        if isinstance(exc, oip.InvalidInput) and self.holder.model is not None:
            body.setdefault("expected", self.holder.model.signature.describe())
        return json_response(body, exc.status, getattr(exc, "headers", None))

    def http_error(self, exc: HTTPException) -> Response:
        status = exc.code or 500
        headers = {k: v for k, v in exc.get_headers() if k.lower() != "content-type"}
        if isinstance(exc, RequestEntityTooLarge):
            message = f"the body is larger than {self.s.max_body_bytes} bytes (--max-body-bytes)"
            response = json_response(envelope(message, "payload_too_large"), 413, headers)
            response.call_on_close(drainer(request.environ))
            return response
        if isinstance(exc, NotFound):
            message = f"no route {request.path}; see /v2 or docs/worker.md for the endpoints"
            code = "not_found"
        elif isinstance(exc, MethodNotAllowed):
            message = (
                f"{request.method} is not allowed on {request.path}; use {', '.join(exc.valid_methods or [])}"
            )
            code = "method_not_allowed"
        else:
            message = f"{exc.name}: the request could not be handled"
            code = "bad_request" if status < 500 else "internal_error"
        return json_response(envelope(message, code), status, headers)

    def unexpected_error(self, exc: Exception) -> Response:
        log.exception("unexpected error on %s %s", request.method, request.path)
        return json_response(
            envelope("the worker failed on this request; see its log", "internal_error"), 500
        )

    # --- health and metrics (never wait for an inference slot) -----------------------
    def live(self) -> Response:
        return json_response({"live": True, "container": self.s.container})

    def ready(self) -> Response:
        body = {
            "ready": self.holder.is_ready(),
            "state": self.holder.state,
            "model": self.s.model_name,
            "version": self.s.model_version,
            "sha256": self.s.model_sha256,
            "container": self.s.container,
            "max_concurrency": self.s.max_concurrency,
            "intra_op_threads": self.s.intra_op_threads,
        }
        if self.holder.error:
            body["detail"] = self.holder.error
        return json_response(body, 200 if body["ready"] else 503)

    def render_metrics(self) -> Response:
        payload, content_type = self.metrics.render()
        return Response(payload, 200, content_type=content_type)

    # --- inference ------------------------------------------------------------------
    def ready_model(self) -> Model:
        model = self.holder.model
        if model is None:
            raise ApiError(
                f"the model is {self.holder.state}; retry in a second",
                "not_ready",
                503,
                headers={"Retry-After": "1"},
            )
        return model

    def run(
        self, model: Model, feeds: dict[str, np.ndarray], outputs: list[str] | None
    ) -> dict[str, np.ndarray]:
        """Run the model within the gate's slots, with its metrics."""
        first = next(iter(feeds.values()))
        g.batch = int(first.shape[0]) if first.ndim else 1
        waiting_since = time.perf_counter()
        with self.gate.slot():
            started = time.perf_counter()
            results = model.run(feeds, outputs)
            seconds = time.perf_counter() - started
        self.metrics.queue_seconds.observe(started - waiting_since)
        self.metrics.inference_seconds.observe(seconds)
        self.metrics.batch_size.observe(g.batch)
        g.inference_ms = round(seconds * 1000, 3)
        return results

    def body(self) -> bytes:
        return read_body(request.environ, request.content_length, self.s.max_body_bytes, self.s.read_timeout)

    def run_model(self) -> Response:
        check_json_media_type()
        model = self.ready_model()
        with self.gate.admit():
            feeds = oip.run_model.parse_request(self.body(), model.signature)
            outputs = self.run(model, feeds, None)
        s = self.s
        body = oip.run_model.encode_response(outputs, s.model_name, s.model_version, s.container)
        return Response(body, 200, mimetype="application/json")

    def check_model(self, name: str, version: str | None) -> None:
        if name != self.s.model_name or (version is not None and version != self.s.model_version):
            asked = name if version is None else f"{name} version {version}"
            raise ApiError(
                f"this worker serves {self.s.model_name!r} version {self.s.model_version!r}, not {asked!r}",
                "not_found",
                404,
            )

    def v2_server(self) -> Response:
        return json_response(
            {"name": "onnxfleet", "version": __version__, "extensions": ["binary_tensor_data"]}
        )

    def v2_model(self, name: str, version: str | None = None) -> Response:
        self.check_model(name, version)
        signature = self.ready_model().signature
        return json_response(
            {
                "name": self.s.model_name,
                "versions": [self.s.model_version],
                "platform": "onnxruntime_onnx",
                **signature.describe(),
                "parameters": {"batch": signature.batch},
            }
        )

    def v2_model_ready(self, name: str, version: str | None = None) -> Response:
        self.check_model(name, version)
        ready = self.holder.is_ready()
        return json_response({"name": name, "ready": ready}, 200 if ready else 503)

    def v2_infer(self, name: str, version: str | None = None) -> Response:
        self.check_model(name, version)
        model = self.ready_model()
        with self.gate.admit():
            body = self.body()
            inference = oip.parse_request(body, request.headers.get(oip.HEADER_LENGTH), model.signature)
            names = inference.output_names(model.signature)
            model.signature.check_outputs(names)
            outputs = self.run(model, inference.inputs, names)
        s = self.s
        answer, headers = oip.encode_response(
            inference, outputs, s.model_name, s.model_version, {"container": s.container}
        )
        return Response(answer, 200, headers)


def create_app(settings: WorkerSettings, on_load_failure: Callable[[], None] = exit_boot_error) -> Flask:
    """The app; the model starts loading in a background thread at once."""
    app = Flask("onnxfleet.worker")
    gate = InferenceGate(settings.max_concurrency, settings.max_waiting)
    holder = ModelHolder(settings)
    metrics = WorkerMetrics(gate, holder.is_ready)
    metrics.model.info(
        {
            "name": settings.model_name,
            "version": settings.model_version,
            "sha256": settings.model_sha256,
            "container": settings.container,
            "intra_op_threads": str(settings.intra_op_threads),
        }
    )
    Views(settings, holder, gate, metrics).register(app)
    threading.Thread(
        target=holder.load, args=(metrics, on_load_failure), name="model-loader", daemon=True
    ).start()
    return app
