"""The active health checker against scripted containers: fall, rise, and what a change does."""

from __future__ import annotations

import asyncio

import pytest

from onnxfleet.orchestrator.routes import ContainerSpec
from onnxfleet.orchestrator.settings import HealthSpec
from tests.orchestrator.scripted import Fleet, Scripted, answer_ok, read_request, run, until
from tests.support import free_port

READY = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}"
UNREADY = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 2\r\n\r\n{}"


async def silent(reader: asyncio.StreamReader, _w: asyncio.StreamWriter, _n: int) -> bool:
    """Reads a request and never answers it."""
    await read_request(reader)
    return False


class Readiness:
    """Answers checks READY or UNREADY as told; counts them."""

    def __init__(self) -> None:
        self.ready = True
        self.checks = 0

    async def __call__(self, _r: asyncio.StreamReader, writer: asyncio.StreamWriter, _n: int) -> bool:
        self.checks += 1
        writer.write(READY if self.ready else UNREADY)
        return True


def test_the_checker_marks_down_after_fall_and_up_after_rise() -> None:
    from onnxfleet.orchestrator.health import HealthChecker

    async def main() -> None:
        readiness = Readiness()
        async with Scripted(readiness) as a:
            fleet = Fleet([a.spec("a")])
            c = fleet.container("a")
            c.healthy = False
            c.checked = False
            spec = HealthSpec(path="/readyz", interval_s=0.01, timeout_s=1, fall=3, rise=4)
            checker = HealthChecker(fleet.dispatcher, fleet.forwarder, spec)
            checker.sync()
            await until(lambda: c.healthy)  # the first check decides at once
            assert readiness.checks == 1
            readiness.ready = False
            seen = readiness.checks
            await until(lambda: not c.healthy)
            assert readiness.checks - seen == 3  # fall: 3 failed checks in a row
            assert c.last_error == "/readyz answered 503"
            readiness.ready = True
            seen = readiness.checks
            await until(lambda: c.healthy)
            assert readiness.checks - seen == 4  # rise: 4 passed checks in a row
            await checker.close()
            assert not checker.tasks

    run(main)


def test_when_the_last_container_goes_down_the_queue_fails_and_waiting_requests_move_on() -> None:
    from onnxfleet.orchestrator.health import HealthChecker

    async def main() -> None:
        async with Scripted(silent) as a, Scripted(answer_ok) as b:
            fleet = Fleet([a.spec("a"), b.spec("b")])
            checker = HealthChecker(fleet.dispatcher, fleet.forwarder, HealthSpec(fall=1, rise=1))
            b_container = fleet.container("b")
            fleet.dispatcher.set_draining([b_container], True)
            first, first_done = fleet.send()
            queued, queued_done = fleet.send()
            await until(lambda: len(a.requests) == 1)
            assert first.container is fleet.container("a")
            assert queued.key is not None
            # a fails a check: its request without an answer byte goes on (to nowhere yet:
            # b drains, so nothing accepts) and the queue is failed at once
            checker.record(fleet.container("a"), "/readyz: no answer")
            done = await asyncio.wait_for(queued_done, 2)
            assert done.error is not None
            assert done.error.code == "no_ready_container"
            done = await asyncio.wait_for(first_done, 2)
            assert done.error is not None
            assert done.error.code == "no_ready_container"
            assert fleet.forwarder.retried == 1
            assert first.attempts == 1
            # a passing check brings it back: new requests flow again
            fleet.dispatcher.set_draining([b_container], False)
            checker.record(fleet.container("a"), None)
            assert fleet.container("a").healthy
            await checker.close()

    run(main)


