"""The dispatcher alone, with fake connections: slot accounting and FIFO under random events."""

from __future__ import annotations

import asyncio
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from onnxfleet.orchestrator.dispatch import Dispatcher, Exchange, Rejected
from onnxfleet.orchestrator.routes import ContainerSpec, QueueSpec
from onnxfleet.orchestrator.upstream import ClosedBeforeResponse, Response


class FakeConn:
    """Stands for a keep-alive connection: remembers the exchange sent on it."""

    closed = False
    reused = False

    def __init__(self, sent: list[tuple[Any, Any]]) -> None:
        self.sent = sent

    def send(self, data: bytes, timeout: float, callback: Any, arg: Any) -> None:
        self.sent.append((callback, arg, self))

    def close(self) -> None:
        self.closed = True


class FakePool:
    def __init__(self, sent: list) -> None:
        self.sent = sent
        self.max_idle = 0

    def take_idle(self) -> FakeConn:
        return FakeConn(self.sent)

    def put(self, conn: FakeConn, keep_alive: bool) -> None:
        pass

    def close(self) -> None:
        pass


SPECS = [
    ContainerSpec("a/0", "http://a:1", "a", "a", 1, 1),
    ContainerSpec("b/0", "http://b:1", "b", "b", 1, 2),
    ContainerSpec("c/0", "http://c:1", "c", "c", 1, 1),
]
OK = Response(200, [(b"X-Model-Version", b"7")], b"{}", True)

events = st.lists(
    st.tuples(
        st.sampled_from(["submit", "submit", "submit", "answer", "answer", "fail", "leave", "eject", "heal"]),
        st.integers(0, 50),
    ),
    max_size=80,
)


@settings(max_examples=150, deadline=None)
@given(events)
def test_slots_are_never_oversubscribed_and_the_queue_is_fifo(steps: list[tuple[str, int]]) -> None:
    async def scenario() -> None:
        d = Dispatcher(QueueSpec(max_length=20, timeout_s=60), retries=1)
        d.apply(SPECS, d.queue_spec)
        sent: list = []
        for c in d.containers:
            c.pool = FakePool(sent)  # type: ignore[assignment]
            d.mark_health(c, True, rise=1, fall=1)
        submitted: list[Exchange] = []
        started_order: list[Exchange] = []
        loop = asyncio.get_running_loop()
        for action, n in steps:
            if action == "submit":
                ex = Exchange(b"x", None, loop)
                try:
                    d.submit(ex)
                    submitted.append(ex)
                except Rejected:
                    pass
            elif sent and action in ("answer", "fail"):
                callback, ex, conn = sent.pop(n % len(sent))
                if action == "answer":
                    callback(ex, conn, OK, None)
                else:
                    callback(ex, conn, None, ClosedBeforeResponse("reset"))
            elif submitted and action == "leave":
                ex = submitted[n % len(submitted)]
                if not ex.future.done():
                    ex.future.cancel()
                    d.withdraw(ex)
            elif action == "eject":
                d.eject(d.containers[n % 3], "test")
            elif action == "heal":
                d.mark_health(d.containers[n % 3], True, rise=1, fall=1)
            started_order.extend(ex for _, ex, _ in sent if ex not in started_order)
            for c in d.containers:
                assert 0 <= c.inflight <= c.max_concurrency
                assert c.inflight == sum(1 for _, ex, _ in sent if ex.container is c)
            # never an idle healthy slot while someone waits
            if d.queue:
                assert all(c.inflight == c.max_concurrency for c in d.containers if c.accepting)
        # first starts follow arrival order (retries may jump ahead: they had waited)
        first_starts = [ex for ex in started_order if ex.attempts == 0]
        assert first_starts == sorted(first_starts, key=submitted.index)
        for c in d.containers:
            assert c.model_version in (None, "7")
        for ex in submitted:  # every failed answer is looked at (no "never retrieved" noise)
            if ex.future.done() and not ex.future.cancelled():
                ex.future.exception()

    asyncio.run(scenario())
