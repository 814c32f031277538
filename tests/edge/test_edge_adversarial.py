"""Issue 9's attacks through the whole front door: Debian's HAProxy with the role's
configuration, real orchestrators behind it, sim containers that keep computing after their
client left. tests/orchestrator/test_orchestrator_adversarial.py shows what the orchestrator
holds by itself; these show that the edge keeps the promises with TLS in front, and that
its own moves (a reload, a blue/green switch) lose nothing and never exceed a slot."""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import socket
import ssl
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from onnxfleet.load import BackgroundLoad, LoadPlan, Results
from onnxfleet.load.report import summarize
from tests.edge.edge_support import CLIENT_TOKEN, FrontDoor, rss_kib, tls_connect
from tests.edge.pki import Pki
from tests.orchestrator.orch_support import SimFleet, peer_closed, read_answer, tokens_file, wait_for

HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n"
NO_RATE_LIMIT = {"edge_rate_limit_requests": 0, "edge_token_rate_limit_requests": 0}  # closed-loop load


def healthz_ms(front: FrontDoor, source: str) -> float:
    """A /healthz on a new TLS connection, handshake included."""
    started = time.monotonic()
    with tls_connect(front.ports.tls, front.pki.ca_file, source, timeout=5) as sock:
        sock.sendall(HEALTHZ)
        assert read_answer(sock)[0] == 200
    return (time.monotonic() - started) * 1000.0


def load(front: FrontDoor, concurrency: int, rate: float | None = None) -> BackgroundLoad:
    """`onnxfleet load`'s engine through the edge: HTTPS verified with the fleet's CA, a
    token; keep-alive connections (idle between requests when ``rate`` is set)."""
    plan = LoadPlan(
        front.url,
        n=0,
        concurrency=concurrency,
        token=CLIENT_TOKEN,
        cacert=str(front.pki.ca_file),
        timeout=30,
        rate=rate,
    )
    return BackgroundLoad(plan)


def assert_nothing_lost(results: Results, at_least: int) -> None:
    summary = summarize(results)
    assert results.failed == 0, (summary["status_codes"], summary["errors"], summary["refusals"])
    assert len(results.records) >= at_least


def more_than(running: BackgroundLoad, requests: int) -> Callable[[], bool]:
    """A condition: ``requests`` more have finished than when it was made."""
    target = len(running.records) + requests
    return lambda: len(running.records) > target


def max_in_flight(sim: SimFleet, containers: int) -> list[int]:
    return [sim.stats(i)["max_in_flight"] for i in range(containers)]


def test_slowloris_does_not_stop_legitimate_clients(pki: Pki, sim: SimFleet) -> None:
    """300 connections from 30 addresses: half never finish the TLS handshake, half drip a
    header byte every 0.3 s. Legitimate requests are answered at once meanwhile; the edge
    closes every attacking connection after its timeout; the orchestrator never sees one."""
    edge = {"edge_timeout_head_s": 3, "edge_timeout_client_s": 3}
    with FrontDoor(pki, sim, edge=edge) as front:
        before = front.status()["totals"]["answered"]
        stalled = [
            socket.create_connection(
                ("127.0.0.1", front.ports.tls), source_address=(f"127.0.5.{i % 30 + 1}", 0)
            )
            for i in range(150)
        ]
        for sock in stalled:
            sock.sendall(b"\x16\x03\x01\x02\x00\x01")  # the start of a ClientHello, never the rest
        dripping = [tls_connect(front.ports.tls, pki.ca_file, f"127.0.5.{i % 30 + 1}") for i in range(150)]
        for sock in dripping:
            sock.sendall(b"POST /run_model HTTP/1.1\r\nHost: t\r\nX-A: ")
        stop = threading.Event()

        def drip() -> None:
            while not stop.is_set():
                for sock in dripping:
                    with contextlib.suppress(OSError, ssl.SSLError):
                        sock.sendall(b"a")
                time.sleep(0.3)

        dripper = threading.Thread(target=drip)
        dripper.start()
        try:
            for _ in range(10):
                started = time.monotonic()
                assert front.request(source="127.0.5.200").status == 200
                assert time.monotonic() - started < 1
            wait_for(
                lambda: all(map(peer_closed, stalled + dripping)),
                timeout=8,
                what="the attack connections closed",
            )
        finally:
            stop.set()
            dripper.join()
            for sock in stalled + dripping:
                sock.close()
        assert front.status()["totals"]["answered"] == before + 10


