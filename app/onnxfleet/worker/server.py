"""gunicorn's threaded worker, with two changes:

- what gunicorn refuses itself (a request line or head it cannot parse, over its limits,
  a malformed chunk) is answered in the JSON error envelope like every other answer,
  instead of gunicorn's HTML page quoting the client's bytes;
- a thread that has answered on a keep-alive connection waits a few milliseconds for the
  next request on it before handing the connection back to the main thread's poller.
  gthread otherwise moves every request across two threads (poller -> pool -> poller, a
  pipe write and two wake-ups), which on this machine cost more than the request itself:
  a minimal WSGI app under gthread answered 1,700 requests/s on one keep-alive
  connection, 2,460/s with the wait (3,170/s vs 1,520/s with 4 connections).
"""

from __future__ import annotations

import select
from typing import Any

from gunicorn import glogging, util
from gunicorn.http import errors
from gunicorn.workers.gthread import ThreadWorker

from onnxfleet.oip import jsonio
from onnxfleet.oip.errors import envelope

# How long a thread that has just answered waits for the next request on the same
# keep-alive connection before giving it back to the poller. A client that sends its next
# request at once (an orchestrator with work queued, a load test) is served by the same
# thread; an idle one costs the thread this long, once.
KEEPALIVE_LINGER_SECONDS = 0.005

# The app's config key for the headers every answer carries (X-Model-Version, X-Container).
IDENTITY_HEADERS = "ONNXFLEET_IDENTITY_HEADERS"

# (exception classes, status, reason phrase, code, message), first match wins
REFUSALS: list[tuple[tuple[type[Exception], ...], int, str, str, str]] = [
    ((errors.LimitRequestLine,), 414, "URI Too Long", "uri_too_long", "the request line is too long"),
    (
        (errors.LimitRequestHeaders,),
        431,
        "Request Header Fields Too Large",
        "headers_too_large",
        "the request has too many header fields or one that is too long",
    ),
    (
        (errors.UnsupportedTransferCoding,),
        501,
        "Not Implemented",
        "not_implemented",
        "the only Transfer-Encoding accepted is chunked",
    ),
    (
        (errors.ExpectationFailed,),
        417,
        "Expectation Failed",
        "bad_request",
        "the only Expect accepted is 100-continue",
    ),
    (
        (errors.InvalidChunkSize, errors.ChunkMissingTerminator, errors.InvalidChunkExtension),
        400,
        "Bad Request",
        "bad_request",
        "the body's chunked encoding is malformed",
    ),
    (
        (errors.ParseException,),
        400,
        "Bad Request",
        "bad_request",
        "the request is not valid HTTP/1.1 (request line or header fields)",
    ),
]


def refusal(exc: BaseException) -> tuple[int, str, str, str]:
    """Status, reason, code and message for what gunicorn raised (500 when it is not the
    client's fault)."""
    if not isinstance(exc, (errors.InvalidResponseHeader, errors.InvalidResponseHeaderName)):
        for classes, status, reason, code, message in REFUSALS:
            if isinstance(exc, classes):
                return status, reason, code, message
    return 500, "Internal Server Error", "internal_error", "the worker failed on this request; see its log"


def _readable(sock: Any, seconds: float) -> bool:
    poller = select.poll()  # not select.select: descriptors may exceed FD_SETSIZE
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(seconds * 1000))


class Worker(ThreadWorker):
    def handle(self, conn: Any) -> Any:
        result = super().handle(conn)
        # True: answered and kept alive (False: closed; otherwise deferred to the poller)
        while result is True and self.alive:
            buffered = conn.parser.unreader.buf.getvalue()  # a pipelined request
            if not buffered and not _readable(conn.sock, KEEPALIVE_LINGER_SECONDS):
                break
            result = super().handle(conn)
        return result

    def handle_error(self, req: Any, client: Any, addr: Any, exc: BaseException) -> None:
        status, reason, code, message = refusal(exc)
        if status == 500:
            self.log.exception("error handling a request")
        else:
            self.log.warning("invalid request from %s: %s", (addr or ("",))[0], exc)
        body = jsonio.dumps(envelope(message, code))
        app = getattr(self, "wsgi", None)
        identity = getattr(app, "config", {}).get(IDENTITY_HEADERS, {})
        head = f"HTTP/1.1 {status} {reason}\r\nConnection: close\r\nContent-Type: application/json\r\n"
        head += "".join(f"{name}: {value}\r\n" for name, value in identity.items())
        head += f"Content-Length: {len(body)}\r\n\r\n"
        try:
            util.write_nonblock(client, head.encode("latin-1") + body)
        except Exception:  # the client is gone: nothing to tell it
            self.log.debug("failed to send an error answer")


class QuietAccessLogger(glogging.Logger):
    """gunicorn's logger without its own access log: the worker writes one JSON line per
    request itself, and gunicorn would otherwise build its Apache-style line for every
    request only to drop it (about a tenth of the worker's CPU per request)."""

    def access(self, resp: Any, req: Any, environ: Any, request_time: Any) -> None:
        return None
