"""The inference and job handlers, and the one place an outcome is counted and logged."""

from __future__ import annotations

import logging
import time
from typing import Any

from onnxfleet.oip import jsonio
from onnxfleet.orchestrator.errors import JSON_TYPE, HTTPError, NotFound
from onnxfleet.orchestrator.exchange import Exchange
from onnxfleet.orchestrator.forward import request_bytes, response_headers
from onnxfleet.orchestrator.guards import Caller, Guards
from onnxfleet.orchestrator.history import History
from onnxfleet.orchestrator.jobs import Job, JobStore, result_json, with_field
from onnxfleet.orchestrator.messages import Reply, Request, error_reply, json_reply
from onnxfleet.orchestrator.metrics import Metrics

access_log = logging.getLogger("onnxfleet.orchestrator.access")


class Inference:
    """Forwards inference and metadata requests and jobs to their model's pool (the guards
    chose it: ``Caller``), and answers them: one path for direct answers and jobs."""

    def __init__(
        self, guards: Guards, jobs: JobStore, metrics: Metrics, history: History, log_access: bool
    ) -> None:
        self.guards = guards
        self.jobs = jobs
        self.metrics = metrics
        self.history = history
        self.log_access = log_access

    # -- outcomes -------------------------------------------------------------------------------
    def answer(self, ex: Exchange, method: str, path: str, caller: Caller) -> Reply:
        """The reply for a finished exchange, counted in the metrics and the access log."""
        who = caller.who
        container = ex.container.name if ex.container is not None else None
        wait_ms = b"%.3f" % (ex.waited * 1000.0)
        response = ex.response
        pool = caller.pool
        labels = pool.labels
        if response is not None:
            self.metrics.queue_wait.of(labels).observe(ex.waited)
            headers = response_headers(response)
            headers.append((b"X-Container", (container or "").encode()))
            headers.append((b"X-Queue-Wait-Ms", wait_ms))
            headers.append((b"X-Request-Id", caller.request_id))
            reply = Reply(response.status, response.body, headers)
        else:
            error = ex.error or HTTPError("the request ended without an answer")
            reply = error_reply(error)
            if container is not None:
                reply.headers.append((b"X-Container", container.encode()))
            reply.headers.append((b"X-Queue-Wait-Ms", wait_ms))
            reply.headers.append((b"X-Request-Id", caller.request_id))
        elapsed = time.monotonic() - ex.arrived
        self.metrics.answered(reply.status, elapsed, labels)
        self.history.answered(reply.status, elapsed)
        if method == "POST":  # an inference (not metadata): the model's figures
            pool.finished(ex, reply.status)
        if self.log_access:
            access_log.info(
                "%s %s %d",
                method,
                path,
                reply.status,
                extra={
                    "request_id": caller.request_id.decode("ascii"),
                    "method": method,
                    "status": reply.status,
                    "path": path,
                    "model": caller.pool.name,
                    "model_version": None if response is None else response.header("X-Model-Version"),
                    "container": container,
                    "queue_wait_ms": round(ex.waited * 1000.0, 3),
                    "duration_ms": round(elapsed * 1000.0, 3),
                    "retries": ex.attempts,
                    "error": ex.error.code if ex.error is not None else None,
                    "remote": who[0],
                    "forwarded_for": who[1],
                    "client": who[2],
                },
            )
        return reply

    # -- inference ----------------------------------------------------------------------------
    def infer(self, request: Request) -> None:
        """Inference and model metadata: forwarded to a container with a free slot."""
        caller: Caller = request.state

        def done(ex: Exchange) -> None:
            request.respond(self.answer(ex, request.method, request.path, caller))

        # a HEAD is sent as a GET: the server drops the body (the client parser could not)
        method = "GET" if request.method == "HEAD" else request.method
        data = request_bytes(method, request.raw_path, request.headers, request.body)
        ex = Exchange(data, caller.deadline, done)
        pool = caller.pool
        ex.version = pool.route_version(caller.version)
        dispatcher = pool.dispatcher
        if dispatcher.batcher is not None:
            ex.part = pool.batcher.part(request)
        request.body = b""  # its bytes are in the exchange's: the queue holds them once
        try:
            dispatcher.submit(ex)
        except HTTPError as exc:
            ex.finish(None, exc)
            return

        def client_left() -> None:
            dispatcher.withdraw(ex)  # a queued request leaves the queue
            ex.abandon()

        request.on_abort = client_left

    # -- jobs -----------------------------------------------------------------------------------
    def submit_job(self, request: Request) -> Reply:
        caller: Caller = request.state  # the job outlives the request: keep none of its bytes
        data = request_bytes("POST", b"/run_model", request.headers, request.body)
        self.guards.job_room(request, len(data))
        job = Job(owner=caller.who[2])
        ex = Exchange(data, caller.deadline, lambda ex: self._job_done(job, ex, caller))
        pool = caller.pool
        ex.version = pool.route_version(caller.version)
        dispatcher = pool.dispatcher
        if dispatcher.batcher is not None:
            ex.part = pool.batcher.part(request, job=True)
        dispatcher.submit(ex)  # refusals (queue full, no container) are the answer
        job.exchange, job.dispatcher = ex, dispatcher
        position = dispatcher.position(ex)
        job.status = "running" if position is None else "queued"
        self.jobs.add(job, len(data))
        status_url = f"/jobs/{job.id}"
        return json_reply(
            {"id": job.id, "status": job.status, "position": position or 0, "status_url": status_url},
            status=202,
            headers=[(b"Location", status_url.encode()), (b"X-Request-Id", caller.request_id)],
        )

    def _job_done(self, job: Job, ex: Exchange, caller: Caller) -> None:
        reply = self.answer(ex, "POST", "/jobs", caller)
        meta = {
            "status_code": reply.status,
            "container": ex.container.name if ex.container is not None else None,
            "model_version": ex.response.header("X-Model-Version") if ex.response is not None else None,
            "queue_wait_ms": round(ex.waited * 1000.0, 3),
        }
        result = result_json(meta, reply.body, _content_type(reply))
        status = "done" if ex.response is not None else "failed"
        if not self.jobs.fits(job, len(result)):
            status, too_large = (
                "failed",
                HTTPError(
                    f"the result ({len(result)} bytes) does not fit in the job store "
                    f"({self.jobs.max_bytes} bytes, --max-job-bytes)",
                    status=507,
                    code="result_too_large",
                ),
            )
            meta["status_code"] = too_large.status
            result = result_json(meta, too_large.body(), "application/json")
        self.jobs.finish(job, status, result)

    def get_job(self, request: Request) -> Reply:
        job = self.jobs.get(request.params["id"])
        if job is None:
            raise NotFound("no such job: unknown id, or its result expired (--job-ttl)")
        view: dict[str, Any] = {"id": job.id, "status": job.status, "created": job.created}
        if job.status == "queued" and job.exchange is not None and job.dispatcher is not None:
            position = job.dispatcher.position(job.exchange)
            if position is None:  # it got its slot since
                job.status = view["status"] = "running"
            else:
                view["position"] = position
        if job.finished is None or job.result is None:
            return json_reply(view)
        view["finished"] = job.finished
        # the result as stored: encoded once, when the job ended
        body = with_field(jsonio.dumps(view), "result", job.result)
        return Reply(200, body, [(b"Content-Type", JSON_TYPE)])


def _content_type(reply: Reply) -> str | None:
    for name, value in reply.headers:
        if name.lower() == b"content-type":
            return value.decode("latin-1")
    return None
