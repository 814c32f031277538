"""The edge as the role deploys it: roles/edge's template rendered by Ansible, Debian's
HAProxy in master-worker mode, real orchestrators (blue, green) and sim containers.

- ``tests.edge.pki.make_pki``: the test CA and the edge's certificate.
- ``render``: ``ansible localhost -m ansible.builtin.template`` with the role's defaults
  and vars plus the test's values (ports, paths), so the tests prove the file the role
  deploys.
- ``Haproxy``: ``haproxy -Ws -f CFG -p PID -S MASTER`` as Debian's unit runs it; reload =
  USR2 to the master, as ``systemctl reload``; the master CLI tells the workers apart.
- ``FrontDoor``: all of it on loopback ports, with HTTPS helpers that pick the client's
  source address (127.0.0.0/8 is all loopback, so each test client can be its own
  "address" for the per-client limits).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.ansible.ansible_support import render_role_template
from tests.edge.pki import Pki
from tests.orchestrator.orch_support import SimFleet, routes, tokens_file, wait_for
from tests.support import ROOT, Service, free_port

ROLE = ROOT / "roles" / "edge"
HAPROXY = "/usr/sbin/haproxy"
ADMIN_TOKEN = "edge-test-admin-token"
CLIENT_TOKEN = "edge-test-client-token"


# --- the configuration --------------------------------------------------------------


@dataclass
class Ports:
    tls: int = field(default_factory=free_port)
    http: int = field(default_factory=free_port)
    admin: int = field(default_factory=free_port)
    metrics: int = field(default_factory=free_port)
    blue: int = field(default_factory=free_port)
    green: int = field(default_factory=free_port)
    blue_admin: int = field(default_factory=free_port)
    green_admin: int = field(default_factory=free_port)


def edge_variables(
    ports: Ports, pki: Pki, work: Path, tokens: dict[str, str] | None = None, **overrides: Any
) -> dict[str, Any]:
    """The fleet contract and the role variables a test deployment sets: loopback ports,
    paths in ``work``, the client ``tokens`` ({name: token}; default: ``client``); the rest
    are the role's defaults unless ``overrides`` say otherwise."""
    as_root = os.geteuid() == 0
    known = {"client": CLIENT_TOKEN} if tokens is None else tokens
    return {
        "fleet_auth": True,
        "fleet_api_tokens": [{"name": name, "token": token} for name, token in known.items()],
        "fleet_edge_port": ports.tls,
        "fleet_max_body_bytes": 1024 * 1024,
        "fleet_admin_port": ports.admin,
        "fleet_edge_metrics_port": ports.metrics,
        "fleet_orchestrator_colour": "blue",
        "fleet_orchestrator_api_ports": {"blue": ports.blue, "green": ports.green},
        "fleet_orchestrator_admin_ports": {"blue": ports.blue_admin, "green": ports.green_admin},
        "edge_bind_address": "127.0.0.1",
        "edge_http_port": ports.http,
        "edge_certificate": str(pki.pem_file),
        "edge_log": "stdout format raw local0",
        "edge_stats_socket": str(work / "admin.sock"),
        "edge_token_map": str(work / "api-tokens.map"),
        # as deployed (unprivileged user in a chroot) when the tests can
        **({} if as_root else {"edge_user": "", "edge_chroot": ""}),
        **overrides,
    }


def render(dest: Path, variables: dict[str, Any], template: str = "haproxy.cfg.j2") -> Path:
    """A template of the role rendered by Ansible with its defaults, its vars and
    ``variables``; for haproxy.cfg, the token map it reads too (``edge_token_map``), as
    the role deploys both."""
    if template == "haproxy.cfg.j2":
        render(Path(variables["edge_token_map"]), variables, "api-tokens.map.j2")
    return render_role_template(ROLE, template, dest, variables)


def check_config(path: Path) -> subprocess.CompletedProcess[str]:
    """``haproxy -c``: what systemctl reload runs before it signals the master."""
    return subprocess.run([HAPROXY, "-c", "-q", "-f", str(path)], capture_output=True, text=True, check=False)


# --- HAProxy --------------------------------------------------------------------------


