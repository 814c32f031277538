"""Generated hostile input against the HTTP surface: never a 500, a traceback or a hang.

Requests are built from generated request lines, header names and values (latin-1 bytes
such as ``\\xb2``, huge numbers, control characters) and bodies, then sent on a real
socket to the orchestrator (in this process, in front of a fast sim container). Every
answer must be well formed; an error answer is the JSON envelope; a 5xx only what the
fleet can cause (a deadline too short to be met). Garbage bytes must not stop the process
from answering ``/healthz`` on another connection.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from httptools import HttpParserError, HttpResponseParser
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.orchestrator.inproc import InProcess, in_process
from tests.orchestrator.orch_support import SimFleet, routes, tokens_file

FLEET_5XX = {"upstream_timeout", "queue_timeout"}  # a deadline of a few ms can cause these
FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture
def fuzz_target(sim: SimFleet, tmp_path: Path) -> Iterator[InProcess]:
    sim.mode(0, "ok", service_ms=1)
    table = routes(tmp_path / "routes.json", [("a/0", sim.url(0), "a")])
    token = tokens_file(tmp_path / "tokens", fuzz="secret")
    with in_process(table, "--max-body-bytes", "4096", "--api-tokens-file", str(token)) as orch:
        yield orch


class Answer:
    def __init__(self) -> None:
        self.status = 0
        self.headers: dict[bytes, bytes] = {}
        self.body = b""
        self.complete = False
        self.parser: HttpResponseParser | None = None

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self.complete:  # only the first answer counts
            self.headers[name.lower()] = value

    def on_body(self, body: bytes) -> None:
        if not self.complete:
            self.body += body

    def on_headers_complete(self) -> None:
        if not self.complete:
            assert self.parser is not None
            self.status = self.parser.get_status_code()

    def on_message_complete(self) -> None:
        self.complete = True


def exchange(port: int, data: bytes, wait: float = 3.0) -> Answer | None:
    """Send ``data``; the first answer, or None when none came (the request is incomplete)."""
    answer = Answer()
    parser = answer.parser = HttpResponseParser(answer)
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as sock:
        try:
            sock.sendall(data)
            while not answer.complete:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                parser.feed_data(chunk)
        except TimeoutError:
            return None
        except ConnectionResetError:
            pass
        except HttpParserError as exc:
            raise AssertionError(f"malformed answer to {data[:200]!r}: {exc}") from None
    if not answer.complete:
        return None
    return answer


def check(orch: InProcess, data: bytes, answer: Answer | None) -> None:
    assert orch.records.errors() == [], [r.getMessage() for r in orch.records.errors()]
    if answer is None:
        started = time.monotonic()
        health = exchange(orch.port, b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        assert health is not None
        assert health.status == 200
        assert time.monotonic() - started < 1.0
        return
    assert answer.status != 500, data[:300]
    if answer.status >= 400 and answer.headers.get(b"x-container") is None:
        body = json.loads(answer.body)
        assert set(body) >= {"error", "code"}, body
        assert isinstance(body["error"], str)
        assert body["error"]
        if answer.status >= 500:
            assert body["code"] in FLEET_5XX, body


METHODS = st.sampled_from(["GET", "POST", "HEAD", "PUT", "DELETE", "OPTIONS", "PATCH", "CONNECT", "TRACE"])
PATHS = st.one_of(
    st.sampled_from(
        ["/run_model", "/v2/models/m/infer", "/jobs", "/jobs/x", "/status", "/healthz", "/", "/admin/drain"]
    ),
    st.binary(min_size=1, max_size=60).map(lambda b: b"/" + b.replace(b" ", b"%20").replace(b"\r", b"")),
)
TOKEN = st.sampled_from([b"Bearer secret", b"Bearer wrong", b"bearer secret", b"Basic x", b"\xb2\xff", b""])
DEADLINE = st.one_of(
    st.integers(-(10**6), 10**6).map(lambda n: str(n).encode()),
    st.text("0123456789", min_size=9, max_size=5000).map(str.encode),  # huge numbers
    st.binary(max_size=12),
    st.sampled_from([b"\xb2", b"1e3", b" 5 ", b"0x10", b"\xef\xbc\x95", b"-0", b"00000000007"]),
)
HEADER_NAME = st.one_of(
    st.sampled_from([b"x-request-timeout-ms", b"content-type", b"expect", b"connection", b"host", b"x-a"]),
    st.binary(min_size=1, max_size=20),
)
HEADER_VALUE = st.binary(max_size=40)


@st.composite
def requests(draw: st.DrawFn) -> bytes:
    method = draw(METHODS).encode()
    path = draw(PATHS)
    if isinstance(path, str):
        path = path.encode()
    version = draw(st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b"HTTP/1.1 extra"]))
    headers = [(b"Host", b"t")]
    if draw(st.booleans()):
        headers.append((b"Authorization", draw(TOKEN)))
    if draw(st.booleans()):
        headers.append((b"X-Request-Timeout-Ms", draw(DEADLINE)))
    headers += draw(st.lists(st.tuples(HEADER_NAME, HEADER_VALUE), max_size=4))
    body = draw(st.binary(max_size=6000))
    if draw(st.booleans()):
        chunks = b"".join(
            b"%x\r\n%s\r\n" % (len(body[i : i + 999]), body[i : i + 999]) for i in range(0, len(body), 999)
        )
        headers.append((b"Transfer-Encoding", b"chunked"))
        body = chunks + b"0\r\n\r\n"
    else:
        headers.append((b"Content-Length", b"%d" % len(body)))
    head = b"%s %s %s\r\n" % (method, path, version)
    head += b"".join(b"%s: %s\r\n" % (name, value) for name, value in headers)
    return head + b"Connection: close\r\n\r\n" + body


@FUZZ
@given(data=requests())
def test_generated_requests_never_get_a_500(fuzz_target: InProcess, data: bytes) -> None:
    check(fuzz_target, data, exchange(fuzz_target.port, data))


@FUZZ
@given(value=DEADLINE)
def test_any_deadline_header_value_is_a_200_or_a_400(fuzz_target: InProcess, value: bytes) -> None:
    data = (
        b"POST /run_model HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer secret\r\n"
        b"X-Request-Timeout-Ms: %s\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}" % value
    )
    answer = exchange(fuzz_target.port, data)
    check(fuzz_target, data, answer)
    if answer is not None and b"\r" not in value and b"\n" not in value:
        text = value.strip(b" \t")
        valid = text.isdigit() and 0 < int(text) <= 86_400_000 and len(text) <= 8
        if valid:
            assert answer.status in (200, 503, 504)
        elif answer.status != 400:
            raise AssertionError(f"{value!r}: {answer.status} {answer.body[:200]!r}")


@FUZZ
@given(garbage=st.binary(min_size=1, max_size=3000))
def test_garbage_bytes_get_a_400_or_wait(fuzz_target: InProcess, garbage: bytes) -> None:
    data = garbage + b"\r\n\r\n"
    check(fuzz_target, data, exchange(fuzz_target.port, data, wait=0.3))
