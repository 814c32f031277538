"""The gunicorn worker class: the orchestrator's own HTTP protocol on a uvloop event loop.

gunicorn's arbiter keeps the listening sockets, restarts a worker that dies and, on
``SIGHUP``, starts a new worker and stops the old one gracefully (docs/orchestrator.md).
This class, on gunicorn's public ``Worker`` base, runs the ``Service`` in the worker
process: heartbeats for the arbiter, ``SIGTERM`` for a graceful stop, ``SIGINT`` and
``SIGQUIT`` for a quick one.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys

import uvloop
from gunicorn.arbiter import Arbiter
from gunicorn.workers.base import Worker

from onnxfleet.orchestrator.service import Service

GRACE_S = 10.0  # queue and requests in flight may finish for this long after SIGTERM


class OrchestratorWorker(Worker):
    def init_signals(self) -> None:
        # the handlers are installed on the event loop (run); none of gunicorn's own
        for sig in self.SIGNALS:
            signal.signal(sig, signal.SIG_DFL)
        # the arbiter handles SIGHUP by replacing this worker; a signal sent to the whole
        # process group must not kill it
        signal.signal(signal.SIGHUP, signal.SIG_IGN)

    def run(self) -> None:
        uvloop.run(self._serve())

    async def _serve(self) -> None:
        service = self.wsgi
        assert isinstance(service, Service)
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        quick = False

        def stop_now() -> None:
            nonlocal quick
            quick = True
            stop.set()

        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop_now)
        loop.add_signal_handler(signal.SIGQUIT, stop_now)
        heartbeat = loop.create_task(self._heartbeat(stop))
        # the arbiter binds --bind first, then --admin-bind (cli.run)
        sockets = [listener.sock for listener in self.sockets]
        try:
            await service.start(sockets[:1], sockets[1:])
        except Exception:
            self.log.exception("the orchestrator could not start")
            sys.exit(Arbiter.WORKER_BOOT_ERROR)
        await stop.wait()
        await service.stop(0.0 if quick else min(GRACE_S, max(0.0, self.cfg.graceful_timeout - 1.0)))
        heartbeat.cancel()

    async def _heartbeat(self, stop: asyncio.Event) -> None:
        """Tell the arbiter this worker lives (it kills silent ones), until the stop is over."""
        while True:
            self.notify()
            if os.getppid() != self.ppid and not stop.is_set():
                self.log.info("the gunicorn arbiter is gone: stopping")
                stop.set()
            await asyncio.sleep(1.0)
