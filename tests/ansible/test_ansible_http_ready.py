"""onnxfleet.serving.http_ready, the readiness wait of the model_worker and orchestrator
roles, run by ansible against real HTTP servers on loopback: it returns once every URL has
answered 200, and otherwise fails when its deadline in seconds has passed (not a multiple
of it), naming what each URL last answered."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from threading import Thread
from typing import Any

import pytest

from tests.ansible.ansible_support import ansible_env, run
from tests.support import free_port


class Slow(BaseHTTPRequestHandler):
    """/readyz: 503 for a second from the first request, then 200."""

    ready_at: float | None = None

    def do_GET(self) -> None:
        if Slow.ready_at is None:
            Slow.ready_at = time.monotonic() + 1.0
        self.send_response(200 if time.monotonic() >= Slow.ready_at else 503)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def slow_url() -> Iterator[str]:
    Slow.ready_at = None
    server = ThreadingHTTPServer(("127.0.0.1", 0), Slow)
    Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/readyz"
    finally:
        server.shutdown()
        server.server_close()


def http_ready(**arguments: Any) -> tuple[int, dict[str, Any], float]:
    """(exit code, the module's result, seconds the ansible command took)."""
    started = time.monotonic()
    module = ["-m", "onnxfleet.serving.http_ready", "-a", json.dumps(arguments)]
    proc = run(
        ["ansible", "localhost", "-c", "local", *module],
        env=ansible_env(ANSIBLE_CALLBACK_RESULT_FORMAT="json"),
    )
    took = time.monotonic() - started
    output = proc.stdout
    assert "=>" in output, proc.stdout + proc.stderr
    return proc.returncode, json.loads(output.split("=>", 1)[1]), took


def test_returns_once_every_url_answers_200(slow_url: str) -> None:
    code, result, _ = http_ready(urls=[slow_url, slow_url], timeout=20)
    assert code == 0, result
    assert result["answers"] == {slow_url: 200}
    assert 1.0 <= result["elapsed"] < 10


def test_fails_at_its_deadline_naming_each_last_answer(slow_url: str) -> None:
    closed = f"http://127.0.0.1:{free_port()}/readyz"
    code, result, took = http_ready(urls=[slow_url, closed], timeout=3, interval=0.2)
    assert code != 0
    assert result["answers"][slow_url] == 200
    assert "refused" in str(result["answers"][closed]).lower()
    assert result["msg"].startswith("not ready within 3.0s: " + closed)
    assert 3.0 <= result["elapsed"] < 4.5
    assert took < 20  # the ansible command itself, start-up included


def test_an_empty_list_is_refused() -> None:
    code, result, _ = http_ready(urls=[])
    assert code != 0
    assert "name at least one URL" in result["msg"]
