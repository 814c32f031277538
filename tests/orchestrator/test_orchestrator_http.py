"""The HTTP layer: routing, methods, bodies, early answers, framing; logs and stop (real process)."""

from __future__ import annotations

import json
import signal
import socket
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from onnxfleet.orchestrator.errors import HTTPError
from onnxfleet.orchestrator.messages import Reply, Request
from onnxfleet.orchestrator.router import Router
from tests.orchestrator.inproc import in_process
from tests.orchestrator.orch_support import (
    SimFleet,
    call,
    orchestrator,
    raw_request,
    read_answer,
    routes,
    status,
    tokens_file,
    wait_for,
)
from tests.support import free_port


def test_methods_head_and_allow(sim: SimFleet, tmp_path: Path) -> None:
    table = routes(tmp_path / "routes.json", [("a/0", sim.url(0), "a")])
    with in_process(table) as orch:
        code, headers, body = call(orch.url + "/run_model")
        assert (code, body["code"], headers["Allow"]) == (405, "method_not_allowed", "POST")
        code, headers, body = call(orch.url + "/status", "DELETE")
        assert (code, headers["Allow"]) == (405, "GET, HEAD")
        assert body["error"] == "DELETE is not allowed on /status: expected GET, HEAD"
        code, headers, body = call(orch.url + "/jobs/abc", "POST", {})
        assert (code, headers["Allow"]) == (405, "GET, HEAD")
        # HEAD on a GET route: the GET's headers, no body
        code, headers, body = call(orch.url + "/healthz", "HEAD")
        assert (code, body) == (200, "")
        assert int(headers["Content-Length"]) == len(json.dumps({"status": "alive"}))
        assert call(orch.url + "/run_model", "HEAD")[0] == 405
        for path in ("/v2/models//infer", "/v2/models/a/b/infer", "/jobs/", "/status/"):
            code, _, body = call(orch.url + path, "POST", {})
            assert (code, body["code"]) == (404, "not_found"), path
            assert body["error"].startswith(f"no route {path}:")
        assert sim.stats(0)["received"] == 0


def test_the_path_is_forwarded_as_sent(sim: SimFleet, tmp_path: Path) -> None:
    table = routes(tmp_path / "routes.json", [("a/0", sim.url(0), "a")])
    with in_process(table) as orch:
        code, headers, body = call(orch.url + "/v2/models/digits%20v2/infer?x=1", "POST", {})
        assert code == 200
        assert body["path"] == "/v2/models/digits%20v2/infer"
        assert headers["X-Container"] == "a/0"


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_early_answers_reach_a_client_still_sending(sim: SimFleet, tmp_path: Path, framing: str) -> None:
    """413 and 401 come before the body is read: the rest is read and dropped, so a client
    that sends its whole body before reading gets them, not a connection reset."""
    table = routes(tmp_path / "routes.json", [("a/0", sim.url(0), "a")])
    api_token = tokens_file(tmp_path / "tokens", client="secret")
    body = b"x" * 32_000_000  # more than the socket buffers hold
    chunked = framing == "chunked"
    framing_header = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {len(body)}"
    payload = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body) if chunked else body
    with in_process(table, "--max-body-bytes", "100000", "--api-tokens-file", str(api_token)) as orch:
        for auth, expected, error in (
            ("Bearer secret", 413, "payload_too_large"),
            ("Bearer wrong", 401, "unauthorized"),
        ):
            sock = socket.create_connection(("127.0.0.1", orch.port), timeout=10)
            sock.sendall(
                f"POST /run_model HTTP/1.1\r\nHost: t\r\nAuthorization: {auth}\r\n{framing_header}\r\n"
                "Connection: close\r\n\r\n".encode()
            )
            sock.sendall(payload)  # like most clients: the whole body, then the answer
            code, _, answer = read_answer(sock)
            sock.close()
            assert (code, json.loads(answer)["code"]) == (expected, error)
        assert sim.stats(0)["received"] == 0
        # the connection stays usable after a refused body when the client keeps it
        sock = socket.create_connection(("127.0.0.1", orch.port), timeout=10)
        head = b"POST /run_model HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer secret\r\n"
        head += b"Content-Length: %d\r\n\r\n"
        big = b"y" * 200_000
        sock.sendall(head % len(big) + big)
        assert read_answer(sock)[0] == 413
        sock.sendall(head % 2 + b"{}")
        code, headers, _ = read_answer(sock)
        sock.close()
        assert (code, headers["x-container"]) == (200, "a/0")


