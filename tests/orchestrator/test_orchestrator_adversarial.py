"""Issue 9's attacks, items 1-7, against the real orchestrator process (gunicorn worker) in
front of sim containers that keep computing after their client left (like gunicorn gthread
+ onnxruntime). Each test reproduces what an adversarial client did to the previous
version; the notes of package A1 say which of them fail against it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tests.orchestrator.orch_support import (
    SimFleet,
    call,
    container_state,
    orchestrator,
    peer_closed,
    raw_request,
    read_answer,
    routes,
    status,
    wait_for,
)

HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n"


def healthz_ms(port: int) -> float:
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(HEALTHZ)
        assert read_answer(sock)[0] == 200
    return (time.monotonic() - started) * 1000.0


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_item1_a_head_flood_stalls_nobody_and_kills_nothing(sim: SimFleet, tmp_path: Path) -> None:
    """An unterminated header sent in 64 KiB writes: refused at 64 KiB (431) and closed; a
    /healthz on another connection meanwhile answers in < 1 s, where a blocked worker would
    answer after the flood or never; the worker never restarts."""
    table = routes(tmp_path / "routes.json", [("a/0", sim.url(0), "a")])
    with orchestrator(table) as orch:
        pid = status(orch)["pid"]
        flood = socket.create_connection(("127.0.0.1", orch.port), timeout=10)
        flood.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Big: ")
        chunk = b"a" * 65536
        sent = 0
        slowest = 0.0
        answer = b""
        try:
            for _ in range(16 * 16):  # up to 16 MiB
                flood.sendall(chunk)
                sent += len(chunk)
                if sent % (1024 * 1024) == 0:
                    slowest = max(slowest, healthz_ms(orch.port))
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused and closed: the rest of the flood has nowhere to go
        flood.settimeout(2)
        with contextlib.suppress(ConnectionResetError, TimeoutError):
            answer = flood.recv(65536)
        flood.close()
        assert sent < 16 * 1024 * 1024, "the whole flood was accepted"
        assert answer == b"" or answer.startswith(b"HTTP/1.1 431 "), answer[:100]
        for _ in range(5):
            slowest = max(slowest, healthz_ms(orch.port))
        assert slowest < 1000, f"/healthz took {slowest:.0f} ms during the flood"
        assert status(orch)["pid"] == pid  # no worker restart (gunicorn's WORKER TIMEOUT before)
        assert "WORKER TIMEOUT" not in orch.log()


def test_item2_a_client_deadline_never_frees_a_slot_the_container_still_uses(
    sim: SimFleet, tmp_path: Path
) -> None:
    """Five sequential requests with X-Request-Timeout-Ms: 100 to a one-slot container that
    takes 2 s: each is answered in about 0.1 s, and the container never computes two."""
    sim.mode(0, "ok", service_ms=2000)
    table = routes(tmp_path / "routes.json", [("a/0", sim.url(0), "a")])
    with orchestrator(table) as orch:
        for i in range(5):
            started = time.monotonic()
            code, _, body = call(orch.url + "/run_model", "POST", {}, {"X-Request-Timeout-Ms": "100"})
            assert code in (503, 504), body
            assert body["code"] in ("upstream_timeout", "queue_timeout")
            assert time.monotonic() - started < 1, i
        assert sim.stats(0)["max_in_flight"] == 1
        wait_for(lambda: status(orch)["totals"]["in_flight"] == 0, what="the late answer read")
        assert call(orch.url + "/run_model", "POST", {})[0] == 200


def test_item3_one_poison_request_ejects_no_container(sim: SimFleet, tmp_path: Path) -> None:
    """A request after which its container closes the connection may be what crashed it:
    re-sent without bound, it took the fleet down. It is sent once more (HAProxy's
    retry-on empty-response), to another container, then gets a 502; it ejects nobody."""
    table = routes(
        tmp_path / "routes.json",
        [("a/0", sim.url(0), "a"), ("b/0", sim.url(1), "b"), ("c/0", sim.url(2), "c")],
    )
    with orchestrator(table) as orch:
        for i in range(3):
            sim.mode(i, "drop")
        code, _, body = call(orch.url + "/run_model", "POST", {})
        assert (code, body["code"]) == (502, "upstream_error")
        assert "closed the connection without an answer" in body["error"]
        received = [sim.stats(i)["received"] for i in range(3)]
        assert sorted(received) == [0, 1, 1], received  # twice, on two containers
        assert status(orch)["totals"]["retries"] == 1
        assert all(c["state"] == "ready" for c in status(orch)["containers"])
        for i in range(3):
            sim.mode(i, "ok")
        assert call(orch.url + "/run_model", "POST", {})[0] == 200


def test_a_container_that_closed_once_answers_the_request_sent_again(sim: SimFleet, tmp_path: Path) -> None:
    """The only container closes on the first send (a crash, a kill, a node stopped without
    drain): the request goes once more, to the same one on a fresh connection, and is
    answered; the client sees a 200. Always closing: 502 after two sends, still ready."""
    table = routes(tmp_path / "routes.json", [("a/0", sim.url(0), "a")])
    with orchestrator(table) as orch:
        sim.mode(0, "drop_once")
        code, headers, _ = call(orch.url + "/run_model", "POST", {})
        assert (code, headers["X-Container"]) == (200, "a/0")
        assert sim.stats(0)["received"] == 2
        sim.reset()
        sim.mode(0, "drop")
        code, _, body = call(orch.url + "/run_model", "POST", {})
        assert (code, body["code"], body["container"]) == (502, "upstream_error", "a/0")
        assert sim.stats(0)["received"] == 2
        assert status(orch)["totals"]["retries"] == 2
        assert container_state(orch, "a/0")["state"] == "ready"  # type: ignore[index]


def test_item4_read_timeouts_and_the_connection_cap(sim: SimFleet, tmp_path: Path) -> None:
    table = routes(tmp_path / "routes.json", [("a/0", sim.url(0), "a")])
    args = ("--head-timeout", "1", "--body-timeout", "1", "--keep-alive", "1", "--max-connections", "20")
    with orchestrator(table, *args) as orch:
        idle = socket.create_connection(("127.0.0.1", orch.port), timeout=5)
        half_head = socket.create_connection(("127.0.0.1", orch.port), timeout=5)
        half_head.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n")
        no_body = socket.create_connection(("127.0.0.1", orch.port), timeout=5)
        no_body.sendall(b"POST /run_model HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n")
        started = time.monotonic()
        assert idle.recv(100) == b""  # closed, silently
        code, _, body = read_answer(half_head)
        assert (code, b"request_timeout" in body) == (408, True)
        code, _, body = read_answer(no_body)
        assert (code, b"request_timeout" in body) == (408, True)
        assert time.monotonic() - started < 3
        # the cap: connections idle between requests make room for new ones
        kept = []
        for _ in range(20):
            sock = socket.create_connection(("127.0.0.1", orch.port), timeout=5)
            sock.sendall(HEALTHZ)
            assert read_answer(sock)[0] == 200  # and the connection stays open, idle
            kept.append(sock)
        assert call(orch.url + "/healthz")[0] == 200
        for sock in kept:
            sock.close()
        time.sleep(0.2)
        # requests being sent do not: a new connection is refused while they last
        busy = []
        for _ in range(20):
            sock = socket.create_connection(("127.0.0.1", orch.port), timeout=5)
            sock.sendall(b"GET /healthz HTTP/1.1\r\n")  # a head in progress
            busy.append(sock)
        time.sleep(0.2)
        code, headers, body = call(orch.url + "/healthz")
        assert (code, body["code"], headers["Retry-After"]) == (503, "busy", "1")
        # until their head timeout
        wait_for(lambda: call(orch.url + "/healthz")[0] == 200, timeout=3, what="room again")
        for sock in busy:
            assert read_answer(sock)[0] == 408
            sock.close()


def test_item4_bodies_just_under_the_limit_do_not_grow_memory_without_bound(
    sim: SimFleet, tmp_path: Path
) -> None:
    """20 connections each sending one byte short of the body limit and then waiting: the
    process holds about what they sent, then lets it go when they time out."""
    table = routes(tmp_path / "routes.json", [("a/0", sim.url(0), "a")])
    limit = 1024 * 1024
    with orchestrator(table, "--max-body-bytes", str(limit), "--body-timeout", "2") as orch:
        pid = status(orch)["pid"]
        before = rss_kib(pid)
        socks = []
        for _ in range(20):
            sock = socket.create_connection(("127.0.0.1", orch.port), timeout=10)
            sock.sendall(b"POST /run_model HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % limit)
            sock.sendall(b"x" * (limit - 1))
            socks.append(sock)
        time.sleep(0.5)
        grown = rss_kib(pid) - before
        assert grown < 60 * 1024, f"{grown} KiB for 20 MiB of bodies"
        for sock in socks:
            assert read_answer(sock)[0] == 408
            sock.close()
        assert status(orch)["pid"] == pid


def test_item5_refusals_come_before_the_body(sim: SimFleet, tmp_path: Path) -> None:
    """An oversized body, or a job when --max-jobs are stored, is refused on its head: the
    client that waits for an answer before sending gets it at once, nothing is read."""
    sim.mode(0, "hang")
    table = routes(tmp_path / "routes.json", [("a/0", sim.url(0), "a")])
    with orchestrator(table, "--max-body-bytes", "1000", "--max-jobs", "1") as orch:
        assert call(orch.url + "/jobs", "POST", {})[0] == 202
        for head, code in (
            (b"POST /run_model HTTP/1.1\r\nHost: t\r\nContent-Length: 8000000\r\n\r\n", 413),
            (b"POST /jobs HTTP/1.1\r\nHost: t\r\nContent-Length: 500\r\n\r\n", 429),
        ):
            with socket.create_connection(("127.0.0.1", orch.port), timeout=2) as sock:
                sock.sendall(head)
                assert read_answer(sock)[0] == code


def test_item6_a_renamed_container_on_the_same_address_never_gets_two_requests(
    sim: SimFleet, tmp_path: Path
) -> None:
    sim.mode(0, "ok", service_ms=800)
    path = routes(tmp_path / "routes.json", [("a/0", sim.url(0), "a")])
    with orchestrator(path) as orch:
        held = raw_request(orch.port, request_id="first")
        wait_for(lambda: status(orch)["totals"]["in_flight"] == 1, what="in flight")
        routes(path, [("renamed/0", sim.url(0), "a")])  # the same host:port, a new name
        assert call(orch.url + "/admin/reload", "POST")[0] == 200
        wait_for(lambda: any(c["name"] == "renamed/0" and c["healthy"] for c in status(orch)["containers"]))
        code, headers, _ = call(orch.url + "/run_model", "POST", {}, {"X-Request-Id": "second"})
        assert (code, headers["X-Container"]) == (200, "renamed/0")
        assert held.recv(65536).startswith(b"HTTP/1.1 200")
        held.close()
        assert sim.stats(0)["max_in_flight"] == 1


def test_item7_odd_header_values_and_a_burst_of_expiring_requests(sim: SimFleet, tmp_path: Path) -> None:
    """A latin-1 '²' or 5,000 digits as a deadline: 400, no traceback. 1,500 queued requests
    whose deadlines pass together: every one is answered (no recursion in the hand-over)."""
    sim.mode(0, "ok", service_ms=1500)
    table = routes(tmp_path / "routes.json", [("a/0", sim.url(0), "a")], queue={"max_length": 5000})
    with orchestrator(table, "--no-access-log", "--max-connections", "2000") as orch:
        for value in (b"\xb2", b"9" * 5000, b"-1", b"1e3"):
            with socket.create_connection(("127.0.0.1", orch.port), timeout=5) as sock:
                sock.sendall(
                    b"POST /run_model HTTP/1.1\r\nX-Request-Timeout-Ms: %s\r\nContent-Length: 0\r\n\r\n"
                    % value
                )
                code, _, body = read_answer(sock)
                assert (code, b"bad_request" in body) == (400, True), value[:10]

        async def burst() -> list[bytes]:
            async def one() -> bytes:
                reader, writer = await asyncio.open_connection("127.0.0.1", orch.port)
                writer.write(
                    b"POST /run_model HTTP/1.1\r\nX-Request-Timeout-Ms: 300\r\nContent-Length: 0\r\n\r\n"
                )
                line = await asyncio.wait_for(reader.readline(), 10)
                writer.close()
                return line

            return await asyncio.gather(*(one() for _ in range(1500)))

        busy = raw_request(orch.port)  # holds the only slot
        lines = asyncio.run(burst())
        busy.close()
        codes = [line.split()[1] if line else b"none" for line in lines]
        assert set(codes) <= {b"200", b"503", b"504"}, set(codes)
        assert codes.count(b"200") <= 1
        assert "Traceback" not in orch.log()


def test_no_container_ever_counts_more_than_its_slots_whatever_clients_send(
    sim: SimFleet, tmp_path: Path
) -> None:
    """Clients sending deadlines, Connection: close, Expect, pipelined requests, and leaving
    half-way, all at once, against two one-slot containers."""
    sim.mode(0, "ok", service_ms=20)
    sim.mode(1, "ok", service_ms=20)
    table = routes(tmp_path / "routes.json", [("a/0", sim.url(0), "a"), ("b/0", sim.url(1), "b")])
    rng = random.Random(9)
    extras = [
        b"X-Request-Timeout-Ms: 1\r\n",
        b"X-Request-Timeout-Ms: 15\r\n",
        b"X-Request-Timeout-Ms: \xb2\r\n",
        b"Connection: close\r\n",
        b"Expect: 100-continue\r\n",
        b"Connection: keep-alive\r\nKeep-Alive: timeout=1\r\n",
        b"",
    ]

    def client(seed: int) -> None:
        r = random.Random(seed)
        with socket.create_connection(("127.0.0.1", orch.port), timeout=10) as sock:
            requests = b"".join(
                b"POST /run_model HTTP/1.1\r\nHost: t\r\n%sContent-Length: 2\r\n\r\n{}" % r.choice(extras)
                for _ in range(r.randint(1, 3))
            )
            sock.sendall(requests)
            if r.random() < 0.3:
                return  # leaves without reading
            sock.settimeout(1)
            with contextlib.suppress(TimeoutError):  # the answers came and the connection stays
                while sock.recv(65536):
                    if r.random() < 0.2:
                        return  # leaves half-way

    with orchestrator(table) as orch, ThreadPoolExecutor(16) as pool:
        list(pool.map(client, [rng.randint(0, 10**9) for _ in range(200)]))
        wait_for(lambda: status(orch)["totals"]["in_flight"] == 0, what="all done")
        assert [sim.stats(i)["max_in_flight"] for i in (0, 1)] == [1, 1]
        assert status(orch)["pid"] > 0


def test_slowloris_connections_do_not_stop_legitimate_clients(sim: SimFleet, tmp_path: Path) -> None:
    table = routes(tmp_path / "routes.json", [("a/0", sim.url(0), "a")])
    with orchestrator(table, "--head-timeout", "2", "--max-connections", "1000") as orch:
        slow = []
        for _ in range(300):
            sock = socket.create_connection(("127.0.0.1", orch.port), timeout=10)
            sock.sendall(b"POST /run_model HTTP/1.1\r\nHost: t\r\nX-A: ")
            slow.append(sock)
        stop = threading.Event()

        def drip() -> None:
            while not stop.is_set():
                for sock in slow:
                    with contextlib.suppress(OSError):
                        sock.sendall(b"a")
                time.sleep(0.3)

        dripper = threading.Thread(target=drip)
        dripper.start()
        try:
            for _ in range(10):
                started = time.monotonic()
                assert call(orch.url + "/run_model", "POST", {})[0] == 200
                assert time.monotonic() - started < 1
            # the head timeout ends them, dripping or not
            wait_for(lambda: all(peer_closed(sock) for sock in slow), timeout=6, what="slowloris closed")
        finally:
            stop.set()
            dripper.join()
            for sock in slow:
                sock.close()


def test_two_processes_on_one_state_dir_hand_over_without_loss(sim: SimFleet, tmp_path: Path) -> None:
    """Blue and green (two real processes, one state directory) under load: green queues
    until blue has finished and ended; no container ever has two requests; none fails."""
    sim.mode(0, "ok", service_ms=20)
    sim.mode(1, "ok", service_ms=20)
    table = routes(tmp_path / "routes.json", [("a/0", sim.url(0), "a"), ("b/0", sim.url(1), "b")])
    state = tmp_path / "state"
    state.mkdir()
    with (
        orchestrator(table, "--state-dir", str(state)) as blue,
        orchestrator(table, "--state-dir", str(state)) as green,
    ):
        assert (status(blue)["dispatching"], status(green)["dispatching"]) == (True, False)
        switched = threading.Event()

        def client(i: int) -> int:
            return call((green if switched.is_set() else blue).url + "/run_model", "POST", {"i": i})[0]

        with ThreadPoolExecutor(8) as pool:
            futures = [pool.submit(client, i) for i in range(200)]
            wait_for(lambda: status(blue)["totals"]["served"] > 20, what="blue serving")
            switched.set()
            time.sleep(0.2)
            blue.signal(signal.SIGTERM)
            codes = [f.result() for f in futures]
        assert codes == [200] * 200
        assert blue.proc is not None
        assert blue.proc.wait(15) == 0
        assert status(green)["dispatching"]
        assert [sim.stats(i)["max_in_flight"] for i in (0, 1)] == [1, 1]


def test_sighup_under_load_loses_nothing_and_keeps_the_slots(sim: SimFleet, tmp_path: Path) -> None:
    sim.mode(0, "ok", service_ms=20)
    sim.mode(1, "ok", service_ms=20)
    table = routes(tmp_path / "routes.json", [("a/0", sim.url(0), "a"), ("b/0", sim.url(1), "b")])
    with orchestrator(table) as orch, ThreadPoolExecutor(8) as pool:
        before = status(orch)["pid"]
        futures = [
            pool.submit(lambda i: call(orch.url + "/run_model", "POST", {"i": i})[0], i) for i in range(300)
        ]
        wait_for(lambda: status(orch)["totals"]["served"] > 30, what="serving")
        assert orch.proc is not None
        os.kill(orch.proc.pid, signal.SIGHUP)  # to the arbiter: a new worker replaces this one
        codes = [f.result() for f in futures]
        assert codes == [200] * 300
        assert status(orch)["pid"] != before
        assert [sim.stats(i)["max_in_flight"] for i in (0, 1)] == [1, 1]


def test_ten_times_overload_gets_429s_with_flat_memory(sim: SimFleet, tmp_path: Path) -> None:
    """Ten times what the fleet serves, for a few seconds: the queue bound answers 429
    (with Retry-After) at once; the process does not grow with the load."""
    sim.mode(0, "ok", service_ms=50)
    table = routes(tmp_path / "routes.json", [("a/0", sim.url(0), "a")], queue={"max_length": 10})
    with orchestrator(table, "--no-access-log") as orch:
        pid = status(orch)["pid"]

        async def load(seconds: float) -> list[bytes]:
            lines: list[bytes] = []
            end = time.monotonic() + seconds

            async def client() -> None:
                reader, writer = await asyncio.open_connection("127.0.0.1", orch.port)
                while time.monotonic() < end:
                    writer.write(b"POST /run_model HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\n{}")
                    head = await reader.readuntil(b"\r\n\r\n")
                    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                    await reader.readexactly(length)
                    lines.append(head.split(b"\r\n")[0])
                writer.close()

            await asyncio.gather(*(client() for _ in range(200)))  # the fleet serves 20/s
            return lines

        asyncio.run(load(0.5))  # warm up
        before = rss_kib(pid)
        lines = asyncio.run(load(2.0))
        grown = rss_kib(pid) - before
        codes = {line.split()[1] for line in lines}
        assert codes == {b"200", b"429"}
        assert sum(line.split()[1] == b"429" for line in lines) > 10 * sum(
            line.split()[1] == b"200" for line in lines
        )
        assert grown < 10 * 1024, f"grew {grown} KiB"
        assert sim.stats(0)["max_in_flight"] == 1
        assert status(orch)["pid"] == pid