def test_ten_times_overload_gets_429s_with_flat_memory(pki: Pki, sim: SimFleet) -> None:
    """40 keep-alive clients from 4 addresses with one token against one container that
    serves 20 requests/s: the edge's per-token limit and the orchestrator's queue bound
    answer 429 at once (JSON, Retry-After); neither process grows with the load; the
    container never computes two at once."""
    sim.mode(0, "ok", service_ms=50)
    edge = {"edge_token_rate_limit_requests": 50}
    tokens = {"client": CLIENT_TOKEN, "second": "edge-test-second-token"}
    with FrontDoor(pki, sim, containers=1, queue={"max_length": 10}, edge=edge, tokens=tokens) as front:
        orchestrator_pid = front.status()["pid"]
        [edge_pid] = front.haproxy.workers()
        context = ssl.create_default_context(cafile=str(pki.ca_file))

        async def overload(seconds: float, network: str, token: str) -> list[tuple[int, bytes]]:
            request = (
                b"POST /run_model HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer %s\r\n"
                b"Content-Length: 2\r\n\r\n{}" % token.encode()
            )
            answers: list[tuple[int, bytes]] = []
            end = time.monotonic() + seconds

            async def client(address: str) -> None:
                reader, writer = await asyncio.open_connection(
                    "127.0.0.1",
                    front.ports.tls,
                    ssl=context,
                    server_hostname="localhost",
                    local_addr=(address, 0),
                )
                while time.monotonic() < end:
                    writer.write(request)
                    head = await reader.readuntil(b"\r\n\r\n")
                    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                    body = await reader.readexactly(length)
                    answers.append((int(head.split()[1]), body))
                    if b"connection: close" in head.lower():
                        break
                writer.close()

            await asyncio.gather(*(client(f"{network}.{i % 4 + 1}") for i in range(40)))
            return answers

        asyncio.run(overload(0.5, "127.0.6", CLIENT_TOKEN))  # warm up: buffers, tables, connections
        edge_before, orchestrator_before = rss_kib(edge_pid), rss_kib(orchestrator_pid)
        answers = asyncio.run(overload(3.0, "127.0.9", tokens["second"]))  # another token: a fresh quota
        edge_grown = rss_kib(edge_pid) - edge_before
        orchestrator_grown = rss_kib(orchestrator_pid) - orchestrator_before

        statuses = [status for status, _ in answers]
        assert set(statuses) == {200, 429}
        assert statuses.count(429) > 10 * statuses.count(200)
        codes = {body.split(b'"code": "')[1].split(b'"')[0] for status, body in answers if status == 429}
        assert codes == {b"rate_limited", b"queue_full"}  # the edge's limit, the orchestrator's queue
        assert edge_grown < 10 * 1024, f"the edge grew {edge_grown} KiB"
        assert orchestrator_grown < 10 * 1024, f"the orchestrator grew {orchestrator_grown} KiB"
        assert max_in_flight(sim, 1) == [1]
        assert front.haproxy.workers() == [edge_pid]
        assert front.status()["pid"] == orchestrator_pid


