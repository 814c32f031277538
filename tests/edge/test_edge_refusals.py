"""What the edge refuses before the orchestrator sees a byte, and what it passes on: head and
body limits, chunked bodies, a head that does not arrive, /admin, the client's forwarding
headers, per-client rate and connection limits; the orchestrator's own refusals (401) pass
through; the edge's answers when the orchestrator is gone, broken or slow.

Each test uses its own client addresses (127.0.0.0/8 is loopback), so that the per-client
limits of one test do not touch another."""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.edge.edge_support import (
    ADMIN_TOKEN,
    FrontDoor,
    Haproxy,
    Ports,
    edge_variables,
    raw_listener,
    render,
    tls_connect,
)
from tests.edge.pki import Pki
from tests.orchestrator.orch_support import SimFleet, read_answer, wait_for

LIMIT = 1024 * 1024  # fleet_max_body_bytes in these tests
EDGE = {"edge_timeout_head_s": 2, "edge_rate_limit_requests": 20}


@pytest.fixture(scope="module")
def front(pki: Pki, sim_fleet: SimFleet) -> Iterator[FrontDoor]:
    with FrontDoor(pki, sim_fleet, edge=EDGE) as door:
        yield door


def exchange(front: FrontDoor, data: bytes, source: str) -> tuple[int, dict[str, str], bytes]:
    """Send raw bytes on a new TLS connection; the answer."""
    with tls_connect(front.ports.tls, front.pki.ca_file, source) as sock:
        sock.sendall(data)
        return read_answer(sock)


def answered(front: FrontDoor) -> int:
    return int(front.status()["totals"]["answered"])


def assert_envelope(answer: tuple[int, dict[str, str], bytes], status: int, code: str) -> dict[str, object]:
    got, headers, body = answer
    assert got == status, answer
    assert headers["content-type"] == "application/json"
    envelope = json.loads(body)
    assert envelope["code"] == code
    assert isinstance(envelope["error"], str)
    return dict(envelope)


def head_of(size: int) -> bytes:
    """A GET /healthz whose head is exactly ``size`` bytes."""
    start, end = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: ", b"\r\n\r\n"
    return start + b"a" * (size - len(start) - len(end)) + end


def test_the_largest_head_the_edge_passes_is_one_the_orchestrator_accepts(front: FrontDoor) -> None:
    """Above 64 KiB the edge answers 400 and closes; every head it lets through, with the
    headers it adds, is within the orchestrator's own limit (else a 431 would show)."""
    low, high = 1024, 64 * 1024 + 1024
    probe = 0
    while high - low > 1:
        middle = (low + high) // 2
        probe += 1
        if exchange(front, head_of(middle), f"127.0.3.{probe}")[0] == 200:
            low = middle
        else:
            high = middle
    assert 60 * 1024 < low <= 64 * 1024
    status, headers, _ = exchange(front, head_of(high), "127.0.3.100")
    assert (status, headers.get("connection")) == (400, "close")  # HAProxy 2.6's own HTML (see docs)


def test_header_lines_over_the_limit_are_refused(front: FrontDoor) -> None:
    def with_lines(count: int) -> bytes:
        extra = b"".join(b"X-H%d: 1\r\n" % i for i in range(count - 1))
        return b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + extra + b"\r\n"

    assert exchange(front, with_lines(89), "127.0.3.101")[0] == 200  # the orchestrator took it
    assert exchange(front, with_lines(90), "127.0.3.102")[0] == 400


