"""What outlives one orchestrator process, in ``--state-dir``: drain flags and the dispatch lease.

``state.json`` holds the drain flags (by node and by container name), written atomically on
every admin change and read at start, so a drained container stays drained across a
restart; a process notices another one's change within a second. ``dispatch.lock`` is
the dispatch lease: a process sends requests to containers only while it holds an
exclusive ``flock`` on it; until then it accepts and queues (standby). The kernel
releases it when the process exits, even by a crash. So two processes on one state
directory (gunicorn replacing its worker on ``SIGHUP``, or a blue and a green container)
never send to the same containers at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import threading
from pathlib import Path


class DrainState:
    """Drain flags: a container drains when its name or its node is listed."""

    def __init__(self, directory: Path | None) -> None:
        self.path = directory / "state.json" if directory is not None else None
        self.nodes: set[str] = set()
        self.containers: set[str] = set()
        self._seen: tuple[int, int, int] | None = None

    def drained(self, name: str, node: str) -> bool:
        return name in self.containers or node in self.nodes

    def drain(self, node: str | None, names: list[str]) -> None:
        if node is not None:
            self.nodes.add(node)
        else:
            self.containers.update(names)
        self.save()

    def ready(self, node: str | None, names: list[str], siblings: dict[str, list[str]]) -> None:
        """Back in service; ``siblings``: the other containers of each node concerned."""
        if node is not None:
            self.nodes.discard(node)
            self.containers.difference_update(names + siblings.get(node, []))
        else:
            self.containers.difference_update(names)
            for drained_node in set(siblings) & self.nodes:  # the rest of that node stays drained
                self.nodes.discard(drained_node)
                self.containers.update(set(siblings[drained_node]) - set(names))
        self.save()

    def _stat(self) -> tuple[int, int, int] | None:
        assert self.path is not None
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def refresh(self) -> bool:
        """Read the file if it changed since this process last read or wrote it."""
        if self.path is None:
            return False
        seen = self._stat()
        if seen == self._seen:
            return False
        self._seen = seen
        if seen is None:
            return False
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            nodes, containers = set(data["draining"]["nodes"]), set(data["draining"]["containers"])
        except (OSError, ValueError, KeyError, TypeError):
            return False  # half-written by hand or by another version: keep what we have
        changed = (nodes, containers) != (self.nodes, self.containers)
        self.nodes, self.containers = nodes, containers
        return changed

    def save(self) -> None:
        if self.path is None:
            return
        data = {"draining": {"nodes": sorted(self.nodes), "containers": sorted(self.containers)}}
        tmp = self.path.with_name(f".state.{os.getpid()}.tmp")
        with open(tmp, "w", encoding="utf-8") as out:
            json.dump(data, out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, self.path)
        self._seen = self._stat()


class Lease:
    """The exclusive ``flock`` on ``dispatch.lock``; held until the process ends."""

    def __init__(self, directory: Path) -> None:
        self.fd = os.open(directory / "dispatch.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self.held = False

    def try_acquire(self) -> bool:
        with contextlib.suppress(BlockingIOError):
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            self.held = True
        return self.held

    async def acquire(self) -> None:
        """Wait for the lease (a thread waits in ``flock``; the event loop runs on)."""
        if self.try_acquire():
            return
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()

        def got() -> None:
            if not done.done():
                done.set_result(None)

        def wait() -> None:
            fcntl.flock(self.fd, fcntl.LOCK_EX)
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile (stopping)
                loop.call_soon_threadsafe(got)

        # a daemon thread: a process that stops before getting the lease does not wait for it
        threading.Thread(target=wait, name="dispatch-lease", daemon=True).start()
        await done
        self.held = True

    def release(self) -> None:
        """Let the next process dispatch (the end of this one does it too)."""
        if self.fd >= 0:
            os.close(self.fd)  # a waiting thread, if any, gets the lock and it is dropped with the file
            self.fd = -1
            self.held = False