class Haproxy:
    """Debian's HAProxy as its systemd unit runs it (``-Ws``, master CLI on ``-S``)."""

    def __init__(self, config: Path, ready_port: int) -> None:
        self.config = config
        self.ready_port = ready_port
        self.master_socket = config.parent / "master.sock"
        self.pidfile = config.parent / "haproxy.pid"
        self.log_path = config.parent / "haproxy.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Haproxy:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [
                    HAPROXY,
                    "-Ws",
                    "-f",
                    str(self.config),
                    "-p",
                    str(self.pidfile),
                    "-S",
                    str(self.master_socket),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            wait_for(self._listening, timeout=10, what=f"haproxy on {self.ready_port}")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.log()}") from None
        return self

    def _listening(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"haproxy exited with {self.proc.returncode}:\n{self.log()}")
        with (
            contextlib.suppress(OSError),
            socket.create_connection(("127.0.0.1", self.ready_port), timeout=1),
        ):
            return bool(self.workers())
        return False

    @property
    def master_pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def cli(self, command: str) -> str:
        """One command on the master CLI (as ``socat``)."""
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(5)
            sock.connect(str(self.master_socket))
            sock.sendall(command.encode() + b"\n")
            sock.shutdown(socket.SHUT_WR)  # as socat: the master answers, then closes
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode()

    def processes(self) -> dict[str, list[int]]:
        """``show proc``: the current workers and the old ones still finishing (asked again
        while the master re-executes itself for a reload)."""
        for _ in range(100):
            try:
                text = self.cli("show proc")
                break
            except OSError:
                time.sleep(0.05)
        else:
            raise AssertionError("the haproxy master CLI does not answer")
        found: dict[str, list[int]] = {"workers": [], "old": []}
        section = "master"
        for line in text.splitlines():
            if line.startswith("# workers"):
                section = "workers"
            elif line.startswith("# old workers"):
                section = "old"
            elif line and not line.startswith("#") and section in found:
                found[section].append(int(line.split()[0]))
        return found

    def workers(self) -> list[int]:
        return self.processes()["workers"]

    def reload(self) -> int:
        """Validate, then USR2 to the master (``systemctl reload haproxy``); the new worker's pid."""
        checked = check_config(self.config)
        assert checked.returncode == 0, checked.stdout + checked.stderr
        before = set(self.workers())
        os.kill(self.master_pid, signal.SIGUSR2)
        new = wait_for(
            lambda: [pid for pid in self.workers() if pid not in before],
            timeout=10,
            what="a new haproxy worker",
        )
        return int(new[0])

    def wait_old_workers_gone(self, timeout: float = 30.0) -> None:
        wait_for(lambda: not self.processes()["old"], timeout=timeout, what="the old haproxy workers to end")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:] if self.log_path.exists() else ""


# --- the orchestrators ------------------------------------------------------------------


def orchestrator(work: Path, colour: str, ports: Ports, *args: str) -> Service:
    """One colour of the orchestrator: API on its loopback port (what the edge forwards
    to), admin listener, the shared state directory and token files."""
    api = ports.blue if colour == "blue" else ports.green
    admin = ports.blue_admin if colour == "blue" else ports.green_admin
    options = {
        "--routes": work / "routes.json",
        "--bind": f"127.0.0.1:{api}",
        "--admin-bind": f"127.0.0.1:{admin}",
        "--state-dir": work / "state",
        "--api-tokens-file": work / "api-tokens",
        "--admin-token-file": work / "admin-token",
    }
    return Service(["orchestrator", *(str(a) for kv in options.items() for a in kv), *args], api)


# --- HTTPS clients ----------------------------------------------------------------------


def client_context(ca_file: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(ca_file))


@dataclass
class Answer:
    status: int
    headers: dict[str, str]  # names lowercased
    body: Any  # JSON, else text

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


def _answer(response: http.client.HTTPResponse) -> Answer:
    raw = response.read()
    headers = {name.lower(): value for name, value in response.getheaders()}
    try:
        body: Any = json.loads(raw)
    except ValueError:
        body = raw.decode(errors="replace")
    return Answer(response.status, headers, body)


