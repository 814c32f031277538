"""One request's life with the containers: forwarding, re-sending, its outcome.

An ``Exchange`` carries the bytes of one request and ends exactly once for its client
(``finish``: an answer or an error; or ``abandon``: the client left). The container side
is separate: a slot taken for a request is freed only when the container answered (the
answer is read, and discarded if the client is gone) or its connection closed, so a
client's deadline, a client leaving or a container failing its health checks never
frees a slot the container is still computing in (a late answer frees it).

Re-sending (HAProxy's ``retry-on conn-failure empty-response`` with ``option
redispatch``): a request is sent again, at the head of the queue, at most ``--retries``
times in all, when it got no answer byte: the connection could not be made (the container
is ejected, at most one per request), the container failed its health checks before
answering (a stopped host sends no reset), or the connection closed or reset after the
request was written and before the status line. That last one only once per request: a
request after which containers close may be what crashes them, so it runs twice at most,
and the empty answer ejects nobody (the health checks decide). The second send goes to
another container when one is in service (the dispatcher's ``avoid``), else to the same
one, always on a fresh connection. A request whose answer had begun, or that timed out,
is never sent again.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from onnxfleet.orchestrator.errors import GatewayTimeout, HTTPError, Unreachable, UpstreamFailed
from onnxfleet.orchestrator.upstream import (
    MAX_HEAD_BYTES,
    ClosedBeforeResponse,
    ConnectFailed,
    Connection,
    HeadTooLarge,
    Response,
    UpstreamError,
    UpstreamTimeout,
)

if TYPE_CHECKING:
    from onnxfleet.orchestrator.dispatcher import Dispatcher
    from onnxfleet.orchestrator.merging import Part
    from onnxfleet.orchestrator.pool import Figures
    from onnxfleet.orchestrator.roster import Container


class Exchange:
    """One request: its bytes, its place in the queue, its outcome."""

    __slots__ = (
        "arrived",
        "attempts",
        "avoid",
        "container",
        "data",
        "deadline",
        "done",
        "ejected",
        "error",
        "key",
        "on_done",
        "part",
        "queued_at",
        "response",
        "sent_at",
        "size",
        "timer",
        "version",
        "waited",
    )

    def __init__(self, data: bytes, deadline: float | None, on_done: Callable[[Exchange], None]) -> None:
        self.data = data
        self.size = len(data)
        self.deadline = deadline  # time.monotonic() instant bounding queue wait + answer
        self.on_done = on_done  # called once, by finish()
        self.arrived = time.monotonic()
        self.key: int | None = None  # set while queued
        self.timer: asyncio.TimerHandle | None = None  # queue timeout, or the deadline at a container
        self.queued_at = 0.0
        self.sent_at = 0.0
        self.waited = 0.0  # seconds spent in the queue (all attempts)
        self.attempts = 0  # re-sends so far
        self.avoid: Container | None = None  # it got an empty answer from this one: sent again elsewhere
        self.ejected = False  # a request ejects one container at most
        self.container: Container | None = None
        self.done = False
        self.response: Response | None = None
        self.error: HTTPError | None = None
        self.part: Part | None = None  # what batching knows of it (None: forwarded as it is)
        self.version: str | None = None  # only to a container serving this model version

    @property
    def requests(self) -> int:
        """Client requests this call carries."""
        return 1

    def send_again(self, dispatcher: Dispatcher, avoid: Container | None) -> int:
        """At the head of the queue again (``avoid``: to another container than that one,
        alone; exchange.py's docstring); the requests counted as re-sent."""
        if avoid is not None:
            self.avoid = avoid
            if self.part is not None:
                self.part.alone()
        try:
            dispatcher.submit(self, priority=True)
        except HTTPError as exc:
            self.finish(None, exc)
        return 1

    def finish(self, response: Response | None, error: HTTPError | None) -> None:
        """The outcome for the client (once; later calls change nothing)."""
        on_done = self._end()
        if on_done is not None:
            self.response, self.error = response, error
            on_done(self)

    def abandon(self) -> None:
        """The client left: no outcome (a request at a container runs on, its answer is dropped)."""
        self._end()

    def _end(self) -> Callable[[Exchange], None] | None:
        """Done for the client: the callback to call, or None when it was done already."""
        if self.done:
            return None
        self.done = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.data = b""  # the request bytes are not needed anymore (memory: jobs keep outcomes)
        self.part = None
        on_done, self.on_done = self.on_done, _ignore  # no cycle through the client's callback
        return on_done


def _ignore(_ex: Exchange) -> None:
    pass


class Batch(Exchange):
    """Queued requests merged into one container call (batching.py): one slot, one answer
    that ``ended`` splits for its members."""

    __slots__ = ("members", "parts")

    def __init__(
        self, data: bytes, members: list[Exchange], parts: list[Part], ended: Callable[[Batch], None]
    ) -> None:
        super().__init__(data, None, lambda _ex: ended(self))
        self.members = members
        self.parts = parts  # kept here: a member that ends drops its own
        self.attempts = max(m.attempts for m in members)  # re-sends left: the fewest of its members'
        self.ejected = any(m.ejected for m in members)

    @property
    def requests(self) -> int:
        return len(self.members)

    def send_again(self, dispatcher: Dispatcher, avoid: Container | None) -> int:
        """Its members go again, at the head of the queue, in order, with the batch's re-send
        count (``avoid``: each alone, to another container than that one)."""
        for m in self.members:
            m.attempts = self.attempts
            if avoid is None:
                m.ejected = self.ejected
            else:
                m.avoid = avoid
                if m.part is not None:
                    m.part.alone()
        again = [m for m in self.members if not m.done]
        dispatcher.requeue(again)
        return 1 if avoid is None else len(again)


def _broken(c: Container, error: UpstreamError) -> str:
    if isinstance(error, HeadTooLarge):
        return (
            f"{c.name} sent an answer whose head (status line and headers) is larger than "
            f"{MAX_HEAD_BYTES} bytes"
        )
    return f"{c.name} sent a malformed or incomplete answer"


class Forwarder:
    """Sends exchanges to the containers the dispatcher chose, and ends them."""

    def __init__(
        self, dispatcher: Dispatcher, upstream_timeout: float, retries: int, figures: Figures | None = None
    ) -> None:
        self.dispatcher = dispatcher
        self.figures = figures  # the model's: container calls by version and size
        self.upstream_timeout = upstream_timeout
        self.retries = retries
        self.retried = 0
        self.connecting: set[asyncio.Task[None]] = set()

    def _connect_then_send(self, ex: Exchange, c: Container) -> None:
        task = asyncio.get_running_loop().create_task(self._connect_and_send(ex, c))
        self.connecting.add(task)
        task.add_done_callback(self.connecting.discard)

    def send(self, ex: Exchange, c: Container) -> None:
        """``ex`` holds a slot of ``c``: write it on an idle connection, or open one."""
        loop = asyncio.get_running_loop()
        ex.sent_at = now = time.monotonic()
        if ex.deadline is not None and ex.timer is None:
            ex.timer = loop.call_later(ex.deadline - now, self.deadline_passed, ex)
        # a request sent again after an empty answer goes on a fresh connection: a pooled
        # one closed meanwhile (the keep-alive race) would end it with no re-send left
        conn = c.endpoint.pool.take_idle() if ex.avoid is None else None
        if conn is not None:
            c.endpoint.sending.add(conn)
            conn.send(ex.data, self.upstream_timeout, self._on_answer, ex, c)
        else:
            self._connect_then_send(ex, c)

    async def _connect_and_send(self, ex: Exchange, c: Container) -> None:
        try:
            conn = await c.endpoint.pool.connect()
        except ConnectFailed as exc:
            self._on_answer(ex, c, None, None, exc)
            return
        if ex.done:  # its client left (or its deadline passed) meanwhile: nothing to compute
            c.endpoint.pool.put(conn, True)
            self._end(c)
            return
        c.endpoint.sending.add(conn)
        conn.send(ex.data, self.upstream_timeout, self._on_answer, ex, c)

    def deadline_passed(self, ex: Exchange) -> None:
        ex.timer = None
        assert ex.container is not None
        name = ex.container.name
        ex.finish(
            None, GatewayTimeout(f"{name} gave no answer before the request deadline (X-Request-Timeout-Ms)")
        )

    def _end(self, c: Container) -> None:
        self.dispatcher.release(c)

    def _on_answer(
        self,
        ex: Exchange | None,
        c: Container,
        conn: Connection | None,
        response: Response | None,
        error: UpstreamError | None,
    ) -> None:
        """The end of one exchange with ``c`` (``ex`` is None when it was detached)."""
        if conn is not None:
            c.endpoint.sending.discard(conn)
        if response is not None:
            assert conn is not None
            self._answered(ex, c, conn, response)
        else:
            assert error is not None
            self._failed(ex, c, conn, error)

    def _answered(self, ex: Exchange | None, c: Container, conn: Connection, response: Response) -> None:
        c.endpoint.pool.put(conn, response.keep_alive)
        c.served += 1
        if response.status >= 500:
            c.errors += 1
        version = response.header("X-Model-Version")
        switched = version is not None and version != c.model_version
        if switched:
            c.model_version = version
        if ex is not None:
            took = time.monotonic() - ex.sent_at
            self.dispatcher.served(took)
            if self.figures is not None:
                self.figures.executed(c.model_version or "", ex.requests, took)
        self._end(c)
        if switched:  # requests pinned to its new version may go to it now, the old one's not
            self.dispatcher.changed()
        if ex is not None:
            ex.finish(response, None)

    def _failed(
        self, ex: Exchange | None, c: Container, conn: Connection | None, error: UpstreamError
    ) -> None:
        if not (isinstance(error, ClosedBeforeResponse) and conn is not None and conn.reused):
            # (an idle connection the container closed as we reused it is the keep-alive race)
            c.errors += 1
            c.last_error = str(error)
        self._end(c)
        if isinstance(error, ConnectFailed):
            # nothing reached the container: eject it (once per request) and send elsewhere
            if ex is None or not ex.ejected:
                if ex is not None:
                    ex.ejected = True
                if c.eject(str(error)):
                    self.dispatcher.changed()
            if ex is not None:
                self._resend(ex, c, str(error))
            return
        if ex is None:
            return
        if isinstance(error, ClosedBeforeResponse):
            if ex.avoid is None and ex.attempts < self.retries:
                # no answer byte: once more, elsewhere; it ejects nobody (it may be the
                # request that crashes containers: twice at most)
                self._resend(ex, c, str(error), avoid=True)
            else:
                closed = f"{c.name} closed the connection without an answer"
                ex.finish(None, UpstreamFailed(closed, container=c.name))
        elif isinstance(error, UpstreamTimeout):
            ex.finish(None, GatewayTimeout(f"{c.name} gave no answer within {self.upstream_timeout:g}s"))
        else:
            ex.finish(None, UpstreamFailed(_broken(c, error), container=c.name))

    def _resend(self, ex: Exchange, c: Container, reason: str, avoid: bool = False) -> None:
        """Send ``ex`` again (it got no answer byte from ``c``), or give up.

        ``avoid``: ``c`` closed the connection after the request was written: the request
        goes to another container if one is in service, alone (never merged again), and
        gets no further re-send of that kind. A batch's members each go that way.
        """
        if ex.done:
            return
        if ex.attempts >= self.retries:
            ex.finish(
                None,
                Unreachable(
                    f"no container could be reached: {c.name}: {reason} (after {ex.attempts} re-sends)",
                    container=c.name,
                ),
            )
            return
        ex.attempts += 1
        if ex.timer is not None:  # the deadline timer: armed again when it is sent
            ex.timer.cancel()
            ex.timer = None
        self.retried += ex.send_again(self.dispatcher, c if avoid else None)

    def abandon(self, c: Container, reason: str) -> None:
        """``c`` failed its health checks: its requests still without an answer byte go elsewhere.

        Their connections stay open (and ``c``'s slots taken) until a late answer is read
        or they close: a container that was only slow must not get more than its slots.
        """
        for conn in list(c.endpoint.sending):
            if conn.owner is c and conn.waiting_first_byte:
                ex = conn.detach()
                if ex is not None:
                    self._resend(ex, c, reason)
