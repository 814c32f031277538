"""Hostile clients at the HTTP level, on raw sockets against a real worker: bodies over
the limit (announced, streamed, chunked), stalled bodies, heads gunicorn itself refuses.
Each gets its answer at once, in the JSON envelope, and the worker keeps serving."""

from __future__ import annotations

import json
import socket
import struct
import time
import weakref
from collections.abc import Iterator
from typing import BinaryIO

import pytest
import requests

from tests.support import Service
from tests.worker.worker_support import DIGITS, worker

LIMIT = 1 << 20
ROW = [0.0] * 64


@pytest.fixture(scope="module")
def hostile_worker() -> Iterator[Service]:
    args = ["--intra-op-threads", "1", "--read-timeout", "1", "--max-body-bytes", str(LIMIT)]
    with worker(DIGITS, *args, container="hostile-0") as service:
        yield service


@pytest.fixture
def served_after(hostile_worker: Service) -> Iterator[Service]:
    yield hostile_worker
    response = requests.post(hostile_worker.url + "/run_model", json={"inputs": [ROW]}, timeout=10)
    assert response.status_code == 200
    assert "Traceback" not in hostile_worker.log()


def connect(service: Service, timeout: float = 5) -> socket.socket:
    return socket.create_connection(("127.0.0.1", service.port), timeout=timeout)


def read_answer(sock: socket.socket) -> tuple[int, dict[str, str], dict]:
    """Status, headers and JSON body of the next answer on ``sock`` (Content-Length
    framed); bytes of a following answer stay for the next call."""
    reader = READERS.setdefault(sock, sock.makefile("rb"))
    status_line = reader.readline()
    assert status_line, "connection closed before an answer"
    headers = {}
    while (line := reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.lower()] = value.strip()
    body = reader.read(int(headers["content-length"]))
    return int(status_line.split()[1]), headers, json.loads(body)


READERS: weakref.WeakKeyDictionary[socket.socket, BinaryIO] = weakref.WeakKeyDictionary()


def post_head(path: str, *headers: str) -> bytes:
    return ("\r\n".join([f"POST {path} HTTP/1.1", "Host: worker", *headers]) + "\r\n\r\n").encode()


@pytest.mark.parametrize("path", ["/run_model", "/v2/models/digits/infer"])
def test_announced_oversize_body_is_refused_before_it_is_read(served_after: Service, path: str) -> None:
    """The client waits for the answer before sending any of its 50 MiB."""
    with connect(served_after) as sock:
        started = time.monotonic()
        sock.sendall(post_head(path, f"Content-Length: {50 << 20}"))
        status, headers, body = read_answer(sock)
        elapsed = time.monotonic() - started
    assert (status, body["code"]) == (413, "payload_too_large")
    assert body["error"] == f"the body is larger than {LIMIT} bytes (--max-body-bytes)"
    assert headers["x-container"] == "hostile-0"
    # A worker that waited for the body would answer 408 after its 1 s --read-timeout; the
    # bound is wide because CI runs this beside fleets loading images.
    assert elapsed < 5.0


def test_oversize_body_sent_whole_still_gets_413(served_after: Service) -> None:
    """Most clients send the whole body before reading: they get the 413, not a reset."""
    body = json.dumps({"inputs": [ROW] * 40_000}).encode()
    assert len(body) > 8 * LIMIT
    response = requests.post(served_after.url + "/run_model", data=body, timeout=30)
    assert response.status_code == 413
    assert response.json()["code"] == "payload_too_large"


def test_chunked_body_is_cut_at_the_limit(served_after: Service) -> None:
    """A chunked body is counted as it comes: the 413 arrives once the limit is passed,
    while the client is still sending (and never finishes)."""
    chunk = b"[" + b"0," * 32_000 + b"0]"
    with connect(served_after) as sock:
        sock.sendall(post_head("/run_model", "Content-Type: application/json", "Transfer-Encoding: chunked"))
        sent = 0
        while sent <= LIMIT + len(chunk):
            sock.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            sent += len(chunk)
        status, _, body = read_answer(sock)
    assert (status, body["code"]) == (413, "payload_too_large")


@pytest.mark.parametrize("body_sent", [b"", b'{"inputs": [[0, 0'])
def test_stalled_body_gets_408(served_after: Service, body_sent: bytes) -> None:
    """The worker's --read-timeout (1 s here), not gunicorn's 30 s: CI runs this beside
    fleets loading images, where a process can stall seconds on a write (it once answered
    after more than 5 s), hence the wide upper bound."""
    with connect(served_after, timeout=30) as sock:
        started = time.monotonic()
        sock.sendall(post_head("/run_model", "Content-Length: 1000") + body_sent)
        status, _, body = read_answer(sock)
        elapsed = time.monotonic() - started
    assert (status, body["code"]) == (408, "request_timeout")
    assert "--read-timeout" in body["error"]
    assert 0.9 < elapsed < 15


MANY_HEADERS = b"".join(b"X-%d: y\r\n" % i for i in range(200))
BIG_HEADER = b"X-Big: " + b"a" * 9000 + b"\r\n"
BAD_CHUNK = b"zz\r\n{}\r\n0\r\n\r\n"


@pytest.mark.parametrize(
    ("request_bytes", "status", "code"),
    [
        (b"GET /" + b"a" * 5000 + b" HTTP/1.1\r\nHost: w\r\n\r\n", 414, "uri_too_long"),
        (b"GET /healthz HTTP/9.9\r\nHost: w\r\n\r\n", 400, "bad_request"),
        (b"GET /healthz HTTP/1.1\r\nHost: w\r\nBad Header: x\r\n\r\n", 400, "bad_request"),
        (b"GET /healthz HTTP/1.1\r\n" + MANY_HEADERS + b"\r\n", 431, "headers_too_large"),
        (b"GET /healthz HTTP/1.1\r\nHost: w\r\n" + BIG_HEADER + b"\r\n", 431, "headers_too_large"),
        (post_head("/run_model", "Transfer-Encoding: br, chunked"), 501, "not_implemented"),
        (post_head("/run_model", "Transfer-Encoding: chunked") + BAD_CHUNK, 400, "bad_request"),
    ],
    ids=["long request line", "HTTP/9.9", "space in a header name", "200 headers", "9000-byte header",
         "unknown transfer coding", "malformed chunk size"],
)  # fmt: skip
def test_what_gunicorn_refuses_is_answered_in_the_envelope(
    served_after: Service, request_bytes: bytes, status: int, code: str
) -> None:
    with connect(served_after) as sock:
        sock.sendall(request_bytes)
        got, headers, body = read_answer(sock)
    assert got == status
    assert headers["content-type"] == "application/json"
    assert headers["x-container"] == "hostile-0"
    assert body["code"] == code
    assert isinstance(body["error"], str)
    assert "<" not in body["error"]
    assert "a" * 100 not in body["error"]  # the client's bytes are not echoed


def test_non_finite_binary_input_is_refused(served_after: Service) -> None:
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "shape": [1, 64],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": 256},
                }
            ]
        }
    ).encode()
    data = struct.pack("<64f", *([0.0] * 10 + [float("inf")] + [0.0] * 53))
    response = requests.post(
        served_after.url + "/v2/models/digits/infer",
        data=header + data,
        headers={"Inference-Header-Content-Length": str(len(header))},
        timeout=10,
    )
    assert response.status_code == 422
    assert response.json()["error"].startswith("input 'input' has inf at [0, 10]; only finite numbers")