def test_an_announced_body_over_the_limit_is_refused_before_it_is_sent(front: FrontDoor) -> None:
    before = answered(front)
    with tls_connect(front.ports.tls, front.pki.ca_file, "127.0.3.110") as sock:
        sock.sendall(b"POST /run_model HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % (LIMIT + 1))
        envelope = assert_envelope(read_answer(sock), 413, "payload_too_large")  # no body sent
    assert envelope["limit"] == LIMIT
    assert answered(front) == before  # the orchestrator never saw it
    # exactly the limit passes, all the way to a container
    answer = front.request(body=b"x" * LIMIT, source="127.0.3.111")
    assert (answer.status, answer.body["bytes"]) == (200, LIMIT)


def test_a_chunked_body_is_refused(front: FrontDoor) -> None:
    before = answered(front)
    request = b"POST /run_model HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n"
    assert_envelope(exchange(front, request, "127.0.3.120"), 411, "length_required")
    assert answered(front) == before


def test_a_head_that_does_not_arrive_in_time_is_closed(front: FrontDoor) -> None:
    with tls_connect(front.ports.tls, front.pki.ca_file, "127.0.3.130") as sock:
        started = time.monotonic()
        sock.sendall(b"POST /run_model HTTP/1.1\r\nHost: x\r\n")  # and nothing more
        status, headers, _ = read_answer(sock)
        waited = time.monotonic() - started
    assert (status, headers.get("connection")) == (408, "close")
    assert 1.5 < waited < 4  # edge_timeout_head_s: 2


@pytest.mark.parametrize(
    "path", ["/admin/reload", "/admin", "//admin/drain", "/%61dmin/reload", "/./admin/ready", "/ADMIN/reload"]
)
def test_admin_is_refused_on_the_public_side(front: FrontDoor, path: str) -> None:
    before = answered(front)
    request = b"POST %s HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\nContent-Length: 2\r\n\r\n{}" % (
        path.encode(),
        ADMIN_TOKEN.encode(),
    )
    assert_envelope(exchange(front, request, "127.0.3.140"), 403, "forbidden")
    assert answered(front) == before


def test_the_admin_api_is_reached_on_the_node_s_loopback(front: FrontDoor) -> None:
    assert front.admin("POST", "/admin/reload").status == 200
    assert front.admin("GET", "/status").body["dispatching"] is True
    # a path that only looks like it is the orchestrator's to answer
    answer = front.request("GET", "/administrator", body=None, source="127.0.3.141")
    assert (answer.status, answer.body["code"]) == (404, "not_found")


@pytest.mark.parametrize("token", [None, "wrong-token"])
def test_a_missing_or_wrong_token_gets_the_orchestrator_s_401(front: FrontDoor, token: str | None) -> None:
    answer = front.request(token=token, source="127.0.3.150")
    assert (answer.status, answer.body["code"]) == (401, "unauthorized")
    assert answer.header("WWW-Authenticate") == "Bearer"
    assert front.request(source="127.0.3.150").status == 200


def test_client_sent_forwarding_headers_are_replaced(front: FrontDoor) -> None:
    spoofed = {
        "X-Forwarded-For": "6.6.6.6",
        "Forwarded": "for=6.6.6.6",
        "X-Real-IP": "6.6.6.6",
        "X-Forwarded-Proto": "http",
    }
    logged = len(front.access_log())
    assert front.request(headers=spoofed, source="127.0.3.160").status == 200
    # the access log line is written after the answer
    wait_for(lambda: len(front.access_log()) > logged, what="its access log line")
    assert front.access_log()[-1]["forwarded_for"] == "127.0.3.160"


def test_a_client_over_its_rate_gets_429_and_others_do_not(front: FrontDoor) -> None:
    """edge_rate_limit_requests: 20 per 10 s here, on one keep-alive connection."""
    conn = http.client.HTTPSConnection(
        "localhost",
        front.ports.tls,
        timeout=10,
        source_address=("127.0.3.170", 0),
        context=ssl.create_default_context(cafile=str(front.pki.ca_file)),
    )
    statuses = []
    for _ in range(30):
        conn.request("GET", "/healthz")
        response = conn.getresponse()
        body = response.read()
        statuses.append(response.status)
        if response.status == 429:
            refused = (
                response.getheader("Retry-After"),
                response.getheader("Strict-Transport-Security"),
                body,
            )
    conn.close()
    assert statuses == [200] * 20 + [429] * 10
    assert refused[:2] == ("10", "max-age=63072000")
    assert b'"code": "rate_limited"' in refused[2]
    assert front.request(source="127.0.3.171").status == 200  # another address is not limited


def connections_counted(front: FrontDoor, source: str) -> int:
    """conn_cur of ``source`` in the public frontend's stick table (0 when it has no entry)."""
    for line in front.haproxy.cli("@1 show table public").splitlines():
        if f"key=::ffff:{source} " in line:
            return int(line.split("conn_cur=")[1].split()[0])
    return 0


def test_one_address_gets_at_most_its_connections(front: FrontDoor) -> None:
    """edge_client_max_connections (100): the 101st connection from one address is closed at
    once; another address still connects."""
    held = [
        socket.create_connection(("127.0.0.1", front.ports.tls), source_address=("127.0.3.180", 0))
        for _ in range(100)
    ]
    try:
        # HAProxy accepts in batches: a 101st sent before it has counted all 100 could take
        # the place of one of them. Held connections end after edge_timeout_client_s (10 s).
        wait_for(lambda: connections_counted(front, "127.0.3.180") == 100, timeout=5, what="100 counted")
        with pytest.raises((ssl.SSLError, ConnectionResetError, BrokenPipeError)):
            tls_connect(front.ports.tls, front.pki.ca_file, "127.0.3.180").close()
        assert connections_counted(front, "127.0.3.180") == 100
        assert front.request("GET", "/healthz", body=None, source="127.0.3.181").status == 200
    finally:
        for sock in held:
            sock.close()


@pytest.fixture
def edge_alone(pki: Pki, tmp_path: Path) -> Iterator[tuple[Ports, Haproxy, Path]]:
    """The edge with nothing of ours behind it: the tests put what they like on the blue port."""
    ports = Ports()
    config = render(tmp_path / "haproxy.cfg", edge_variables(ports, pki, tmp_path, edge_timeout_server_s=1))
    haproxy = Haproxy(config, ports.tls).start()
    try:
        yield ports, haproxy, pki.ca_file
    finally:
        haproxy.stop()


def _post(ports: Ports, ca_file: Path) -> tuple[int, dict[str, str], bytes]:
    with tls_connect(ports.tls, ca_file) as sock:
        sock.sendall(b"POST /run_model HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}")
        return read_answer(sock)


def test_no_orchestrator_gets_503_after_the_retries(edge_alone: tuple[Ports, Haproxy, Path]) -> None:
    ports, _, ca_file = edge_alone
    started = time.monotonic()
    answer = _post(ports, ca_file)
    assert 2.5 < time.monotonic() - started < 6  # 3 retries, a second apart
    assert_envelope(answer, 503, "unavailable")
    assert answer[1]["retry-after"] == "1"


@pytest.mark.parametrize(
    ("behaviour", "status", "code"), [("garbage", 502, "upstream_error"), ("silent", 504, "upstream_timeout")]
)
def test_a_broken_or_silent_orchestrator_gets_json(
    edge_alone: tuple[Ports, Haproxy, Path], behaviour: str, status: int, code: str
) -> None:
    ports, _, ca_file = edge_alone
    with raw_listener(ports.blue, behaviour):
        assert_envelope(_post(ports, ca_file), status, code)
