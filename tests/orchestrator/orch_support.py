"""Helpers for the orchestrator tests: a sim-backend fleet, orchestrators, HTTP calls."""

from __future__ import annotations

import json
import shutil
import socket
import ssl
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from email.message import Message
from pathlib import Path
from typing import Any

from onnxfleet.orchestrator.tokens import digest
from tests.support import Service, free_port, wait_for  # noqa: F401 (wait_for: the suites import it here)


def call(
    url: str,
    method: str = "GET",
    body: bytes | dict | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 15.0,
) -> tuple[int, Message, Any]:
    """(status, headers, JSON body or text) of one HTTP call; never raises on 4xx/5xx.

    The headers are looked up case-insensitively (a missing one is None), as HTTP says:
    the server sends the names in lowercase.
    """
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    if data is not None and "Content-Type" not in (headers or {}):
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, got, raw = response.status, response.headers, response.read()
    except urllib.error.HTTPError as exc:
        status, got, raw = exc.code, exc.headers, exc.read()
    try:
        return status, got, json.loads(raw)
    except ValueError:
        return status, got, raw.decode(errors="replace")


class SimFleet:
    """One sim-backend process: ``size`` fake containers and a control port."""

    def __init__(self, size: int, service_ms: float, echo: bool = False) -> None:
        self.ports = [free_port() for _ in range(size)]
        self.control = free_port()
        self.service_ms = service_ms
        listen = [arg for port in self.ports for arg in ("--listen", f"127.0.0.1:{port}")]
        self.service = Service(
            [
                *listen,
                "--control",
                f"127.0.0.1:{self.control}",
                "--service-ms",
                str(service_ms),
                *(["--echo-model"] if echo else []),
            ],
            self.control,
            ready_path="/stats",
            module="tests.simbackend",
        )

    def url(self, index: int) -> str:
        return f"http://127.0.0.1:{self.ports[index]}"

    def _control(self, path: str, body: dict | None = None) -> Any:
        status, _, answer = call(f"http://127.0.0.1:{self.control}{path}", "POST" if body else "GET", body)
        assert status == 200, answer
        return answer

    def stats(self, index: int) -> dict[str, Any]:
        return self._control("/stats", None)[str(self.ports[index])]

    def mode(
        self, index: int, mode: str, service_ms: float | None = None, max_rows: int | None = None
    ) -> None:
        body: dict[str, Any] = {"port": self.ports[index], "mode": mode}
        if service_ms is not None:
            body["service_ms"] = service_ms
        if max_rows is not None:
            body["max_rows"] = max_rows
        self._control("/admin/mode", body)

    def reset(self) -> None:
        for index in range(len(self.ports)):
            self.mode(index, "ok", self.service_ms)
        self._control("/admin/reset", {"all": True})


def tokens_file(path: Path, **tokens: str) -> Path:
    """An --api-tokens-file: one '<name> sha256:<hex>' line per token (raw tokens given here)."""
    lines = ["# client tokens", *(f"{name} {digest(token)}" for name, token in tokens.items())]
    path.write_text("\n".join(lines) + "\n")
    return path


def routes(
    path: Path,
    containers: Sequence[tuple[str, str, str] | tuple[str, str, str, int]],
    queue: dict | None = None,
    health: dict | None = None,
) -> Path:
    """Write a routing table: containers as (name, url, node[, max_concurrency])."""
    table: dict[str, Any] = {
        "containers": [
            {"name": c[0], "url": c[1], "node": c[2], **({"max_concurrency": c[3]} if len(c) > 3 else {})}
            for c in containers
        ],
        "health": {"interval_s": 0.2, "timeout_s": 0.5, "fall": 2, "rise": 2, **(health or {})},
    }
    if queue is not None:
        table["queue"] = queue
    path.write_text(json.dumps(table))
    return path


@contextmanager
def orchestrator(routes_file: Path, *args: str, env: dict[str, str] | None = None) -> Iterator[Service]:
    port = free_port()
    with Service(
        ["orchestrator", "--routes", str(routes_file), "--bind", f"127.0.0.1:{port}", *args], port, env=env
    ) as service:
        yield service


def status(service: Service) -> dict[str, Any]:
    code, _, body = call(service.url + "/status")
    assert code == 200
    return body


def container_state(service: Service, name: str) -> dict[str, Any] | None:
    return next((c for c in status(service)["containers"] if c["name"] == name), None)


def read_answer(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """Read one HTTP answer (Content-Length framed) from ``sock``: status, headers (names
    lowercased), body. Bytes after it stay in the socket."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(1)
        assert chunk, f"connection closed after {data!r}"
        data += chunk
    head = data[:-4].decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in head[1:])}
    body = b""
    while len(body) < int(headers.get("content-length", "0")):
        chunk = sock.recv(int(headers["content-length"]) - len(body))
        assert chunk, "connection closed in the body"
        body += chunk
    return int(head[0].split()[1]), headers, body


def raw_request(
    port: int, path: str = "/run_model", request_id: str = "", body: bytes = b"{}"
) -> socket.socket:
    """Send one POST on a raw socket and return the socket (to read or to drop)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(
        f"POST {path} HTTP/1.1\r\nHost: test\r\nX-Request-Id: {request_id}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    return sock


def peer_closed(sock: socket.socket) -> bool:
    """Whether the peer closed ``sock`` (a 408 may come first); TLS sockets too."""
    sock.setblocking(False)
    try:
        data = sock.recv(65536)
    except (BlockingIOError, ssl.SSLWantReadError):
        return False
    except OSError:
        return True
    finally:
        sock.setblocking(True)
    return data == b"" or data.startswith(b"HTTP/1.1 408")


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def chromium(profile: Path, *args: str) -> str:
    """What headless Chromium prints (``--dump-dom`` or ``--screenshot=...`` in ``args``)
    after 5 s of virtual time, with a profile of its own."""
    assert CHROMIUM is not None, "chromium is not installed (make setup installs it)"
    return subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--no-first-run",
            f"--user-data-dir={profile}",
            "--virtual-time-budget=5000",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
