"""A queued request whose client disconnects leaves the queue.

In ASGI the only sign that a client has gone is ``receive()`` answering
``http.disconnect``, and waiting for it takes a task per request (about 15 µs of CPU,
near a tenth of a request's whole cost at 1 ms service times, when nearly every request
queues). Most queued requests get their slot within milliseconds, so only a request
still queued ``WATCH_AFTER_S`` after it arrived gets a watcher (within twice that): a
sweep every ``WATCH_AFTER_S``, only while there are candidates, starts them. A client
that leaves before its request is watched, or once its request is at a container,
changes nothing for the fleet: the request runs and frees its slot when the container
answers (as behind HAProxy once a request has been forwarded).
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from onnxfleet.orchestrator.asgi import ClientLeft, Receive
from onnxfleet.orchestrator.dispatch import Dispatcher, Exchange

WATCH_AFTER_S = 0.05


class DisconnectWatch:
    def __init__(self, dispatcher: Dispatcher) -> None:
        self.dispatcher = dispatcher
        # queued requests not watched yet, in arrival order; each leaves when answered,
        # so that its objects are freed then, not a sweep later
        self.candidates: dict[Exchange, Receive] = {}
        self.watchers: set[asyncio.Task[None]] = set()
        self._sweep_at: asyncio.TimerHandle | None = None

    def add(self, ex: Exchange, receive: Receive) -> None:
        """Watch ``ex`` (just queued, its body read) if it is still queued a while from now."""
        self.candidates[ex] = receive
        if self._sweep_at is None:
            self._sweep_at = asyncio.get_running_loop().call_later(WATCH_AFTER_S, self._sweep)

    def discard(self, ex: Exchange) -> None:
        """``ex`` was answered (or refused): no need to watch it anymore."""
        self.candidates.pop(ex, None)

    def _sweep(self) -> None:
        self._sweep_at = None
        loop = asyncio.get_running_loop()
        old = time.monotonic() - WATCH_AFTER_S
        due = []
        for ex in self.candidates:
            if ex.arrived > old:
                break
            due.append(ex)
        for ex in due:
            receive = self.candidates.pop(ex)
            if ex.key is not None:  # still queued (else at a container, expired or withdrawn)
                watcher = loop.create_task(self._until_disconnect(ex, receive))
                self.watchers.add(watcher)
                watcher.add_done_callback(self.watchers.discard)
        if self.candidates:  # a fixed period: one sweep per arrival would cost more than the watch
            self._sweep_at = loop.call_later(WATCH_AFTER_S, self._sweep)

    async def _until_disconnect(self, ex: Exchange, receive: Receive) -> None:
        # the body was read: receive() now answers http.disconnect when the client goes,
        # and also once the answer is sent
        while (await receive())["type"] != "http.disconnect":
            pass
        if not ex.future.done():
            self.dispatcher.withdraw(ex)  # no-op for a request already at a container
            ex.future.set_exception(ClientLeft())

    async def close(self) -> None:
        if self._sweep_at is not None:
            self._sweep_at.cancel()
            self._sweep_at = None
        self.candidates.clear()
        watchers = list(self.watchers)
        for watcher in watchers:
            watcher.cancel()
        for watcher in watchers:
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
