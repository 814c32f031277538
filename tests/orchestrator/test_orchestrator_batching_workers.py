"""Batching through a real orchestrator in front of real `onnxfleet worker` processes
(gunicorn + onnxruntime, the demo model): answers identical to the container's answer to
each request alone (property-based: formats, batch sizes, ids, bad requests among good
ones), no worker ever sent more than its slot, and tritonclient with its defaults."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest
import tritonclient.http as triton
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn.datasets import load_digits

from tests.orchestrator.batch_support import FORMATS, Answer, client_request, post
from tests.orchestrator.orch_support import call, orchestrator
from tests.orchestrator.test_orchestrator_workers import DIGITS, start_worker
from tests.support import ROOT, Service

pytestmark = pytest.mark.slow

CARD = json.loads((ROOT / "app" / "models" / "digits.json").read_text())
MODEL = {key: CARD[key] for key in ("name", "batch", "inputs", "outputs")}
IMAGES = load_digits().data.astype(np.float32)
NAMES = ("w1/0", "w2/0")


def bad_requests() -> list[tuple[str, bytes, dict[str, str]]]:
    """Requests each worker refuses in its own words: they must never fail the others."""
    image = IMAGES[0].tolist()
    oip_json = {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": image}]}
    return [
        ("/run_model", json.dumps({"inputs": [image[:63]]}).encode(), {"Content-Type": "application/json"}),
        ("/run_model", b'{"inputs": [[' + b"NaN," * 63 + b"1.0]]}", {"Content-Type": "application/json"}),
        ("/run_model", json.dumps({"inputs": [image]}).encode(), {"Content-Type": "text/csv"}),
        ("/run_model", b'{"inputs": [[1.0,', {"Content-Type": "application/json"}),
        ("/v2/models/digits/infer", json.dumps({**oip_json, "outputs": [{"name": "nope"}]}).encode(), {}),
        (
            "/v2/models/digits/infer",
            json.dumps({"inputs": [{**oip_json["inputs"][0], "datatype": "FP64"}]}).encode(),
            {},
        ),
        ("/v2/models/digits/versions/0/infer", json.dumps(oip_json).encode(), {}),
        ("/v2/models/other/infer", json.dumps(oip_json).encode(), {}),
        # a header line over gunicorn's limit: 431 alone, so never merged (issue 17)
        ("/run_model", json.dumps({"inputs": [image]}).encode(), {"X-Padding": "p" * 9000}),
        # data nested 1,000 deep (2 KB): 400 naming the limit, and no request lost (issue 17)
        ("/v2/models/digits/infer", DEEP, {}),
    ]


DEEP = (
    b'{"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": '
    + b"[" * 1000
    + b"1.0"
    + b"]" * 1000
    + b"}]}"
)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Service, dict[str, Service]]]:
    workers = {name: start_worker(name).start() for name in NAMES}
    try:
        for w in workers.values():
            w.wait_ready()
        path = tmp_path_factory.mktemp("batching") / "routes.json"
        path.write_text(
            json.dumps(
                {
                    "containers": [
                        {"name": name, "url": w.url, "node": name.split("/")[0]}
                        for name, w in workers.items()
                    ],
                    "health": {"interval_s": 0.5},
                    "model": MODEL,
                    "batching": {"max_batch_size": 32, "max_delay_ms": 5},
                }
            )
        )
        with orchestrator(path) as orch:
            yield orch, workers
    finally:
        for w in workers.values():
            w.stop()


def refused_for_being_busy(workers: dict[str, Service]) -> float:
    """429s the workers answered: they have one slot and no waiting room (start_worker)."""
    total = 0.0
    for w in workers.values():
        _, _, text = call(w.url + "/metrics")
        for line in text.splitlines():
            if line.startswith("onnxfleet_worker_requests_total{") and 'code="429"' in line:
                total += float(line.rpartition(" ")[2])
    return total


REQUESTS = st.lists(
    st.one_of(
        st.tuples(
            st.sampled_from(FORMATS),
            st.integers(1, 4),
            st.integers(0, len(IMAGES) - 4),
            st.one_of(st.none(), st.from_regex(r"[a-z0-9-]{1,12}", fullmatch=True)),
        ),
        st.integers(0, len(bad_requests()) - 1),
    ),
    min_size=2,
    max_size=16,
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(REQUESTS)
def test_batched_answers_are_what_each_request_alone_gets(
    fleet: tuple[Service, dict[str, Service]], requests: list[Any]
) -> None:
    orch, workers = fleet
    wire = []
    for item in requests:
        if isinstance(item, int):
            wire.append(bad_requests()[item])
        else:
            fmt, rows, start, request_id = item
            wire.append(
                client_request(
                    fmt,
                    IMAGES[start : start + rows],
                    request_id,
                    model="digits",
                    input_name="input",
                    some_output="label",
                )
            )
    barrier = threading.Barrier(len(wire))

    def send(request: tuple[str, bytes, dict[str, str]]) -> Answer:
        barrier.wait(10)
        return post(orch.url, *request)

    with ThreadPoolExecutor(len(wire)) as pool:
        answers = list(pool.map(send, wire))
    for request, answer in zip(wire, answers, strict=True):
        container = answer.header("X-Container")
        assert container in workers, (answer.status, answer.body[:200])
        alone = post(workers[container].url, *request)
        assert answer.comparable() == alone.comparable(), request[0]
    assert refused_for_being_busy(workers) == 0, "a worker was sent more than its one slot"


def test_requests_a_worker_refuses_for_their_head_or_depth_get_that_answer_among_others(
    fleet: tuple[Service, dict[str, Service]],
) -> None:
    orch, workers = fleet
    good = [client_request("run_model", IMAGES[i : i + 1], f"g{i}") for i in range(10)]
    long, deep = bad_requests()[-2:]
    wire = [*good[:4], long, *good[4:7], deep, *good[7:]]
    for _ in range(3):  # (each round: a queue behind the two one-slot workers)
        barrier = threading.Barrier(len(wire))

        def send(request: tuple[str, bytes, dict[str, str]], barrier: threading.Barrier = barrier) -> Answer:
            barrier.wait(10)
            return post(orch.url, *request)

        with ThreadPoolExecutor(len(wire)) as pool:
            answers = list(pool.map(send, wire))
        assert answers[4].status == 431, answers[4].body
        assert answers[8].status == 400, answers[8].body
        assert b"nested more than 64 levels deep" in answers[8].body
        for request, answer in zip(wire, answers, strict=True):
            container = answer.header("X-Container")
            assert container in workers, (answer.status, answer.body[:200])
            assert answer.comparable() == post(workers[container].url, *request).comparable()


def test_requests_were_merged_and_none_was_sent_again(fleet: tuple[Service, dict[str, Service]]) -> None:
    """(After the property test, in the same fleet.) Merging happened, and no merged call
    was refused: the checks before merging caught every bad request."""
    orch, _ = fleet
    with ThreadPoolExecutor(16) as pool:
        answers = list(
            pool.map(lambda i: post(orch.url, *client_request("run_model", IMAGES[i : i + 1])), range(64))
        )
    assert [a.status for a in answers] == [200] * 64
    batching = call(orch.url + "/status")[2]["batching"]
    assert batching["requests"] > batching["calls"], batching
    assert batching["resent_singly"] == 0


def test_tritonclient_defaults_and_json_through_the_batching_orchestrator(
    fleet: tuple[Service, dict[str, Service]],
) -> None:
    import onnxruntime as ort

    orch, workers = fleet
    session = ort.InferenceSession(str(DIGITS), providers=["CPUExecutionProvider"])
    before = call(orch.url + "/status")[2]["batching"]

    def infer(i: int) -> tuple[int, Any]:
        client = triton.InferenceServerClient(f"127.0.0.1:{orch.port}")
        try:
            rows = IMAGES[i : i + 1 + i % 3]
            tensor = triton.InferInput("input", list(rows.shape), "FP32")
            tensor.set_data_from_numpy(rows, binary_data=i % 2 == 0)  # the default, and JSON
            outputs = (
                None if i % 2 == 0 else [triton.InferRequestedOutput("probabilities", binary_data=False)]
            )
            return i, client.infer("digits", [tensor], outputs=outputs, request_id=f"t{i}")
        finally:
            client.close()

    with ThreadPoolExecutor(12) as pool:
        results = list(pool.map(infer, range(48)))
    for i, result in results:
        rows = IMAGES[i : i + 1 + i % 3]
        label, probabilities = session.run(None, {"input": rows})
        np.testing.assert_array_equal(result.as_numpy("probabilities"), probabilities)
        if i % 2 == 0:
            np.testing.assert_array_equal(result.as_numpy("label"), label)
        assert result.get_response()["id"] == f"t{i}"
    after = call(orch.url + "/status")[2]["batching"]
    assert after["requests"] - before["requests"] > after["calls"] - before["calls"], "nothing was merged"
    assert refused_for_being_busy(workers) == 0
