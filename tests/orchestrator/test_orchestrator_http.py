"""The HTTP layer (raw ASGI on uvicorn): routing, methods, bodies, early answers, logs, stop."""

from __future__ import annotations

import json
import signal
import socket
import time
from pathlib import Path

import pytest

from onnxfleet.orchestrator.asgi import HTTPError, Reply, Request, Router
from tests.orchestrator.orch_support import (
    SimFleet,
    call,
    orchestrator,
    raw_request,
    routes,
    status,
    wait_for,
)


def _answer(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """Read one HTTP answer (Content-Length framed) from ``sock``."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed after {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    while len(body) < int(headers.get("content-length", "0")):
        chunk = sock.recv(65536)
        assert chunk, "connection closed in the body"
        body += chunk
    return int(lines[0].split()[1]), headers, body


def test_methods_head_and_allow(sim: SimFleet, tmp_path: Path) -> None:
    table = routes(tmp_path / "routes.json", [("a/0", sim.url(0), "a")])
    with orchestrator(table) as orch:
        code, headers, body = call(orch.url + "/run_model")
        assert (code, body["error"], headers["Allow"]) == (405, "method_not_allowed", "POST")
        code, headers, body = call(orch.url + "/status", "DELETE")
        assert (code, headers["Allow"]) == (405, "GET, HEAD")
        assert body["reason"] == "DELETE is not allowed on /status"
        code, headers, body = call(orch.url + "/jobs/abc", "POST", {})
        assert (code, headers["Allow"]) == (405, "GET, HEAD")
        # HEAD on a GET route: the GET's headers, no body
        code, headers, body = call(orch.url + "/healthz", "HEAD")
        assert (code, body) == (200, "")
        assert int(headers["Content-Length"]) == len(json.dumps({"status": "alive"}))
        assert call(orch.url + "/run_model", "HEAD")[0] == 405
        for path in ("/v2/models//infer", "/v2/models/a/b/infer", "/jobs/", "/status/"):
            code, _, body = call(orch.url + path, "POST", {})
            assert (code, body["reason"]) == (404, f"no route {path}"), path
        assert sim.stats(0)["received"] == 0


def test_the_path_is_forwarded_as_sent(sim: SimFleet, tmp_path: Path) -> None:
    table = routes(tmp_path / "routes.json", [("a/0", sim.url(0), "a")])
    with orchestrator(table) as orch:
        code, headers, body = call(orch.url + "/v2/models/digits%20v2/infer?x=1", "POST", {})
        assert code == 200
        assert body["path"] == "/v2/models/digits%20v2/infer"
        assert headers["X-Container"] == "a/0"


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_early_answers_reach_a_client_still_sending(sim: SimFleet, tmp_path: Path, framing: str) -> None:
    """413 and 401 come before the body is read: the rest is read and dropped, so a client
    that sends its whole body before reading gets them, not a connection reset."""
    table = routes(tmp_path / "routes.json", [("a/0", sim.url(0), "a")])
    api_token = tmp_path / "api.token"
    api_token.write_text("secret\n")
    body = b"x" * 32_000_000  # more than the socket buffers hold
    chunked = framing == "chunked"
    framing_header = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {len(body)}"
    payload = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body) if chunked else body
    with orchestrator(table, "--max-body-bytes", "100000", "--api-token-file", str(api_token)) as orch:
        for auth, expected, error in (
            ("Bearer secret", 413, "request_entity_too_large"),
            ("Bearer wrong", 401, "unauthorized"),
        ):
            sock = socket.create_connection(("127.0.0.1", orch.port), timeout=10)
            sock.sendall(
                f"POST /run_model HTTP/1.1\r\nHost: t\r\nAuthorization: {auth}\r\n{framing_header}\r\n"
                "Connection: close\r\n\r\n".encode()
            )
            sock.sendall(payload)  # like most clients: the whole body, then the answer
            code, _, answer = _answer(sock)
            sock.close()
            assert (code, json.loads(answer)["error"]) == (expected, error)
        assert sim.stats(0)["received"] == 0
        # the connection stays usable after a refused body when the client keeps it
        sock = socket.create_connection(("127.0.0.1", orch.port), timeout=10)
        head = b"POST /run_model HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer secret\r\n"
        head += b"Content-Length: %d\r\n\r\n"
        big = b"y" * 200_000
        sock.sendall(head % len(big) + big)
        assert _answer(sock)[0] == 413
        sock.sendall(head % 2 + b"{}")
        code, headers, _ = _answer(sock)
        sock.close()
        assert (code, headers["x-container"]) == (200, "a/0")


def test_logs_are_json_lines_without_server_access_lines(sim: SimFleet, tmp_path: Path) -> None:
    table = routes(tmp_path / "routes.json", [("a/0", sim.url(0), "a")])
    with orchestrator(table) as orch:
        assert call(orch.url + "/run_model", "POST", {})[0] == 200
        assert call(orch.url + "/nowhere")[0] == 404
        lines = orch.log().splitlines()
    entries = [json.loads(line) for line in lines]  # every line is one JSON object
    assert {e["service"] for e in entries} == {"orchestrator"}
    # the server's own messages go through our JSON handler, without their ANSI copy
    server = [e["msg"] for e in entries if e["logger"] == "uvicorn.error"]
    assert "Application startup complete." in server
    assert all("color_message" not in e for e in entries)
    # one access line per inference request, ours; none from the servers
    assert [e["path"] for e in entries if e["logger"] == "onnxfleet.orchestrator.access"] == ["/run_model"]
    assert not [e for e in entries if e["logger"] in ("uvicorn.access", "gunicorn.access")]


def test_sigterm_lets_requests_in_flight_finish(sim: SimFleet, tmp_path: Path) -> None:
    sim.mode(0, "ok", service_ms=800)
    table = routes(tmp_path / "routes.json", [("a/0", sim.url(0), "a")])
    with orchestrator(table) as orch:
        held = raw_request(orch.port, request_id="held")
        wait_for(lambda: status(orch)["totals"]["in_flight"] == 1, what="in flight")
        assert orch.proc is not None
        orch.proc.send_signal(signal.SIGTERM)  # the arbiter: it stops its worker gracefully
        started = time.monotonic()
        assert held.recv(65536).startswith(b"HTTP/1.1 200")
        held.close()
        assert orch.proc.wait(15) == 0
        assert time.monotonic() - started < 10
        log = orch.log()
    assert "Application shutdown complete" in log
    assert "Traceback" not in log


def _request(path: str, method: str = "GET") -> Request:
    scope = {"method": method, "path": path, "raw_path": path.encode(), "headers": [], "client": None}

    async def receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    return Request(scope, receive)


def test_router_patterns() -> None:
    async def a(_request: Request) -> Reply:
        raise AssertionError

    async def b(_request: Request) -> Reply:
        raise AssertionError

    router = Router()
    router.add("POST", "/v2/models/{name}/infer", a)
    router.add("GET", "/jobs/{id}", b)
    request = _request("/v2/models/digits/infer", "POST")
    assert router.find(request) is a
    assert request.params == {"name": "digits"}
    request = _request("/jobs/abc")
    assert router.find(request) is b
    assert request.params == {"id": "abc"}
    assert router.find(_request("/jobs/abc", "HEAD")) is b
    for path in (
        "/v2/models//infer",
        "/v2/models/a/b/infer",
        "/v2/models/{x}/infer",
        "/jobs/",
        "/jobs/a/b",
        "/",
    ):
        with pytest.raises(HTTPError) as err:
            router.find(_request(path, "POST"))
        assert err.value.status == 404, path
    with pytest.raises(HTTPError) as err:
        router.find(_request("/jobs/abc", "POST"))
    assert (err.value.status, list(err.value.headers)) == (405, [(b"allow", b"GET, HEAD")])