def tls_connect(port: int, ca_file: Path, source: str = "127.0.0.1", timeout: float = 10.0) -> ssl.SSLSocket:
    """A TLS connection to the edge from ``source`` (a loopback address)."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=timeout, source_address=(source, 0))
    return client_context(ca_file).wrap_socket(raw, server_hostname="localhost")


# --- all of it -------------------------------------------------------------------------


class FrontDoor:
    """Sim containers, the blue orchestrator and the edge, on loopback ports; ``start_green``
    and ``switch_to`` for the hand-over."""

    def __init__(
        self,
        pki: Pki,
        sim: SimFleet,
        *,
        containers: int = 2,
        queue: dict[str, Any] | None = None,
        edge: dict[str, Any] | None = None,
        orchestrator_args: tuple[str, ...] = (),
        tokens: dict[str, str] | None = None,
    ) -> None:
        self.pki = pki
        # the fleet's client tokens ({name: token}), as both the orchestrator and the edge get them
        self.tokens = {"client": CLIENT_TOKEN} if tokens is None else tokens
        self.sim = sim
        self.work = Path(tempfile.mkdtemp(prefix="onnxfleet-edge-"))
        self.ports = Ports()
        self.edge_overrides = edge or {}
        (self.work / "state").mkdir()
        (self.work / "admin-token").write_text(ADMIN_TOKEN + "\n")
        self.tokens_path = tokens_file(self.work / "api-tokens", **self.tokens)
        self.routes_path = routes(
            self.work / "routes.json", [(f"c{i}/0", sim.url(i), f"c{i}") for i in range(containers)], queue
        )
        self.config = render(self.work / "haproxy.cfg", self.variables())
        self.haproxy = Haproxy(self.config, self.ports.tls)
        # the one body limit, as the role gives it to edge, orchestrator and workers
        self.orchestrator_args = (
            "--max-body-bytes",
            str(self.variables()["fleet_max_body_bytes"]),
            *orchestrator_args,
        )
        self.blue = orchestrator(self.work, "blue", self.ports, *self.orchestrator_args)
        self.green: Service | None = None
        self._stack = contextlib.ExitStack()

    def variables(self, **overrides: Any) -> dict[str, Any]:
        return edge_variables(
            self.ports, self.pki, self.work, self.tokens, **{**self.edge_overrides, **overrides}
        )

    @property
    def url(self) -> str:
        return f"https://localhost:{self.ports.tls}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.admin}"

    def __enter__(self) -> FrontDoor:
        self._stack.enter_context(self.blue)
        self._stack.callback(self.haproxy.stop)
        self.haproxy.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()
        if self.green is not None:
            self.green.stop()

    def start_green(self) -> Service:
        self.green = orchestrator(self.work, "green", self.ports, *self.orchestrator_args)
        self.green.start().wait_ready()
        return self.green

    def switch_to(self, colour: str) -> int:
        """The hand-over as the role does it: the template with the other colour, checked,
        then a reload; the new HAProxy worker's pid."""
        render(self.config, self.variables(fleet_orchestrator_colour=colour))
        return self.haproxy.reload()

    def request(
        self,
        method: str = "POST",
        path: str = "/run_model",
        *,
        body: bytes | None = b"{}",
        headers: dict[str, str] | None = None,
        token: str | None = CLIENT_TOKEN,
        source: str = "127.0.0.1",
        timeout: float = 15.0,
    ) -> Answer:
        """One HTTPS request through the edge (a new connection from ``source``)."""
        sent = {"Content-Type": "application/json"} if body is not None else {}
        if token is not None:
            sent["Authorization"] = f"Bearer {token}"
        sent.update(headers or {})
        conn = http.client.HTTPSConnection(
            "localhost",
            self.ports.tls,
            timeout=timeout,
            source_address=(source, 0),
            context=client_context(self.pki.ca_file),
        )
        try:
            conn.request(method, path, body=body, headers=sent)
            return _answer(conn.getresponse())
        finally:
            conn.close()

    def admin(self, method: str, path: str, body: dict[str, Any] | None = None) -> Answer:
        """The orchestrator's admin API through the edge's loopback admin frontend."""
        conn = http.client.HTTPConnection("127.0.0.1", self.ports.admin, timeout=30)
        try:
            data = json.dumps(body).encode() if body is not None else None
            conn.request(method, path, body=data, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
            return _answer(conn.getresponse())
        finally:
            conn.close()

    def access_log(self, service: Service | None = None) -> list[dict[str, Any]]:
        """The orchestrator's access log lines (one JSON object per request it answered)."""
        lines = (service or self.blue).log().splitlines()
        records = [json.loads(line) for line in lines if line.startswith("{")]
        return [r for r in records if r.get("logger") == "onnxfleet.orchestrator.access"]

    def status(self) -> dict[str, Any]:
        answer = self.admin("GET", "/status")
        assert answer.status == 200, answer
        return dict(answer.body)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


@contextlib.contextmanager
def raw_listener(port: int, behaviour: str) -> Iterator[None]:
    """A listener on ``port`` whose connections read one request, then: "garbage" answers
    a malformed status line, "silent" never answers (until the listener goes)."""
    server = socket.create_server(("127.0.0.1", port))
    server.settimeout(0.2)
    stop = threading.Event()
    held: list[socket.socket] = []

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            held.append(conn)
            conn.recv(65536)
            if behaviour == "garbage":
                conn.sendall(b"HTTP/1.1 2x0 what\r\nContent-Length: 0\r\n\r\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(5)
        for conn in held:
            conn.close()
        server.close()