def test_a_refusal_is_sent_before_the_body_arrives(sim: SimFleet, tmp_path: Path) -> None:
    """A client that waits for an answer before sending more gets it at once."""
    table = routes(tmp_path / "routes.json", [("a/0", sim.url(0), "a")])
    with in_process(table, "--max-body-bytes", "1000") as orch:
        sock = socket.create_connection(("127.0.0.1", orch.port), timeout=5)
        sock.sendall(b"POST /run_model HTTP/1.1\r\nHost: t\r\nContent-Length: 5000000\r\n\r\n")
        started = time.monotonic()
        code, headers, body = read_answer(sock)
        assert (code, json.loads(body)["code"]) == (413, "payload_too_large")
        assert time.monotonic() - started < 1
        # Expect: 100-continue and a refusal: the final answer instead of 100, then close
        sock = socket.create_connection(("127.0.0.1", orch.port), timeout=5)
        sock.sendall(
            b"POST /nowhere HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\nExpect: 100-continue\r\n\r\n"
        )
        code, headers, _ = read_answer(sock)
        assert (code, headers["connection"]) == (404, "close")
        # accepted: 100 Continue first, then the answer
        sock = socket.create_connection(("127.0.0.1", orch.port), timeout=5)
        sock.sendall(
            b"POST /run_model HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n"
        )
        assert sock.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(b"{}")
        code, headers, body = read_answer(sock)
        assert (code, json.loads(body)["bytes"]) == (200, 2)


def test_pipelined_requests_are_answered_in_order(sim: SimFleet, tmp_path: Path) -> None:
    table = routes(tmp_path / "routes.json", [("a/0", sim.url(0), "a"), ("b/0", sim.url(1), "b")])
    with in_process(table) as orch:
        sock = socket.create_connection(("127.0.0.1", orch.port), timeout=5)
        requests = [
            b"POST /run_model HTTP/1.1\r\nHost: t\r\nX-Request-Id: p1\r\nContent-Length: 2\r\n\r\n{}",
            b"GET /nowhere HTTP/1.1\r\nHost: t\r\n\r\n",
            b"POST /run_model HTTP/1.1\r\nHost: t\r\nX-Request-Id: p2\r\nContent-Length: 2\r\n\r\n{}",
            b"GET /healthz HTTP/1.0\r\n\r\n",
        ]
        sock.sendall(b"".join(requests))
        answers = [read_answer(sock) for _ in requests]
        assert [a[0] for a in answers] == [200, 404, 200, 200]
        assert [json.loads(answers[i][2])["id"] for i in (0, 2)] == ["p1", "p2"]
        assert answers[3][1]["connection"] == "close"  # HTTP/1.0 without keep-alive
        assert sock.recv(10) == b""


def test_chunked_bodies_are_forwarded_with_a_length(sim: SimFleet, tmp_path: Path) -> None:
    table = routes(tmp_path / "routes.json", [("a/0", sim.url(0), "a")])
    with in_process(table, "--max-body-bytes", "100") as orch:
        sock = socket.create_connection(("127.0.0.1", orch.port), timeout=5)
        head = b"POST /run_model HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
        sock.sendall(head + b"3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n")
        code, _, body = read_answer(sock)
        assert (code, json.loads(body)["bytes"]) == (200, 7)
        sock.sendall(head + b"40\r\n" + b"z" * 64 + b"\r\n40\r\n" + b"z" * 64 + b"\r\n0\r\n\r\n")
        code, _, body = read_answer(sock)
        assert (code, json.loads(body)["code"]) == (413, "payload_too_large")
        assert sim.stats(0)["received"] == 1


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GARBAGE\r\n\r\n",
        b"GET / HTTP/1.1\r\nBad Header\r\n\r\n",
        b"POST /run_model HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"POST /run_model HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n",
    ],
)
def test_malformed_requests_get_a_json_400_and_a_close(
    sim: SimFleet, tmp_path: Path, request_bytes: bytes
) -> None:
    table = routes(tmp_path / "routes.json", [("a/0", sim.url(0), "a")])
    with in_process(table) as orch:
        sock = socket.create_connection(("127.0.0.1", orch.port), timeout=5)
        sock.sendall(request_bytes)
        code, headers, body = read_answer(sock)
        assert (code, json.loads(body)["code"], headers["connection"]) == (400, "bad_request", "close")
        assert sock.recv(10) == b""
        assert orch.records.errors() == []


