"""Issue 17's connection attacks (items 1, 4, 5) against a real orchestrator: what they did.

    .venv/bin/python -m bench.connection_attacks                  # this checkout
    .venv/bin/python -m bench.connection_attacks --app ../main/app  # another checkout's (A/B)

Prints one JSON object: for 50 requests with a bad chunk size (``--max-connections 50``),
how many got a 400, the server's sockets left in CLOSE-WAIT and ``/healthz``'s status
after; for a 64 MiB unterminated trailer, the bytes the orchestrator read, its RSS growth
and ``/healthz`` latency while and after; for 60 clients pipelining ``GET /status`` for
0.5 s without reading (``--max-connections 30``), the descriptors the process holds for
clients after the fill and 35 s later and ``/healthz`` latency; for a body sent one byte
per 0.5 s with ``--body-timeout 2``, the answer and when. Asserts nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import socket
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from tests.orchestrator.orch_support import SimFleet, call, orchestrator, routes, status
from tests.orchestrator.test_orchestrator_connections import (
    BAD_CHUNK,
    fill_never_reading,
    healthz_s,
    open_fds,
    rss_kib,
    server_sockets,
)

MIB = 1024 * 1024


def _probe(port: int) -> float | str:
    try:
        return round(healthz_s(port, timeout=20), 3)
    except OSError as exc:
        return repr(exc)


def bad_chunks(table: Path, env: dict[str, str]) -> dict[str, Any]:
    with orchestrator(table, "--max-connections", "50", env=env) as orch:
        socks = []
        for _ in range(50):
            sock = socket.create_connection(("127.0.0.1", orch.port), timeout=2)
            sock.sendall(BAD_CHUNK)
            socks.append(sock)
        answered = 0
        for sock in socks:
            with contextlib.suppress(OSError):
                answered += sock.recv(100).startswith(b"HTTP/1.1 400")
            sock.close()
        time.sleep(0.5)
        return {
            "answered_400": answered,
            "close_wait": server_sockets(orch.port).get("CLOSE_WAIT", 0),
            "healthz_after": call(orch.url + "/healthz")[0],
        }


def trailer(table: Path, env: dict[str, str]) -> dict[str, Any]:
    with orchestrator(table, env=env) as orch:
        pid = status(orch)["pid"]
        before = rss_kib(pid)
        sock = socket.create_connection(("127.0.0.1", orch.port), timeout=5)
        sock.sendall(b"POST /run_model HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX-T: ")
        sent, during = 0, []
        with contextlib.suppress(OSError):
            while sent < 64 * MIB:
                sock.sendall(b"a" * MIB)
                sent += MIB
                if sent % (16 * MIB) == 0:
                    during.append(_probe(orch.port))
        sock.close()
        return {
            "trailer_bytes_accepted_MiB": sent / MIB,
            "rss_growth_MiB": round((rss_kib(pid) - before) / 1024, 1),
            "healthz_s_during": during,
            "healthz_s_after": _probe(orch.port),
        }


def never_read(table: Path, env: dict[str, str]) -> dict[str, Any]:
    with orchestrator(table, "--max-connections", "30", env=env) as orch:
        pid = status(orch)["pid"]
        fds = open_fds(pid)
        request = b"GET /status HTTP/1.1\r\nHost: t\r\n\r\n"
        with ThreadPoolExecutor(20) as pool:
            hogs = list(pool.map(lambda _: fill_never_reading(orch.port, request, 0.5), range(60)))
        after_fill = open_fds(pid) - fds
        time.sleep(35)
        result = {
            "client_fds_after_fill": after_fill,
            "client_fds_after_35s": open_fds(pid) - fds,
            "healthz_s": _probe(orch.port),
        }
        for sock in hogs:
            sock.close()
        return result


def drip_body(table: Path, env: dict[str, str]) -> dict[str, Any]:
    with orchestrator(table, "--body-timeout", "2", env=env) as orch:
        sock = socket.create_connection(("127.0.0.1", orch.port), timeout=0.5)
        sock.sendall(b"POST /run_model HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n")
        started, answer = time.monotonic(), None
        for _ in range(110):
            with contextlib.suppress(OSError):
                sock.sendall(b"x")
            try:
                answer = sock.recv(100)[:12].decode()
                break
            except TimeoutError:
                pass
        sock.close()
        return {"answer": answer, "after_s": round(time.monotonic() - started, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--app", help="run the orchestrator from another checkout's app/ directory")
    args = parser.parse_args()
    env = {"PYTHONPATH": str(Path(args.app).resolve())} if args.app else {}
    work = Path(tempfile.mkdtemp(prefix="connection-attacks-"))
    sim = SimFleet(1, 10)
    with sim.service:
        table = routes(work / "routes.json", [("a/0", sim.url(0), "a")])
        figures = {
            "item1_bad_chunk": bad_chunks(table, env),
            "item4_trailer": trailer(table, env),
            "item5_never_read": never_read(table, env),
            "item5_drip_body": drip_body(table, env),
        }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
