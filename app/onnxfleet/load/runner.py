"""The load engine: K concurrent keep-alive workers sending the plan's bodies to one URL.

``run_load(plan)`` blocks in its own event loop and returns a record of every request;
``BackgroundLoad(plan)`` runs the same in a thread until it is stopped, so a test can keep
steady load on the fleet while Ansible changes it, then count every request.

With a rate, request *i* is due at *i/rate* s and its latency is counted from then, not
from when it could be sent (wrk2's correction of coordinated omission): a client that
falls behind its schedule, K requests in flight, sees the wait its requests would have had.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from onnxfleet.load.bodies import DEFAULT, EMPTY, Body
from onnxfleet.load.sample import DEFAULT_PATH

if TYPE_CHECKING:
    import aiohttp

_STOP_POLL_S = 0.05
# Latencies are measured with perf_counter: uvloop's loop.time() has millisecond steps.
_clock = time.perf_counter
_DETAIL_CHARS = 200
# RFC 9110 token: method and header-name characters
TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")


def target_url(url: str) -> str:
    """The URL requests go to: ``/run_model`` is appended when ``url`` has no path.

    A URL with a path (``http://host:5000/run_model``, ``http://host/v2/...``) is used as
    given, query string included.
    """
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"expected an http:// or https:// URL, got {url!r}")
    try:
        parts.port  # noqa: B018 (parsing the port is the check)
    except ValueError:
        raise ValueError(f"expected a numeric port in 0..65535, got {url!r}") from None
    if not parts.hostname:
        raise ValueError(f"expected a host in the URL, got {url!r}")
    path = parts.path if parts.path not in ("", "/") else DEFAULT_PATH
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))


@dataclass(frozen=True)
class LoadPlan:
    """What to send. ``n`` of 0 or None means unlimited: the run then needs a ``duration``
    or a stop event. With both ``n`` and ``duration``, whichever is reached first ends it.
    """

    url: str
    n: int | None = 100
    concurrency: int = 1
    duration: float | None = None
    # cycled: request i sends bodies[i % len]; None: the digit sample for POST, no body otherwise
    bodies: Sequence[Body] | None = field(default=None, repr=False)
    method: str = "POST"
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    token: str | None = field(default=None, repr=False)
    timeout: float = 30.0
    rate: float | None = None  # open loop: request i starts at i/rate s (at most `concurrency` at once)
    cacert: str | None = None  # PEM file of the CA(s) an https:// server must chain to (else the system's)

    def __post_init__(self) -> None:
        object.__setattr__(self, "url", target_url(self.url))
        if not TOKEN.match(self.method):
            raise ValueError(f"expected an HTTP method (a token such as GET, POST, PUT), got {self.method!r}")
        if self.bodies is None:
            object.__setattr__(self, "bodies", (DEFAULT,) if self.method == "POST" else (EMPTY,))
        elif not self.bodies:
            raise ValueError("expected at least one body")
        else:
            object.__setattr__(self, "bodies", tuple(self.bodies))
        if self.cacert is not None:
            if not self.url.startswith("https://"):
                raise ValueError(f"a CA certificate is only used with an https:// URL, got {self.url!r}")
            self.ssl_context()  # a missing or malformed file is a mistake in the plan
        if self.n is not None and self.n < 0:
            raise ValueError(f"the request count must be 0 (unlimited) or more, got {self.n}")
        if self.concurrency < 1:
            raise ValueError(f"the concurrency must be 1 or more, got {self.concurrency}")
        for name in ("duration", "timeout", "rate"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"the {name} must be a positive number, got {value}")

    @property
    def limit(self) -> int | None:
        """The request count, None when unlimited."""
        return self.n or None

    def ssl_context(self) -> ssl.SSLContext | None:
        """The context that verifies the server against ``cacert`` (None: aiohttp's default,
        the system's CAs)."""
        if self.cacert is None:
            return None
        try:
            return ssl.create_default_context(cafile=self.cacert)
        except ssl.SSLError:  # before OSError, its base class
            raise ValueError(f"expected PEM certificates in {self.cacert!r}") from None
        except OSError as exc:
            raise ValueError(f"cannot read the CA certificate {self.cacert!r}: {exc.strerror}") from None

    def request_headers(self, body: Body = DEFAULT) -> dict[str, str]:
        """What a request with ``body`` carries: the body's own headers, then the plan's
        (which win, so ``-H 'Content-Type: ...'`` is obeyed), then the token."""
        headers = {**body.headers, **self.headers}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        return headers


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """One request: ``status`` is None when no response came (``error`` says why).

    ``start_s + latency_s`` is when the answer (or the error) came; ``lag_s`` after
    ``start_s`` the request was sent.
    """

    start_s: float  # since the run started: when it was due (its scheduled start) with a rate, else sent
    latency_s: float  # from start_s to the end of the answer: the schedule lag plus the service time
    status: int | None
    container: str | None = None  # X-Container
    version: str | None = None  # X-Model-Version
    queue_wait_ms: float | None = None  # X-Queue-Wait-Ms
    error: str | None = None  # connect_refused, timeout, reset, disconnected...
    detail: str | None = None  # the exception, or the start of a non-2xx body
    code: str | None = None  # a non-2xx answer's {"error", "code"}: unauthorized, rate_limited...
    lag_s: float = 0.0  # how late it was sent, behind its schedule (0 without a rate)

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    @property
    def service_s(self) -> float:
        """From the send to the end of the answer."""
        return self.latency_s - self.lag_s

    def to_json(self) -> dict[str, Any]:
        entry = asdict(self)
        entry["start_s"] = round(entry["start_s"], 6)
        entry["latency_ms"] = round(entry.pop("latency_s") * 1000, 3)
        entry["lag_ms"] = round(entry.pop("lag_s") * 1000, 3)
        entry["service_ms"] = round(self.service_s * 1000, 3)
        return entry


@dataclass
class Results:
    plan: LoadPlan
    started_at: float = 0.0  # wall clock, seconds since the epoch
    duration_s: float = 0.0  # from the first request sent to the last answer
    interrupted: bool = False  # the stop event ended the run before its count or duration
    records: list[RequestRecord] = field(default_factory=list)  # appended live, in completion order

    @property
    def succeeded(self) -> int:
        return sum(record.ok for record in self.records)

    @property
    def failed(self) -> int:
        return len(self.records) - self.succeeded


@dataclass(frozen=True)
class Progress:
    plan: LoadPlan
    done: int
    failed: int
    in_flight: int
    elapsed_s: float

    @property
    def fraction(self) -> float | None:
        """How far the run is (0..1), None when only a stop event can end it."""
        parts = []
        if self.plan.limit:
            parts.append(self.done / self.plan.limit)
        if self.plan.duration:
            parts.append(self.elapsed_s / self.plan.duration)
        return min(1.0, max(parts)) if parts else None


ProgressCallback = Callable[[Progress], None]


def classify_error(exc: BaseException) -> str:  # noqa: PLR0911 (one return per kind)
    """A short name for why a request got no response."""
    import aiohttp

    if isinstance(exc, TimeoutError):  # asyncio.TimeoutError and aiohttp's timeouts
        return "timeout"
    if isinstance(exc, aiohttp.ClientConnectorError):
        os_error = exc.os_error
        if isinstance(os_error, ConnectionRefusedError):
            return "connect_refused"
        if isinstance(os_error, socket.gaierror):
            return "dns"
        if isinstance(exc, aiohttp.ClientSSLError) or isinstance(os_error, ssl.SSLError):
            return "tls"
        return "connect_error"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "disconnected"
    if isinstance(exc, ConnectionResetError) or isinstance(exc.__cause__, ConnectionResetError):
        return "reset"
    if isinstance(exc, aiohttp.ClientPayloadError):
        return "payload"
    if isinstance(exc, aiohttp.ClientResponseError):
        return "protocol"
    if isinstance(exc, aiohttp.ClientError | OSError):
        return "connection"
    return "other"


def _error_code(payload: bytes) -> str | None:
    """The ``code`` of an error envelope ``{"error": ..., "code": ...}``, if the body is one."""
    try:
        code = json.loads(payload).get("code")
    except (ValueError, AttributeError):
        return None
    return code if isinstance(code, str) else None


def _header_float(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


async def _send(
    session: aiohttp.ClientSession,
    plan: LoadPlan,
    request: tuple[bytes | None, dict[str, str]],
    t0: float,
    due: float | None,
) -> RequestRecord:
    sent = _clock()
    # the loop's timer may wake a little before `due` on this clock: the request starts when sent then
    start = sent if due is None else min(due, sent)
    data, request_headers = request
    try:
        async with session.request(plan.method, plan.url, data=data, headers=request_headers) as response:
            payload = await response.read()
    except Exception as exc:  # every failure becomes a record; none may end the run
        return RequestRecord(
            start_s=start - t0,
            latency_s=_clock() - start,
            status=None,
            error=classify_error(exc),
            detail=(str(exc) or type(exc).__name__)[:_DETAIL_CHARS],
            lag_s=sent - start,
        )
    ok = 200 <= response.status < 300
    headers = response.headers
    return RequestRecord(
        start_s=start - t0,
        latency_s=_clock() - start,
        lag_s=sent - start,
        status=response.status,
        container=headers.get("X-Container"),
        version=headers.get("X-Model-Version"),
        queue_wait_ms=_header_float(headers.get("X-Queue-Wait-Ms")),
        detail=None if ok else payload[:_DETAIL_CHARS].decode(errors="replace"),
        code=None if ok else _error_code(payload),
    )


async def _wait_until(due: float, stopping: asyncio.Event) -> bool:
    """Sleep until ``due`` (on ``_clock``); False when the run stops meanwhile."""
    delay = due - _clock()
    if delay > 0:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), delay)
    return not stopping.is_set()


async def _execute(
    plan: LoadPlan,
    results: Results,
    stop: threading.Event | None,
    on_progress: ProgressCallback | None,
    progress_interval: float,
) -> None:
    import aiohttp

    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    issued = in_flight = failed = 0

    async def worker() -> None:
        nonlocal issued, in_flight, failed
        while not stopping.is_set() and (plan.limit is None or issued < plan.limit):
            index, issued = issued, issued + 1
            due = t0 + index / plan.rate if plan.rate else None
            if due is not None and not await _wait_until(due, stopping):
                return
            in_flight += 1
            record = await _send(session, plan, requests[index % len(requests)], t0, due)
            in_flight -= 1
            failed += not record.ok
            results.records.append(record)

    def progress() -> Progress:
        return Progress(plan, len(results.records), failed, in_flight, _clock() - t0)

    async def watch_stop(event: threading.Event) -> None:
        while not event.is_set():
            await asyncio.sleep(_STOP_POLL_S)
        results.interrupted = not stopping.is_set()
        stopping.set()

    async def tick(callback: ProgressCallback) -> None:
        while True:
            await asyncio.sleep(progress_interval)
            callback(progress())

    requests = [(body.data, plan.request_headers(body)) for body in plan.bodies or ()]
    context = plan.ssl_context()
    connector = aiohttp.TCPConnector(limit=plan.concurrency, ssl=True if context is None else context)
    timeout = aiohttp.ClientTimeout(total=plan.timeout)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        t0 = _clock()
        results.started_at = time.time()
        if plan.duration:
            loop.call_later(plan.duration, stopping.set)
        helpers = []
        if stop is not None:
            helpers.append(loop.create_task(watch_stop(stop)))
        if on_progress is not None:
            helpers.append(loop.create_task(tick(on_progress)))
        workers = min(plan.concurrency, plan.limit or plan.concurrency)
        await asyncio.gather(*(worker() for _ in range(workers)))
        results.duration_s = _clock() - t0
        stopping.set()
        for helper in helpers:
            helper.cancel()
        await asyncio.gather(*helpers, return_exceptions=True)
        if on_progress is not None:
            on_progress(progress())


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def _run(
    plan: LoadPlan,
    results: Results,
    stop: threading.Event | None,
    on_progress: ProgressCallback | None,
    progress_interval: float,
) -> None:
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        runner.run(_execute(plan, results, stop, on_progress, progress_interval))


def run_load(
    plan: LoadPlan,
    *,
    stop: threading.Event | None = None,
    on_progress: ProgressCallback | None = None,
    progress_interval: float = 0.2,
) -> Results:
    """Send the plan's requests and return them all; callable from any thread.

    Setting ``stop`` ends the run early: no new request starts, those in flight finish
    (each within the plan's timeout) and are recorded.
    """
    if plan.limit is None and plan.duration is None and stop is None:
        raise ValueError("an unlimited run (n=0) needs a duration or a stop event")
    results = Results(plan)
    _run(plan, results, stop, on_progress, progress_interval)
    return results


class BackgroundLoad:
    """``run_load`` in a daemon thread: ``start()``, look at ``records`` live, ``stop()``.

    ::

        with BackgroundLoad(LoadPlan(url, n=0, concurrency=4)) as load:
            ...  # change the fleet
        assert load.results.failed == 0
    """

    def __init__(self, plan: LoadPlan) -> None:
        self.plan = plan
        self.results = Results(plan)
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="onnxfleet-load", daemon=True)

    def _main(self) -> None:
        try:
            _run(self.plan, self.results, self._stop, None, 0.2)
        except BaseException as exc:  # re-raised in the caller's thread by wait()
            self._error = exc

    def start(self) -> BackgroundLoad:
        self._thread.start()
        return self

    @property
    def records(self) -> list[RequestRecord]:
        """A copy of the requests finished so far."""
        return list(self.results.records)

    def wait(self, timeout: float | None = None) -> Results:
        """Wait for the run to end by itself (count or duration reached)."""
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError(f"the load run is still going after {timeout}s")
        if self._error is not None:
            raise RuntimeError("the load run failed") from self._error
        return self.results

    def stop(self, timeout: float | None = None) -> Results:
        """End the run: no new request; those in flight finish and are recorded."""
        self._stop.set()
        return self.wait(timeout)

    def __enter__(self) -> BackgroundLoad:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