def test_what_a_failed_check_records(monkeypatch: pytest.MonkeyPatch) -> None:
    from onnxfleet.orchestrator.health import HealthChecker
    from onnxfleet.orchestrator.upstream import Pool

    async def main() -> None:
        readiness = Readiness()
        async with Scripted(readiness) as a:
            dead = free_port()
            gone = ContainerSpec("gone", f"http://127.0.0.1:{dead}", "gone", "127.0.0.1", dead, 1)
            fleet = Fleet([a.spec("a"), gone])
            c = fleet.container("a")
            spec = HealthSpec(path="/ready", interval_s=0.01, fall=1)
            checker = HealthChecker(fleet.dispatcher, fleet.forwarder, spec)
            checker.sync()
            await until(lambda: readiness.checks >= 1)
            first = checker.tasks[c]
            assert a.requests[0].startswith(b"GET /ready HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n" % a.port)
            await until(lambda: not fleet.container("gone").healthy)
            error = fleet.container("gone").last_error
            assert error is not None
            assert error.startswith(f"/ready: connect to 127.0.0.1:{dead}")
            checker.sync(spec)  # same settings: same task
            assert checker.tasks[c] is first
            checker.sync(HealthSpec(path="/other", interval_s=0.01, fall=1))  # new settings: restarted
            await until(lambda: a.requests[-1].startswith(b"GET /other "))
            assert checker.tasks[c] is not first
            assert first.cancelled()
            readiness.ready = False
            await until(lambda: not c.healthy)
            assert c.last_error == "/other answered 503"

            async def broken(self: Pool, data: bytes, timeout: float) -> None:
                raise ValueError("a bug")

            monkeypatch.setattr(Pool, "request", broken)
            await until(lambda: c.last_error == "/other: ValueError")
            await checker.close()

    run(main)


def test_a_request_moved_on_by_the_checks_says_why() -> None:
    from onnxfleet.orchestrator.health import HealthChecker

    async def main() -> None:
        async with Scripted(silent) as a:
            fleet = Fleet([a.spec("a")], retries=0)
            c = fleet.container("a")
            c.model_version = "1"
            checker = HealthChecker(fleet.dispatcher, fleet.forwarder, HealthSpec(fall=1, rise=1))
            checker.record(c, None, None)  # a check that names no version keeps the one known
            assert c.model_version == "1"
            _, done = fleet.send()
            await until(lambda: len(a.requests) == 1)
            # a new version and a failed check at once: down, and its request moves on
            checker.record(c, "/readyz: no answer", "2")
            assert (c.model_version, c.healthy, c.last_error) == ("2", False, "/readyz: no answer")
            ex = await asyncio.wait_for(done, 2)
            assert ex.error is not None
            assert "a: a failed its health checks before answering (/readyz: no answer)" in ex.error.message

    run(main)


class Versioned:
    """Answers checks ready with ``X-Model-Version: <version>``, or closes without answering."""

    def __init__(self, version: str) -> None:
        self.version = version
        self.answer = True
        self.checks = 0

    async def __call__(self, _r: asyncio.StreamReader, writer: asyncio.StreamWriter, _n: int) -> bool:
        self.checks += 1
        if not self.answer:
            return False
        head = f"HTTP/1.1 200 OK\r\nX-Model-Version: {self.version}\r\nContent-Length: 2\r\n\r\n{{}}"
        writer.write(head.encode())
        return True


def test_the_checks_record_the_version_a_container_names_and_keep_it_through_failures() -> None:
    from onnxfleet.orchestrator.health import HealthChecker

    async def main() -> None:
        versioned = Versioned("7")
        async with Scripted(versioned) as a:
            fleet = Fleet([a.spec("a")])
            c = fleet.container("a")
            checker = HealthChecker(fleet.dispatcher, fleet.forwarder, HealthSpec(interval_s=0.01, fall=5))
            checker.sync()
            await until(lambda: c.model_version == "7")
            versioned.version = "8"  # restarted with another version
            await until(lambda: c.model_version == "8")
            versioned.answer = False  # checks that get no answer name no version
            seen = versioned.checks
            await until(lambda: versioned.checks >= seen + 2)
            assert c.last_error is not None
            assert c.model_version == "8"
            assert c.healthy  # 2 failures of the 5 that take it down
            await checker.close()

    run(main)
