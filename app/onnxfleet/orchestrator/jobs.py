"""Asynchronous mode: ``POST /jobs`` queues a request and answers at once with an id.

Jobs share the one FIFO queue with synchronous requests. The store is bounded twice:
at most ``max_jobs`` jobs at any time (queued, running and finished), and finished ones
are forgotten ``ttl_s`` seconds after they end.
"""

from __future__ import annotations

import json
import secrets
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from onnxfleet.orchestrator.exchange import Exchange


@dataclass(slots=True)
class Job:
    exchange: Exchange | None = None  # for its queue position
    id: str = field(default_factory=lambda: secrets.token_hex(12))
    status: str = "queued"  # queued → running → done | failed
    created: float = field(default_factory=time.time)
    finished: float | None = None
    result: dict[str, Any] | None = None


def result_body(body: bytes, content_type: str | None) -> Any:
    """The worker's body as JSON when it is JSON, else as text."""
    if content_type and "json" in content_type:
        try:
            return json.loads(body)
        except ValueError:
            pass
    return body.decode("utf-8", errors="replace")


class JobStore:
    def __init__(self, ttl_s: float, max_jobs: int) -> None:
        self.ttl_s = ttl_s
        self.max_jobs = max_jobs
        self.jobs: dict[str, Job] = {}
        self._expiry: deque[tuple[float, str]] = deque()

    def purge(self) -> None:
        now = time.monotonic()
        while self._expiry and self._expiry[0][0] <= now:
            _, job_id = self._expiry.popleft()
            self.jobs.pop(job_id, None)

    def full(self) -> bool:
        self.purge()
        return len(self.jobs) >= self.max_jobs

    def add(self, job: Job) -> None:
        self.jobs[job.id] = job

    def get(self, job_id: str) -> Job | None:
        self.purge()
        return self.jobs.get(job_id)

    def finish(self, job: Job, status: str, result: dict[str, Any]) -> None:
        job.status = status
        job.result = result
        job.finished = time.time()
        self._expiry.append((time.monotonic() + self.ttl_s, job.id))