def test_a_head_flood_stalls_nobody_and_restarts_nothing(pki: Pki, sim: SimFleet) -> None:
    """An unterminated header in 64 KiB writes over TLS: the edge refuses it at its head limit
    and closes; /healthz on another connection answers meanwhile; no process of the edge or
    the orchestrator restarts. A stalled edge would answer /healthz only once the flood ends,
    at its 10 s head timeout: the 1 s bound tells the two apart on a loaded machine too
    (a bound of 100 ms did not: a CI run measured 162 ms)."""
    with FrontDoor(pki, sim) as front:
        orchestrator_pid = front.status()["pid"]
        edge_workers = front.haproxy.workers()
        slowest = 0.0
        sent = 0
        answer = b""
        with tls_connect(front.ports.tls, pki.ca_file, "127.0.7.1") as flood:
            flood.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Big: ")
            try:
                for _ in range(16 * 16):  # up to 16 MiB
                    flood.sendall(b"a" * 65536)
                    sent += 65536
                    slowest = max(slowest, healthz_ms(front, "127.0.7.2"))
            except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
                pass  # refused and closed: the rest of the flood has nowhere to go
            flood.settimeout(2)
            with contextlib.suppress(ConnectionResetError, TimeoutError, ssl.SSLError):
                answer = flood.recv(65536)
        assert sent <= 256 * 1024, f"{sent} bytes of one head accepted"
        assert answer == b"" or answer.startswith(b"HTTP/1.1 400 "), answer[:100]
        for _ in range(5):
            slowest = max(slowest, healthz_ms(front, "127.0.7.2"))
        assert slowest < 1000, f"/healthz took {slowest:.0f} ms during the flood"
        assert front.haproxy.workers() == edge_workers
        assert front.status()["pid"] == orchestrator_pid


def test_no_container_ever_counts_more_than_its_slots_whatever_clients_send(pki: Pki, sim: SimFleet) -> None:
    """Deadlines, Connection: close, Expect, pipelined requests, clients leaving half-way,
    all at once and over TLS, against two one-slot containers."""
    sim.mode(0, "ok", service_ms=20)
    sim.mode(1, "ok", service_ms=20)
    extras = [
        b"X-Request-Timeout-Ms: 1\r\n",
        b"X-Request-Timeout-Ms: 15\r\n",
        b"X-Request-Timeout-Ms: \xb2\r\n",
        b"Connection: close\r\n",
        b"Expect: 100-continue\r\n",
        b"Connection: keep-alive\r\nKeep-Alive: timeout=1\r\n",
        b"X-Forwarded-For: 10.0.0.1\r\n",
        b"",
    ]
    token = b"Authorization: Bearer %s\r\n" % CLIENT_TOKEN.encode()

    def client(seed: int) -> None:
        r = random.Random(seed)
        with tls_connect(front.ports.tls, pki.ca_file, f"127.0.8.{r.randint(1, 200)}") as sock:
            requests = b"".join(
                b"POST /run_model HTTP/1.1\r\nHost: t\r\n%s%sContent-Length: 2\r\n\r\n{}"
                % (token, r.choice(extras))
                for _ in range(r.randint(1, 3))
            )
            sock.sendall(requests)
            if r.random() < 0.3:
                return  # leaves without reading
            sock.settimeout(1)
            with contextlib.suppress(TimeoutError, ssl.SSLError, OSError):
                while sock.recv(65536):
                    if r.random() < 0.2:
                        return  # leaves half-way

    rng = random.Random(9)
    with FrontDoor(pki, sim) as front, ThreadPoolExecutor(16) as pool:
        list(pool.map(client, [rng.randint(0, 10**9) for _ in range(200)]))
        wait_for(lambda: front.status()["totals"]["in_flight"] == 0, what="all done")
        assert sum(sim.stats(i)["received"] for i in (0, 1)) > 100
        assert max_in_flight(sim, 2) == [1, 1]