def test_logs_are_json_lines_without_server_access_lines(sim: SimFleet, tmp_path: Path) -> None:
    table = routes(tmp_path / "routes.json", [("a/0", sim.url(0), "a")])
    with orchestrator(table) as orch:
        assert call(orch.url + "/run_model", "POST", {})[0] == 200
        assert call(orch.url + "/nowhere")[0] == 404
        lines = orch.log().splitlines()
    entries = [json.loads(line) for line in lines]  # every line is one JSON object
    assert {e["service"] for e in entries} == {"orchestrator"}
    messages = [e["msg"] for e in entries]
    assert "orchestrator started" in messages
    assert any(m.startswith("Booting worker") for m in messages)  # gunicorn's, through our handler
    # one access line per inference request, ours; none from gunicorn
    assert [e["path"] for e in entries if e["logger"] == "onnxfleet.orchestrator.access"] == ["/run_model"]
    assert not [e for e in entries if e["logger"] == "gunicorn.access"]


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
    assert "orchestrator stopped" in log
    assert "Traceback" not in log


def _request(path: str, method: str = "GET") -> Request:
    request = Request(SimpleNamespace(remote=None))  # type: ignore[arg-type]
    request.method, request.path = method, path
    return request


def test_router_patterns() -> None:
    def a(_request: Request) -> Reply:
        raise AssertionError

    def b(_request: Request) -> Reply:
        raise AssertionError

    router = Router()
    router.add("POST", "/v2/models/{name}/infer", a)
    router.add("GET", "/jobs/{id}", b)
    request = _request("/v2/models/digits/infer", "POST")
    assert router.route(request).handler is a
    assert request.params == {"name": "digits"}
    request = _request("/jobs/abc")
    assert router.route(request).handler is b
    assert request.params == {"id": "abc"}
    assert router.route(_request("/jobs/abc", "HEAD")).handler is b
    for path in (
        "/v2/models//infer",
        "/v2/models/a/b/infer",
        "/v2/models/{x}/infer",
        "/jobs/",
        "/jobs/a/b",
        "/",
    ):
        with pytest.raises(HTTPError) as err:
            router.route(_request(path, "POST"))
        assert err.value.status == 404, path
    with pytest.raises(HTTPError) as err:
        router.route(_request("/jobs/abc", "POST"))
    assert (err.value.status, err.value.headers) == (405, [(b"Allow", b"GET, HEAD")])


def test_a_pipelined_request_may_wait_longer_than_the_idle_timeout(sim: SimFleet, tmp_path: Path) -> None:
    sim.mode(0, "ok", service_ms=700)
    table = routes(tmp_path / "routes.json", [("a/0", sim.url(0), "a")])
    with in_process(table, "--keep-alive", "0.5") as orch:
        sock = socket.create_connection(("127.0.0.1", orch.port), timeout=5)
        one = b"POST /run_model HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\n{}"
        sock.sendall(one + one)
        assert [read_answer(sock)[0] for _ in range(2)] == [200, 200]
        sock.close()


def test_the_process_binds_the_admin_listener_apart(sim: SimFleet, tmp_path: Path) -> None:
    table = routes(tmp_path / "routes.json", [("a/0", sim.url(0), "a")])
    admin = f"http://127.0.0.1:{free_port()}"
    token = {"Authorization": "Bearer adm"}
    with orchestrator(table, "--admin-bind", admin[7:], env={"ONNXFLEET_ADMIN_TOKEN": "adm"}) as orch:
        assert call(orch.url + "/admin/reload", "POST", headers=token)[0] == 404
        assert call(admin + "/admin/reload", "POST", headers=token)[0] == 200
        assert call(admin + "/status")[0] == 200
        assert call(admin + "/run_model", "POST", {})[0] == 404
        assert call(orch.url + "/run_model", "POST", {})[0] == 200
