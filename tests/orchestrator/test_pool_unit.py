"""The registry of model pools: a new table applied model by model."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from onnxfleet.orchestrator.batching import Batcher
from onnxfleet.orchestrator.dispatcher import Dispatcher
from onnxfleet.orchestrator.errors import HTTPError
from onnxfleet.orchestrator.exchange import Exchange, Forwarder
from onnxfleet.orchestrator.pool import ModelPool, Models, PoolLimits
from onnxfleet.orchestrator.roster import Container, Roster
from onnxfleet.orchestrator.routes import QueueSpec, parse_table


def table(*models: tuple[str, list[str], int]) -> Any:
    """A version-2 table: (model, container names, queue length) each, on unused addresses."""
    return parse_table(
        {
            "health": {"interval_s": 60, "timeout_s": 0.2},
            "models": [
                {
                    "name": name,
                    "containers": [
                        {
                            "name": c,
                            "url": f"http://127.0.0.{1 + i}:{9 + sum(map(ord, c))}",
                            "node": c.split("/")[0],
                        }
                        for i, c in enumerate(containers)
                    ],
                    "queue": {"max_length": length, "timeout_s": 60},
                }
                for name, containers, length in models
            ],
        }
    )


def serve(pool: ModelPool, started: list[tuple[Exchange, Container]]) -> None:
    """Its containers up, its sends recorded."""
    pool.dispatcher.start = lambda ex, c: started.append((ex, c))
    for c in pool.containers:
        c.record_check(True, 1, 1)
    pool.dispatcher.changed()


def test_a_reload_keeps_unchanged_models_starts_new_ones_and_retires_removed_ones() -> None:
    async def main() -> None:
        models = Models(table(("digits", ["a/0", "b/0"], 5), ("iris", ["a/iris/0"], 1)), PoolLimits())
        first = table(("digits", ["a/0", "b/0"], 5), ("iris", ["a/iris/0"], 1))
        models.apply(first, None)
        digits, iris = models.pools["digits"], models.pools["iris"]
        kept = list(digits.containers)
        started: list[tuple[Exchange, Container]] = []
        serve(digits, started)
        serve(iris, started)
        finished: list[Exchange] = []
        running = Exchange(b"x", None, finished.append)
        iris.dispatcher.submit(running)
        queued = Exchange(b"y", None, finished.append)
        iris.dispatcher.submit(queued)
        assert queued.key is not None
        # a flood on iris: its queue is full, digits' slots and queue are untouched
        with pytest.raises(HTTPError) as refused:
            iris.dispatcher.submit(Exchange(b"z", None, finished.append))
        assert refused.value.code == "queue_full"
        assert all(c.free for c in digits.containers)
        assert not digits.dispatcher.queue

        changes = models.apply(table(("digits", ["a/0", "b/0"], 5), ("mnist", ["c/0"], 2)), None)
        assert changes["models_added"] == ["mnist"]
        assert changes["models_removed"] == ["iris"]
        assert changes["removed"] == ["a/iris/0"]
        assert changes["added"] == ["c/0"]
        assert digits.containers == kept
        assert models.pools["digits"] is digits
        assert set(models.pools) == {"digits", "mnist"}
        # iris's queue is answered 503; its container leaves once its request in flight ends
        assert queued in finished
        assert queued.error is not None
        assert (queued.error.status, queued.error.code) == (503, "model_removed")
        assert running not in finished
        assert models.retired == [iris]
        assert [c.name for c in models.containers()][-1] == "a/iris/0"
        assert not models.idle()
        iris.dispatcher.release(iris.containers[0])
        assert not iris.containers
        assert models.idle()
        assert models.get("iris") is None
        assert models.get("mnist") is models.pools["mnist"]
        assert [m["name"] for m in models.served()] == ["digits", "mnist"]
        assert [c.name for c in models.select(node="a")] == ["a/0"]
        models.set_dispatching(False)
        assert not any(p.dispatcher.dispatching for p in models)
        models.set_dispatching(True)
        await models.close()

    asyncio.run(main())


def test_a_version_1_table_is_one_pool_for_any_name() -> None:
    one = parse_table({"containers": [{"name": "a", "url": "http://127.0.0.1:9", "node": "a"}]})
    models = Models(one, PoolLimits())
    assert models.get("anything") is models.default
    assert models.default.labels == ()
    named = parse_table(
        {
            "containers": [],
            "model": {
                "name": "digits",
                "inputs": [{"name": "x", "datatype": "FP32", "shape": [1]}],
                "outputs": [{"name": "y", "datatype": "FP32", "shape": [1]}],
            },
        }
    )
    models = Models(named, PoolLimits())
    assert models.get("digits") is models.default
    assert models.get("other") is None
    v2 = Models(table(("digits", [], 1)), PoolLimits())
    assert v2.default.labels == (("model", "digits"),)


def test_during_a_canary_unpinned_requests_go_to_its_version_for_its_share_and_to_the_baseline_else() -> None:
    from onnxfleet.orchestrator.canary import CanarySpec

    async def main() -> None:
        iris = table(("iris", ["a/0", "b/0", "c/0", "d/0"], 5))
        models = Models(iris, PoolLimits())
        models.apply(iris, None)
        pool = models.pools["iris"]
        for c, version in zip(pool.containers, ("1", "1", "3", "2"), strict=True):
            c.record_check(True, 1, 1)
            c.model_version = version
        assert pool.route_version(None) is None  # no canary: any container
        assert pool.route_version("3") == "3"
        # the baseline: the other version most ready containers serve (the canary's excluded)
        assert pool.baseline_version("2") == "1"
        assert pool.baseline_version("1") == "3"
        pool.start_canary(CanarySpec(version="2", percent=25), time.monotonic())
        routed = [pool.route_version(None) for _ in range(8)]
        assert routed == ["1", "1", "1", "2", "1", "1", "1", "2"]
        assert pool.route_version("3") == "3"  # a request naming a version keeps it
        # with no ready container of the canary's version, its share goes to the baseline
        pool.containers[3].record_check(False, 1, 1)
        assert [pool.route_version(None) for _ in range(4)] == ["1"] * 4
        assert pool.baseline_version("2") == "1"
        # nothing ready but the canary: no baseline, any container
        for c in pool.containers[:3]:
            c.record_check(False, 1, 1)
        pool.containers[3].record_check(True, 1, 1)
        assert pool.baseline_version("2") is None
        ended = pool.end_canary()
        assert ended is not None
        assert (pool.canary, pool.observer) == (None, None)
        assert pool.route_version(None) is None
        await models.close()

    asyncio.run(main())


def test_answers_reach_the_canary_with_422_and_5xx_as_errors() -> None:
    recorded: list[tuple[str, bool]] = []

    class Observer:
        def record(self, version: str, ok: bool, seconds: float, now: float) -> None:
            recorded.append((version, ok))

    models = Models(table(("iris", ["a/0"], 5)), PoolLimits())
    pool = models.pools["iris"]
    pool.observer = Observer()
    for status, answered in ((200, True), (404, True), (422, True), (500, True), (200, False)):
        ex = Exchange(b"x", None, lambda ex: None)
        ex.version = "7"
        if answered:
            ex.response = type("R", (), {"header": staticmethod(lambda name: "7"), "status": status})()
        pool.finished(ex, status)
    assert recorded == [("7", True), ("7", True), ("7", False), ("7", False), ("7", False)]


def test_the_pool_wires_its_parts_and_no_part_sets_another() -> None:
    """The forwarder and the batcher leave the dispatcher alone; the pool gives it both."""

    async def main() -> None:
        d = Dispatcher(QueueSpec(), Roster())
        forwarder = Forwarder(d, 60.0, 2)
        Batcher(d, forwarder, 1 << 20)
        assert not hasattr(d, "start")
        assert d.batcher is None
        models = Models(table(("digits", ["a/0"], 5)), PoolLimits())
        pool = models.default
        assert pool.dispatcher.start == pool.forwarder.send

    asyncio.run(main())
