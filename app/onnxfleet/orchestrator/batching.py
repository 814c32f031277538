"""Dynamic batching: the requests waiting when a slot frees go to the container as one call.

The queue, its order, its positions and its timers stay the dispatcher's, one request
per entry; batching happens only when a slot is handed over. The request at the head and
those right behind it, in queue order, that the checks let merge (same model, same other
dimensions, within ``max_batch_size`` rows and the body limit) become one ``Batch``: one
exchange, one slot, one container call. Order is strictly FIFO: gathering stops at the
first request that cannot join, which is then the next head.

A request that could start at once waits for others to join it: until the end of the
event-loop turn (those that arrived with it), or ``max_delay_ms`` (Triton's
``max_queue_delay``), unless enough are already there for a full batch.

A batch ends for each member on its own: its rows of a 200; the batch's error (a
timeout, a cut answer); once more alone when the container closed without an answer
(exchange.py: re-sends); or, for any other answer (the container refused or failed the merged
call) and one that does not split, the member is sent again, alone, at the head of the
queue: what a container answers to it alone is its answer. A member whose deadline
passes while its batch runs is answered 504 and its rows are dropped; one whose client
leaves is dropped the same way. A batch that reached no container (connect failure, a
container failing its checks before answering) puts its members back at the head of the
queue, in order, with the batch's re-send count.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from onnxfleet.orchestrator.exchange import Batch, Exchange, Forwarder
from onnxfleet.orchestrator.merging import (
    HEADER_ALLOWANCE,
    INFER,
    RUN_MODEL,
    Part,
    merged_request,
    read,
    split,
)
from onnxfleet.orchestrator.metrics import PREFIX, Labels, LeanHistogram
from onnxfleet.orchestrator.routes import BatchingSpec, ModelSpec

if TYPE_CHECKING:
    from onnxfleet.orchestrator.dispatcher import Dispatcher
    from onnxfleet.orchestrator.messages import Request
    from onnxfleet.orchestrator.roster import Container

log = logging.getLogger("onnxfleet.orchestrator")

_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256)
_SIZES_HELP = "Requests per inference call to a container while batching is on (1: sent alone)"
# bodies read for merging at most: a larger one goes alone, unparsed (parsing megabytes of
# JSON on the event loop stalls every connection, and merging it would save little)
MAX_PARSE_BYTES = 64 * 1024
_ALPHA = 0.05  # weight of the newest call in the mean batch


# A merged call carries none of its members' headers, so a request whose head a worker might
# refuse alone (gunicorn: a header line over 8,190 bytes or more than 100 of them: 431; a
# request line over 4,094: 414) or that names headers in Connection: (not forwarded) is
# never merged: sent alone, the container's answer is its answer. Set well inside those.
MERGE_MAX_HEADER_LINE = 4096
MERGE_MAX_HEADERS = 64
MERGE_MAX_URL = 2048


def _plain_head(request: Request) -> bool:
    if len(request.headers) > MERGE_MAX_HEADERS or len(request.url) > MERGE_MAX_URL:
        return False
    for name, value in request.headers:
        if len(name) + len(value) + 2 > MERGE_MAX_HEADER_LINE:
            return False
        if name == b"connection" and any(
            token.strip().lower() not in (b"close", b"keep-alive") for token in value.split(b",")
        ):
            return False
    return True


class Batcher:
    """Forms batches for the dispatcher, ends them for their members; counts them."""

    def __init__(self, dispatcher: Dispatcher, forwarder: Forwarder, max_body_bytes: int) -> None:
        self.dispatcher = dispatcher
        self.forwarder = forwarder
        self.max_bytes = max(0, max_body_bytes - HEADER_ALLOWANCE)
        self.model: ModelSpec | None = None
        self.spec = BatchingSpec()
        self.off_reason = "the routing table has no batching object"
        self.flush_timer: asyncio.TimerHandle | None = None
        self.enabled = False
        self.sizes = LeanHistogram(f"{PREFIX}_batch_size", _SIZES_HELP, _SIZES)
        self.rows = 0
        self.resent_singly = 0
        self.mean = 0.0

    # -- configuration ------------------------------------------------------------------------
    def configure(self, model: ModelSpec | None, spec: BatchingSpec | None) -> bool:
        """On when the table asks for it and the model's first dimension is a batch. The
        dispatcher's owner gives it this batcher while on, and flushes it when off (pool.py)."""
        if spec is None or model is None:
            self.off_reason = "the routing table has no batching object"
            enabled = False
        elif not model.signature.batch:
            self.off_reason = (
                f"model {model.name!r} does not say its first dimension is a batch (batch: false)"
            )
            enabled = False
        else:
            self.model, self.spec = model, spec
            enabled = True
        self.enabled = enabled
        if not enabled:
            self.model = None
        log.info(
            "batching %s",
            "on" if enabled else "off",
            extra={"batching": self.status()} if enabled else {"reason": self.off_reason},
        )
        return enabled

    def part(self, request: Request, job: bool = False) -> Part | None:
        """What a request arriving on an inference route is for batching (None: never merged)."""
        model = self.model
        if model is None or request.method != "POST":
            return None
        if job or request.path == "/run_model":
            kind, version, header = RUN_MODEL, None, b"content-type"
        elif request.params.get("name") == model.name:  # another model: the container says 404
            kind, version, header = INFER, request.params.get("version"), b"inference-header-content-length"
        else:
            return None
        if not _plain_head(request):
            return None  # the worker may refuse its head: let it answer (as it would alone)
        values = [value for name, value in request.headers if name == header]
        if len(values) > 1:
            return None  # the worker would see them joined by commas (WSGI): let it answer
        ids = [value for name, value in request.headers if name == b"x-request-id"]
        return Part(
            kind,
            len(request.body),
            model,
            header=values[0] if values else None,
            request_id=b",".join(ids) if ids else None,  # as the worker sees repeated ones
            version=version,
        )

    # -- holding a request that could go at once ------------------------------------------
    def hold(self) -> None:
        """A request could start at once: it waits ``max_delay_ms`` for others to join it (with
        0, until the requests that arrived in the same event-loop turn are queued too)."""
        if self.flush_timer is None:  # (0: the next turn, after the reads of this one)
            self.flush_timer = asyncio.get_running_loop().call_later(self.spec.max_delay_s, self.flush)

    def queued(self) -> None:
        """A request joined the queue: enough for a full batch ends the delay."""
        if self.flush_timer is not None and len(self.dispatcher.queue) >= self.spec.max_batch_size:
            self.flush()

    def flush(self) -> None:
        if self.flush_timer is not None:
            self.flush_timer.cancel()
            self.flush_timer = None
            self.dispatcher.dispatch()

    # -- forming a batch when a slot is handed over -------------------------------------------
    def _mergeable(self, ex: Exchange, c: Container) -> bool:
        part = ex.part
        if part is None:
            return False
        if part.model is not self.model and part.model != self.model:  # another table's model
            part.alone()
        elif not part.read:
            if part.body_size > MAX_PARSE_BYTES:
                part.alone()  # parsing it would cost the loop more than merging saves
            else:
                body = bytes(memoryview(ex.data)[len(ex.data) - part.body_size :])
                try:
                    read(part, body, part.model.signature, self.spec.max_batch_size, self.max_bytes)
                except Exception:  # a body the checks did not foresee: it goes alone, never lost
                    part.alone()
                    log.exception("batching could not read a request; it is sent alone")  # pragma: no mutate
                if part.mergeable:  # its arrays stay with it: the queue's bytes count them
                    self.dispatcher.holds_more(ex, part.nbytes)
        # an explicit version must be the one this container serves (it answers 404 otherwise);
        # one the request is pinned to, too (a version-2 table routes by it)
        return (
            part.mergeable
            and (part.version is None or part.version == c.model_version)
            and (ex.version is None or ex.version == c.model_version)
        )

    def gather(self, head: Exchange, c: Container) -> Exchange:
        """``head`` (just out of the queue) and the queued requests right behind it that can
        join it, as one exchange for ``c``: a Batch, or ``head`` itself when it goes alone.

        Never raises: on any failure, ``head`` goes alone and the requests already taken
        from the queue go back to its head, in order (the slot holder and the queue are
        always served, whatever a body does)."""
        members = [head]
        try:
            return self._gather(head, c, members)
        except Exception:
            log.exception("batching failed to form a batch; each request goes alone")  # pragma: no mutate
            for m in members:
                if m.part is not None:
                    m.part.alone()
                if m.timer is not None:  # a deadline timer armed for the batch
                    m.timer.cancel()
                    m.timer = None
            self.dispatcher.put_back(members[1:])
            head.container = None
            self._count(1, head)
            return head

    def _gather(self, head: Exchange, c: Container, members: list[Exchange]) -> Exchange:
        queue = self.dispatcher.queue
        if not queue or next(iter(queue.values())).part is None or not self._mergeable(head, c):
            self._count(1, head)
            return head
        first = head.part
        assert first is not None
        parts = [first]
        rows, size = first.rows, first.nbytes
        while queue:
            ex = next(iter(queue.values()))
            if not self._mergeable(ex, c):
                break
            part = ex.part
            assert part is not None
            if (
                part.key != first.key
                or rows + part.rows > self.spec.max_batch_size
                or size + part.nbytes > self.max_bytes
            ):
                break
            if self.dispatcher.take(ex):  # (False: its deadline had passed, it is answered)
                members.append(ex)
                parts.append(part)
                rows += part.rows
                size += part.nbytes
        if len(members) == 1:
            self._count(1, head)
            return head
        assert self.model is not None
        data = merged_request(self.model.name, self.model.signature, parts)
        loop = asyncio.get_running_loop()
        now = time.monotonic()
        for ex in members:
            ex.container = c
            ex.sent_at = now
            if ex.deadline is not None:  # each member keeps its own deadline
                ex.timer = loop.call_later(ex.deadline - now, self.forwarder.deadline_passed, ex)
        batch = Batch(data, members, parts, self.ended)
        self._count(len(members), None, rows)  # (once formed: a failure counts its head alone)
        return batch

    def _count(self, requests: int, alone: Exchange | None, rows: int = 0) -> None:
        if alone is not None:
            part = alone.part
            rows = part.rows if part is not None and part.read else 1
        self.sizes.observe(requests)
        self.rows += rows
        self.mean = requests if self.mean == 0.0 else self.mean + _ALPHA * (requests - self.mean)

    # -- the end of a batch -------------------------------------------------------------------
    def ended(self, ex: Batch) -> None:
        """The batch's outcome, member by member."""
        members = ex.members
        response = ex.response
        if response is None:
            for m in members:
                m.finish(None, ex.error)
            return
        answers = None
        if response.status == 200 and self.model is not None:
            try:
                answers = split(response, ex.parts, [not m.done for m in members], self.model.signature)
            except Exception:  # an answer the codec did not foresee: each member goes alone
                log.exception("a merged call's answer could not be split")  # pragma: no mutate
        if answers is None:
            # refused, failed (a 503 for memory, a 500 for a poison row...) or not splittable:
            # each request again alone, in order, for its own answer from a container
            again = [m for m in members if not m.done]
            self.resent_singly += len(again)
            # pragma: no mutate start (log text)
            log.warning(
                "a merged call got no answer that splits; its requests go again one by one",
                extra={"container": ex.container.name if ex.container else None, "status": response.status},
            )
            # pragma: no mutate end
            for part in ex.parts:
                part.alone()
            self.dispatcher.requeue(again)
            return
        for m, answer in zip(members, answers, strict=True):
            if answer is not None:
                m.finish(answer, None)

    # -- observation ----------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        if not self.enabled:
            return {"enabled": False, "reason": self.off_reason}
        return {
            "enabled": True,
            "model": self.model.name if self.model is not None else None,
            "max_batch_size": self.spec.max_batch_size,
            "max_delay_ms": round(self.spec.max_delay_s * 1000.0, 3),
            "mean_batch": round(self.mean, 2),
            "calls": sum(self.sizes.counts),
            "requests": int(self.sizes.sum),
            "rows": self.rows,
            "resent_singly": self.resent_singly,
        }