def test_tokens_added_and_revoked_under_load_fail_no_request(pki: Pki, sim: SimFleet) -> None:
    """The tokens file rewritten (one added, one revoked) and the orchestrator told through
    the edge's loopback admin frontend, while a client keeps sending: none of its requests
    fails; the new token works at once, the revoked one gets 401."""
    with FrontDoor(pki, sim, edge=NO_RATE_LIMIT) as front:
        tokens_file(front.tokens_path, client=CLIENT_TOKEN, carol="carol-token")
        assert front.admin("POST", "/admin/reload").body["api_tokens"] == 2
        assert front.request(token="carol-token").status == 200
        with load(front, concurrency=4) as running:
            wait_for(more_than(running, 50), what="load")
            tokens_file(front.tokens_path, client=CLIENT_TOKEN, bob="bob-token")
            reloaded = front.admin("POST", "/admin/reload")
            assert (reloaded.status, reloaded.body["api_tokens"]) == (200, 2)
            assert front.request(token="bob-token").status == 200
            carol = front.request(token="carol-token")
            assert (carol.status, carol.body["code"]) == (401, "unauthorized")
            wait_for(more_than(running, 50), what="more load")
        assert_nothing_lost(running.results, at_least=100)


def test_a_haproxy_reload_under_load_loses_no_request(pki: Pki, sim: SimFleet) -> None:
    """USR2 to the master (systemctl reload), five times under load on 16 keep-alive
    connections, idle between requests: the old workers finish what they hold and go; no
    request fails, no container goes over its slot."""
    with FrontDoor(pki, sim, edge=NO_RATE_LIMIT) as front:
        first = front.haproxy.workers()
        with load(front, concurrency=16, rate=60) as running:
            for _ in range(5):
                wait_for(more_than(running, 30), what="load")
                new = front.haproxy.reload()
                wait_for(more_than(running, 30), what="load after the reload")
                front.haproxy.wait_old_workers_gone()
                assert front.haproxy.workers() == [new]
        assert new not in first
        assert_nothing_lost(running.results, at_least=300)
        assert max_in_flight(sim, 2) == [1, 1]


def test_a_connection_idle_across_a_reload_is_still_answered(pki: Pki, sim: SimFleet) -> None:
    """What a reload may do to a client: close its idle keep-alive connection just as the
    client sends its next request on it (a lost request the client cannot tell from a
    crash). The old worker answers the next request on such a connection instead, with
    Connection: close, then closes it."""
    with FrontDoor(pki, sim) as front:
        idle = [tls_connect(front.ports.tls, pki.ca_file, f"127.0.10.{i + 1}") for i in range(10)]
        request = b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n"
        for sock in idle:
            sock.sendall(request)
            assert read_answer(sock)[0] == 200
        front.haproxy.reload()
        time.sleep(0.5)  # the old worker has had its soft stop
        assert front.haproxy.processes()["old"]  # and still holds these connections
        for sock in idle:
            sock.sendall(request)
            status, headers, _ = read_answer(sock)
            assert (status, headers.get("connection")) == (200, "close")
            sock.close()
        front.haproxy.wait_old_workers_gone(timeout=5)


def test_the_blue_green_switch_under_load_loses_no_request(pki: Pki, sim: SimFleet) -> None:
    """Green starts on the same state directory (standby: it queues, it does not dispatch);
    the template names green, HAProxy reloads; once the old HAProxy workers are gone, blue
    gets SIGTERM, finishes its queue and its requests, and ends; green takes the lease. No
    request fails, no container is ever over its slot, and green serves what comes after."""
    with FrontDoor(pki, sim, edge=NO_RATE_LIMIT) as front, load(front, concurrency=8) as running:
        wait_for(more_than(running, 100), what="load on blue")
        blue_pid = front.status()["pid"]
        front.start_green()
        assert front.status()["pid"] == blue_pid  # the admin frontend: blue, still active
        front.switch_to("green")
        front.haproxy.wait_old_workers_gone()
        assert front.blue.proc is not None
        front.blue.signal(signal.SIGTERM)
        assert front.blue.proc.wait(20) == 0
        status = front.status()  # the admin frontend now reaches green
        assert status["pid"] != blue_pid
        assert status["dispatching"] is True
        green_served = status["totals"]["served"]
        wait_for(more_than(running, 100), what="load on green")
        assert front.status()["totals"]["served"] >= green_served + 100
    assert_nothing_lost(running.results, at_least=300)
    assert max_in_flight(sim, 2) == [1, 1]
