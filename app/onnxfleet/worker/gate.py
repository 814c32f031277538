"""Admission to the model: ``slots`` inferences at a time, ``waiting`` more may wait.

Every request holds one of gunicorn's threads while it waits, so the number allowed to
wait is bounded: the remaining threads always answer health checks and metrics, and a
busy container never looks dead. Beyond the bound the answer is 429 + Retry-After.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager

from onnxfleet.worker.errors import ApiError


class InferenceGate:
    def __init__(self, slots: int, waiting: int) -> None:
        self.slots = slots
        self.capacity = slots + waiting
        self._waiting: deque[threading.Lock] = deque()
        self._lock = threading.Lock()
        self.admitted = 0  # requests between admit() and its end: waiting + running
        self.running = 0

    @contextmanager
    def admit(self) -> Iterator[None]:
        with self._lock:
            if self.admitted >= self.capacity:
                raise ApiError(
                    f"{self.slots} inference(s) running and {self.capacity - self.slots} waiting "
                    "(--max-concurrency, --max-waiting); retry later",
                    "busy",
                    429,
                    headers={"Retry-After": "1"},
                )
            self.admitted += 1
        try:
            yield
        finally:
            with self._lock:
                self.admitted -= 1

    @contextmanager
    def slot(self) -> Iterator[None]:
        """One of the ``slots``, in arrival order: a finishing request hands its slot to the
        longest waiting one directly, so a newcomer never overtakes it (a semaphore lets
        whichever thread runs first take a freed slot, which under the GIL left some
        requests waiting many times the average)."""
        with self._lock:
            turn = None
            if self.running < self.slots and not self._waiting:
                self.running += 1
            else:
                turn = threading.Lock()
                turn.acquire()
                self._waiting.append(turn)
        if turn is not None:
            turn.acquire()  # released by the request that hands its slot over
        try:
            yield
        finally:
            with self._lock:
                if self._waiting:
                    self._waiting.popleft().release()
                else:
                    self.running -= 1
