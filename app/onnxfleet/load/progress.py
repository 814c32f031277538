"""Progress on stderr: a redrawn bar on a terminal, a plain line every few seconds otherwise."""

from __future__ import annotations

import time
from typing import TextIO

from onnxfleet.load.runner import Progress

BAR_WIDTH = 30
PLAIN_EVERY_S = 2.0


def describe(progress: Progress) -> str:
    rate = progress.done / progress.elapsed_s if progress.elapsed_s > 0 else 0.0
    limit = progress.plan.limit
    count = f"{progress.done}/{limit}" if limit else f"{progress.done}"
    return (
        f"{count} requests  {rate:.1f} req/s  {progress.failed} failed"
        f"  {progress.in_flight} in flight  {progress.elapsed_s:.1f} s"
    )


class ProgressPrinter:
    """The runner's ``on_progress`` callback; ``close()`` ends the bar's line."""

    def __init__(self, stream: TextIO, tty: bool) -> None:
        self.stream = stream
        self.tty = tty
        self._drawn = False
        self._last_plain = time.monotonic()

    def __call__(self, progress: Progress) -> None:
        if self.tty:
            fraction = progress.fraction
            bar = ""
            if fraction is not None:
                filled = round(fraction * BAR_WIDTH)
                bar = f"[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {fraction * 100:3.0f}%  "
            # \r and "erase to end of line": the line is redrawn in place
            self.stream.write(f"\r{bar}{describe(progress)}\x1b[K")
            self._drawn = True
        elif time.monotonic() - self._last_plain >= PLAIN_EVERY_S:
            self._last_plain = time.monotonic()
            fraction = progress.fraction
            done = f"  {fraction * 100:.0f}% done" if fraction is not None else ""
            self.stream.write(f"onnxfleet load: {describe(progress)}{done}\n")
        self.stream.flush()

    def close(self) -> None:
        if self._drawn:
            self.stream.write("\n")
            self.stream.flush()