class BatchCollector(Collector):
    """One batcher's figures, or (a callable) every model's, each with its model's labels."""

    def __init__(self, source: Batcher | Callable[[], Iterable[tuple[Labels, Batcher]]]) -> None:
        self.source = source

    def _batchers(self) -> list[tuple[Labels, Batcher]]:
        if isinstance(self.source, Batcher):
            return [((), self.source)]
        return list(self.source())

    def collect(self) -> Iterator[Metric]:
        batchers = self._batchers()
        sizes = Metric(f"{PREFIX}_batch_size", _SIZES_HELP, "histogram")
        rows = CounterMetricFamily(
            f"{PREFIX}_batch_rows",
            "Rows sent to containers while batching is on",  # pragma: no mutate
            labels=["model"] if any(labels for labels, _ in batchers) else None,
        )
        resent = CounterMetricFamily(
            f"{PREFIX}_batch_resent_singly",
            # pragma: no mutate start (help text)
            "Requests of merged calls answered with anything but a 200 that splits, sent again alone",
            # pragma: no mutate end
            labels=["model"] if any(labels for labels, _ in batchers) else None,
        )
        for labels, batcher in batchers:
            batcher.sizes.add_to(sizes, dict(labels))
            values = [value for _, value in labels]
            rows.add_metric(values, batcher.rows)
            resent.add_metric(values, batcher.resent_singly)
        yield sizes
        yield rows
        yield resent
