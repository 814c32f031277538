"""Per-second history of the last five minutes, for the dashboard (answers, errors, latency, queue)."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from typing import Any

SECONDS = 300


class History:
    def __init__(self, queue_depth: Callable[[], int]) -> None:
        self.queue_depth = queue_depth
        # [t, answers, errors, sum of latency s, queue depth at the end of the second]
        self.seconds: deque[list[float]] = deque(maxlen=SECONDS)
        self._current = [float(int(time.time())), 0.0, 0.0, 0.0, 0.0]
        self._timer: asyncio.TimerHandle | None = None

    def start(self) -> None:
        self._timer = asyncio.get_running_loop().call_later(1.0 - time.time() % 1.0, self._tick)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _tick(self) -> None:
        self._roll()
        self._timer = asyncio.get_running_loop().call_later(1.0 - time.time() % 1.0, self._tick)

    def _roll(self) -> None:
        now = float(int(time.time()))
        if now > self._current[0]:
            self._current[4] = self.queue_depth()
            self.seconds.append(self._current)
            self._current = [now, 0.0, 0.0, 0.0, 0.0]

    def answered(self, status: int, elapsed: float) -> None:
        second = self._current
        if time.time() >= second[0] + 1.0:
            self._roll()
            second = self._current
        second[1] += 1
        second[3] += elapsed
        if status >= 500 or status == 429:
            second[2] += 1

    def view(self) -> list[dict[str, Any]]:
        return [
            {
                "t": int(t),
                "answers": int(n),
                "errors": int(e),
                "mean_ms": round(s / n * 1000, 3) if n else None,
                "queue_depth": int(q),
            }
            for t, n, e, s, q in self.seconds
        ]
