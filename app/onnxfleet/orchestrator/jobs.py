"""Asynchronous mode: ``POST /jobs`` queues a request and answers at once with an id.

Jobs share the one FIFO queue with synchronous requests. The store is bounded in count
(``max_jobs``: queued, running and finished) and in bytes (``max_bytes``: a job holds its
request's bytes until it ends, then its result's, plus ``JOB_OVERHEAD``); finished ones are
forgotten ``ttl_s`` seconds after they end. With API tokens, one token holds at most a
fair share of either bound: ``1 / (n + 1)`` of it with ``n`` tokens holding jobs (itself
included), so a token alone fills at most half the store and another always finds room.

A result is encoded to JSON once, when its job ends; ``GET /jobs/{id}`` writes the
stored bytes as they are (re-encoding megabytes on every poll stalled the event loop).
"""

from __future__ import annotations

import json
import math
import secrets
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from onnxfleet.oip import jsonio
from onnxfleet.orchestrator.exchange import Exchange

if TYPE_CHECKING:
    from onnxfleet.orchestrator.dispatcher import Dispatcher

# what a stored job costs besides its request or result bytes (its record, id, index entries)
JOB_OVERHEAD = 1024


@dataclass(slots=True)
class Job:
    exchange: Exchange | None = None  # for its queue position
    dispatcher: Dispatcher | None = None  # its model's, which queues it
    id: str = field(default_factory=lambda: secrets.token_hex(12))
    status: str = "queued"  # queued → running → done | failed
    created: float = field(default_factory=time.time)
    finished: float | None = None
    result: bytes | None = None  # the result object, JSON-encoded once
    owner: str | None = None  # the API token's name (None: the API is open)
    size: int = JOB_OVERHEAD  # bytes it holds in the store


def with_field(document: bytes, name: str, value: bytes) -> bytes:
    """The JSON object ``document`` with one more field ``name``, whose JSON is ``value``."""
    comma = b"," if document != b"{}" else b""
    return b"".join((document[:-1], comma, jsonio.dumps(name), b":", value, b"}"))


def result_json(meta: dict[str, Any], body: bytes, content_type: str | None) -> bytes:
    """The result object ``{**meta, "body": ...}`` as JSON: the worker's body as it is when it
    is JSON (checked, not re-encoded), else as a JSON string of its text."""
    head = jsonio.dumps(meta)
    if content_type and "json" in content_type:
        try:
            orjson.loads(body)  # strict RFC 8259: the bytes can be written as they are
        except orjson.JSONDecodeError:
            try:  # (NaN or Infinity literals: as the worker's JSON reader reads them)
                value: Any = json.loads(body)
            except (ValueError, RecursionError):
                pass
            else:
                return with_field(head, "body", jsonio.dumps(value))
        else:
            return with_field(head, "body", body.strip())
    return with_field(head, "body", jsonio.dumps(body.decode("utf-8", errors="replace")))


class Refused(Exception):
    """The store has no room for this job (429): the message says which bound."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after


class _Usage:
    __slots__ = ("bytes", "count")

    def __init__(self) -> None:
        self.count = 0
        self.bytes = 0


class JobStore:
    def __init__(
        self,
        ttl_s: float,
        max_jobs: int,
        max_bytes: int = 256 * 1024 * 1024,
        wait_estimate: Callable[[], int] | None = None,
    ) -> None:
        self.ttl_s = ttl_s
        self.max_jobs = max_jobs
        self.max_bytes = max_bytes
        self.jobs: dict[str, Job] = {}
        self.bytes = 0
        self.owners: dict[str | None, _Usage] = {}
        self._expiry: deque[tuple[float, str]] = deque()
        # seconds until a queued job likely ends (the dispatcher's Retry-After estimate)
        self.wait_estimate = wait_estimate or (lambda: 1)

    def purge(self) -> None:
        now = time.monotonic()
        while self._expiry and self._expiry[0][0] <= now:
            _, job_id = self._expiry.popleft()
            job = self.jobs.pop(job_id, None)
            if job is not None:
                self._account(job, -job.size, -1)

    def _account(self, job: Job, size: int, count: int) -> None:
        self.bytes += size
        usage = self.owners.get(job.owner)
        if usage is None:
            usage = self.owners[job.owner] = _Usage()
        usage.bytes += size
        usage.count += count
        if usage.count <= 0:
            del self.owners[job.owner]

    def share(self, owner: str | None) -> float:
        """The fraction of each bound ``owner`` may hold: all of it with an open API (no
        identity to share by), else ``1 / (n + 1)`` with ``n`` owners holding jobs, itself
        included."""
        if owner is None:
            return 1.0
        holders = len(self.owners) + (0 if owner in self.owners else 1)
        return 1.0 / (holders + 1)

    def check(self, owner: str | None, size: int = 0) -> None:
        """Refused unless a job of ``size`` request bytes from ``owner`` fits (0: its size is
        not known yet, the check before its body is read)."""
        self.purge()
        need = JOB_OVERHEAD + size
        usage = self.owners.get(owner) or _Usage()
        if len(self.jobs) >= self.max_jobs:
            raise Refused(
                f"{self.max_jobs} jobs are stored (--max-jobs): retry later", self._retry_after(None)
            )
        if self.bytes + need > self.max_bytes:
            raise Refused(
                f"the job store holds {self.bytes} of {self.max_bytes} bytes (--max-job-bytes), "
                f"this job needs {need}: retry later",
                self._retry_after(None),
            )
        share = self.share(owner)
        if share < 1.0:
            count_share = max(1, int(self.max_jobs * share))
            bytes_share = int(self.max_bytes * share)
            if usage.count + 1 > count_share or usage.bytes + need > bytes_share:
                raise Refused(
                    f"this token holds {usage.count} jobs and {usage.bytes} bytes, its share of the "
                    f"job store is {count_share} jobs and {bytes_share} bytes while "
                    f"{len(self.owners)} tokens hold jobs: retry later",
                    self._retry_after(owner),
                )

    def _retry_after(self, owner: str | None) -> int:
        """Seconds until the first stored job (of ``owner``; None: of anyone) is forgotten, or,
        with none finished, until a queued one likely ends."""
        now = time.monotonic()
        for expires, job_id in self._expiry:
            job = self.jobs.get(job_id)
            if job is not None and (owner is None or job.owner == owner):
                return max(1, min(3600, math.ceil(expires - now)))
        return max(1, min(3600, self.wait_estimate()))

    def add(self, job: Job, size: int = 0) -> None:
        """Stored, holding ``size`` request bytes until it ends (its result's once it has one)."""
        job.size = JOB_OVERHEAD + (size if job.result is None else len(job.result))
        self.jobs[job.id] = job
        self._account(job, job.size, 1)

    def fits(self, job: Job, result_size: int) -> bool:
        """Whether ``job``'s result of ``result_size`` bytes fits in the store's bytes in place of
        its request (a result that does not is replaced by a short error)."""
        held = job.size if job.id in self.jobs else 0
        return self.bytes - held + JOB_OVERHEAD + result_size <= self.max_bytes

    def get(self, job_id: str) -> Job | None:
        self.purge()
        return self.jobs.get(job_id)

    def finish(self, job: Job, status: str, result: bytes) -> None:
        job.status = status
        job.result = result
        job.finished = time.time()
        if job.id in self.jobs:
            size = JOB_OVERHEAD + len(result)
            self._account(job, size - job.size, 0)
            job.size = size
        self._expiry.append((time.monotonic() + self.ttl_s, job.id))
