"""Following a request: one id per request, the client's when it is a safe one, in the edge's,
the orchestrator's and the worker's log lines and in the answer; ``traceparent`` reaches the
container unchanged. Real HAProxy, real orchestrator, a real worker (gunicorn + onnxruntime)."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

import pytest
import requests

from tests.edge.edge_support import CLIENT_TOKEN, FrontDoor
from tests.edge.pki import Pki
from tests.orchestrator.orch_support import SimFleet, routes, wait_for
from tests.support import Service
from tests.worker.worker_support import DIGITS, worker

EXAMPLE = json.loads(DIGITS.with_suffix(".json").read_text())["example"]["inputs"]
BODY = json.dumps({"inputs": EXAMPLE}).encode()
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


@pytest.fixture(scope="module")
def digits() -> Iterator[Service]:
    with worker(DIGITS, "--intra-op-threads", "1", container="request-ids-0") as service:
        yield service


@pytest.fixture(scope="module")
def front(pki: Pki, sim_fleet: SimFleet, digits: Service) -> Iterator[FrontDoor]:
    door = FrontDoor(pki, sim_fleet)
    routes(door.routes_path, [("request-ids-0", digits.url, "node-0")])  # the real worker only
    with door:
        wait_for(lambda: door.request(body=BODY).status == 200, timeout=20, what="the worker in service")
        yield door


def json_lines(service: Service, logger: str) -> list[dict[str, Any]]:
    records = [json.loads(line) for line in service.log().splitlines() if line.startswith("{")]
    return [r for r in records if r.get("logger") == logger]


def hops(front: FrontDoor, digits: Service, request_id: str) -> dict[str, list[Any]]:
    """Each hop's log lines that name ``request_id``."""
    return {
        "edge": [line for line in front.haproxy.log().splitlines() if f"request_id={request_id} " in line],
        "orchestrator": [r for r in front.access_log() if r.get("request_id") == request_id],
        "worker": [
            r for r in json_lines(digits, "onnxfleet.worker.access") if r.get("request_id") == request_id
        ],
    }


def logged_everywhere(front: FrontDoor, digits: Service, request_id: str) -> dict[str, list[Any]]:
    """The hops' lines, once all three wrote theirs (the edge logs after the answer is sent)."""
    return wait_for(
        lambda: (found := hops(front, digits, request_id)) and all(found.values()) and found,
        timeout=10,
        what=f"{request_id} in every hop's log",
    )


def test_a_request_without_an_id_gets_one_that_every_hop_logs(front: FrontDoor, digits: Service) -> None:
    answer = front.request(body=BODY)
    assert answer.status == 200, answer
    request_id = answer.header("X-Request-Id")
    assert request_id is not None, answer.headers
    assert re.fullmatch(r"[0-9a-f-]{32,36}", request_id), request_id
    found = logged_everywhere(front, digits, request_id)
    assert [line.endswith(" method=POST") for line in found["edge"]] == [True]
    assert [(r["method"], r["path"], r["status"]) for r in found["orchestrator"]] == [
        ("POST", "/run_model", 200)
    ]
    assert [(r["method"], r["path"], r["status"]) for r in found["worker"]] == [("POST", "/run_model", 200)]
    assert front.request(body=BODY).header("X-Request-Id") != request_id  # one per request


def test_a_clients_valid_id_is_kept_by_every_hop(front: FrontDoor, digits: Service) -> None:
    request_id = "client-7:trace.A_b"
    answer = front.request(body=BODY, headers={"X-Request-Id": request_id})
    assert (answer.status, answer.header("X-Request-Id")) == (200, request_id)
    found = logged_everywhere(front, digits, request_id)
    assert [len(lines) for lines in found.values()] == [1, 1, 1]
    assert found["orchestrator"][0]["method"] == found["worker"][0]["method"] == "POST"


@pytest.mark.parametrize(
    "sent", ["two words", "x" * 129, 'quote"d', "a,b2", "%0aforged=1", "é"], ids=lambda s: s[:12]
)
def test_an_invalid_id_is_replaced_never_echoed_nor_logged(
    front: FrontDoor, digits: Service, sent: str
) -> None:
    answer = front.request(body=BODY, headers={"X-Request-Id": sent})
    assert answer.status == 200, answer
    request_id = answer.header("X-Request-Id")
    assert request_id is not None
    assert request_id != sent
    assert re.fullmatch(r"[0-9a-f-]{32,36}", request_id)
    logged_everywhere(front, digits, request_id)
    assert sent not in front.haproxy.log() + front.blue.log() + digits.log()


def test_the_edges_own_refusals_carry_an_id_too(front: FrontDoor) -> None:
    answer = front.request("GET", "/admin/status", body=None)
    assert answer.status == 403
    request_id = answer.header("X-Request-Id")
    assert request_id is not None
    wait_for(
        lambda: f"request_id={request_id} method=GET\n" in front.haproxy.log(),
        timeout=10,
        what="the refusal's edge log line",
    )


# --- traceparent: what the container receives -----------------------------------------------


class _Recorder(BaseHTTPRequestHandler):
    """A container that answers every request 200 and keeps the heads of /run_model calls."""

    heads: ClassVar[list[dict[str, str]]] = []

    def _answer(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.path == "/run_model":
            self.heads.append({k.lower(): v for k, v in self.headers.items()})
        body = b'{"outputs": []}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer

    def log_message(self, *args: object) -> None:
        pass


def test_traceparent_and_the_id_reach_the_container_unchanged(pki: Pki, sim_fleet: SimFleet) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        door = FrontDoor(pki, sim_fleet)
        routes(door.routes_path, [("recorder-0", f"http://127.0.0.1:{server.server_port}", "node-0")])
        with door:
            wait_for(lambda: door.request().status == 200, timeout=20, what="the recorder in service")
            _Recorder.heads.clear()
            sent = {"traceparent": TRACEPARENT, "tracestate": "vendor=opaque", "X-Request-Id": "abc-1"}
            answer = door.request(headers=sent)
            assert (answer.status, answer.header("X-Request-Id")) == (200, "abc-1")
            assert [
                (h.get("traceparent"), h.get("tracestate"), h.get("x-request-id")) for h in _Recorder.heads
            ] == [(TRACEPARENT, "vendor=opaque", "abc-1")]
            _Recorder.heads.clear()
            made = door.request().header("X-Request-Id")
            assert made is not None
            assert [h.get("x-request-id") for h in _Recorder.heads] == [made]
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("sent", [None, "two words", "ok-1"])
def test_the_orchestrator_applies_the_same_rule_to_a_direct_caller(
    front: FrontDoor, digits: Service, sent: str | None
) -> None:
    """Behind no edge (or a misconfigured one) the orchestrator still makes or checks the id."""
    headers = {"Authorization": f"Bearer {CLIENT_TOKEN}", "Content-Type": "application/json"}
    if sent is not None:
        headers["X-Request-Id"] = sent
    response = requests.post(front.blue.url + "/run_model", data=BODY, headers=headers, timeout=10)
    assert response.status_code == 200, response.text
    request_id = response.headers["X-Request-Id"]
    if sent == "ok-1":
        assert request_id == sent
    else:
        assert re.fullmatch(r"[0-9a-f]{32}", request_id), request_id
    found = wait_for(lambda: hops(front, digits, request_id), timeout=10, what="the log lines")
    assert [len(found["orchestrator"]), len(found["worker"]), len(found["edge"])] == [1, 1, 0]
