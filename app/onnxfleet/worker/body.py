"""Reading request bodies within the limit, and refusing those over it without making
anyone wait.

A body announced over the limit (Content-Length) is refused before any of it is read, so
a client that waits for an answer before sending (``Expect``-style) gets its 413 at once.
A chunked body is counted as it is read and cut at the limit. After a 413 the unread
rest is drained, bounded in bytes and time, so that a client that sends the whole body
before reading (most do) sees the 413 rather than a connection reset.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable
from typing import Any

from werkzeug.exceptions import RequestEntityTooLarge

from onnxfleet.worker.errors import ApiError

log = logging.getLogger("onnxfleet.worker")

# After a 413: discard at most this much of the rest, within this time, waiting at most
# DRAIN_IDLE_SECONDS for each piece.
DRAIN_BYTES = 16 << 20
DRAIN_SECONDS = 10.0
DRAIN_IDLE_SECONDS = 1.0


def _set_timeout(environ: dict[str, Any], seconds: float | None) -> float | None:
    sock = environ.get("gunicorn.socket")
    if not isinstance(sock, socket.socket):
        return None
    previous = sock.gettimeout()
    sock.settimeout(seconds)
    return previous


def read_body(environ: dict[str, Any], content_length: int | None, limit: int, timeout: float) -> bytes:
    """The raw body, at most ``limit`` bytes: RequestEntityTooLarge beyond (announced or
    counted), 408 when nothing arrives for ``timeout`` seconds, 400 when the chunked encoding is malformed or
    the client goes away. Read from gunicorn's stream directly: werkzeug's
    max_content_length stream silently truncates a chunked body at the limit."""
    if content_length is not None and content_length > limit:
        raise RequestEntityTooLarge()
    stream = environ["wsgi.input"]
    parts: list[bytes] = []
    size = 0
    previous = _set_timeout(environ, timeout)
    try:
        while chunk := stream.read(1 << 16):
            size += len(chunk)
            if size > limit:
                raise RequestEntityTooLarge()
            parts.append(chunk)
    except TimeoutError:
        raise ApiError(
            f"the body stalled: nothing came for {timeout:g} s (--read-timeout)", "request_timeout", 408
        ) from None
    except RequestEntityTooLarge:
        raise
    except Exception as exc:  # gunicorn's parse errors on a malformed chunk, a disconnect
        log.info("unreadable request body: %r", exc)
        raise ApiError(
            "the request body could not be read: its chunked encoding is malformed or the client "
            "went away before sending all of it",
            "bad_request",
            400,
        ) from None
    finally:
        _set_timeout(environ, previous)
    return b"".join(parts)


def drainer(environ: dict[str, Any]) -> Callable[[], None]:
    """What to run once a refusal has been sent: discard the rest of the body, bounded."""

    def drain() -> None:
        stream = environ["wsgi.input"]
        left, deadline = DRAIN_BYTES, time.monotonic() + DRAIN_SECONDS
        previous = _set_timeout(environ, DRAIN_IDLE_SECONDS)
        try:
            while left > 0 and time.monotonic() < deadline:
                chunk = stream.read(min(left, 1 << 16))
                if not chunk:
                    return
                left -= len(chunk)
        except Exception:  # a timeout, a malformed chunk, a client gone: the answer is out
            return
        finally:
            _set_timeout(environ, previous)

    return drain
