"""Issue 17 without processes: the codec's depth limit, which heads batching merges, and the
job store's byte accounting, fair share and Retry-After."""

from __future__ import annotations

import asyncio
import json
import time

import numpy as np
import pytest

from onnxfleet import oip
from onnxfleet.oip.tensors import MAX_DEPTH
from onnxfleet.orchestrator.jobs import JOB_OVERHEAD, Job, JobStore, Refused, result_json
from tests.orchestrator.test_batching_unit import Harness, server_request


def nested(depth: int) -> str:
    return "[" * depth + "1.0" + "]" * depth


# -- the codec --------------------------------------------------------------------------------
@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 1000, 1023])
def test_oip_data_nested_deeper_than_the_limit_is_a_400_naming_it(depth: int) -> None:
    body = '{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": ' + nested(depth) + "}]}"
    with pytest.raises(oip.CodecError) as refused:
        oip.parse_request(body.encode())
    assert refused.value.status == 400
    assert str(refused.value) == (
        f"input 'x': its data is nested more than {MAX_DEPTH} levels deep (arrays in arrays); "
        f"at most {MAX_DEPTH} are accepted"
    )


def test_oip_data_nested_up_to_the_limit_is_read() -> None:
    body = '{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": ' + nested(MAX_DEPTH) + "}]}"
    request = oip.parse_request(body.encode())
    assert request.inputs["x"].tolist() == [1.0]


def test_an_answer_nested_too_deeply_is_a_codec_error() -> None:
    body = '{"model_name": "m", "outputs": [{"name": "y", "shape": [1], "datatype": "FP32", "data": '
    with pytest.raises(oip.CodecError) as refused:
        oip.decode_response((body + nested(1000) + "}]}").encode())
    assert f"more than {MAX_DEPTH} levels" in str(refused.value)
    shallow = oip.decode_response((body + nested(3) + "}]}").encode())
    assert shallow.outputs["y"].tolist() == [1.0]


# -- which heads batching merges ----------------------------------------------------------------
@pytest.mark.parametrize(
    ("headers", "merged"),
    [
        ([(b"x-pad", b"p" * 4000)], True),
        ([(b"x-pad", b"p" * 9000)], False),  # a worker alone: 431
        ([(b"x-h%d" % i, b"v") for i in range(64)], True),
        ([(b"x-h%d" % i, b"v") for i in range(65)], False),
        ([(b"connection", b"keep-alive, close")], True),
        ([(b"connection", b"Keep-Alive, x-secret"), (b"x-secret", b"1")], False),  # not forwarded
    ],
)
def test_batching_never_merges_a_request_whose_head_a_worker_could_treat_otherwise(
    headers: list[tuple[bytes, bytes]], merged: bool
) -> None:
    async def main() -> None:
        h = Harness()
        request = server_request("POST", "/run_model", headers)
        request.url = b"/run_model"
        assert (h.batcher.part(request) is not None) is merged
        request.url = b"/run_model?" + b"q" * 2100  # a worker alone: 414 beyond 4,094
        assert h.batcher.part(request) is None

    asyncio.run(main())


# -- the job store --------------------------------------------------------------------------------
def store(max_jobs: int = 10, max_bytes: int = 100 * JOB_OVERHEAD, ttl: float = 60.0) -> JobStore:
    return JobStore(ttl, max_jobs, max_bytes, lambda: 7)


def add(s: JobStore, owner: str | None, size: int = 0) -> Job:
    s.check(owner, size)
    job = Job(owner=owner)
    s.add(job, size)
    return job


def test_the_store_counts_request_bytes_then_result_bytes_then_nothing() -> None:
    s = store(ttl=0.05)
    job = add(s, "a", 5000)
    assert s.bytes == JOB_OVERHEAD + 5000
    assert s.owners["a"].count == 1
    s.finish(job, "done", b'{"x": 1}')
    assert s.bytes == JOB_OVERHEAD + 8
    assert job.size == JOB_OVERHEAD + 8
    time.sleep(0.06)
    assert s.get(job.id) is None
    assert (s.bytes, s.owners) == (0, {})


def test_a_token_holds_at_most_its_share_and_another_always_finds_room() -> None:
    s = store()
    for _ in range(5):  # alone: half of the 10 jobs
        add(s, "a")
    with pytest.raises(Refused) as refused:
        add(s, "a")
    assert "its share of the job store is 5 jobs" in refused.value.message
    assert refused.value.retry_after == 7  # none finished: the queue's estimate
    for _ in range(3):  # two holders: a third each
        add(s, "b")
    with pytest.raises(Refused):
        add(s, "b")
    add(s, "c")  # three holders: a quarter each, and the room left
    assert len(s.jobs) == 9
    assert s.share("d") == pytest.approx(1 / 5)


def test_an_open_api_has_one_caller_who_may_fill_the_store() -> None:
    s = store(max_jobs=4)
    for _ in range(4):
        add(s, None)
    with pytest.raises(Refused) as refused:
        add(s, None)
    assert refused.value.message == "4 jobs are stored (--max-jobs): retry later"


def test_bytes_are_bounded_for_the_store_and_for_each_share() -> None:
    s = store(max_jobs=100, max_bytes=10 * JOB_OVERHEAD)
    add(s, "a", 3 * JOB_OVERHEAD)  # 4 of the 5 overheads a lone token may hold
    with pytest.raises(Refused) as refused:
        add(s, "a", JOB_OVERHEAD)
    assert "bytes" in refused.value.message
    add(s, "b", JOB_OVERHEAD)
    with pytest.raises(Refused) as full:
        add(s, None, 4 * JOB_OVERHEAD)
    assert "--max-job-bytes" in full.value.message


def test_retry_after_is_when_the_callers_first_finished_job_is_forgotten() -> None:
    s = store(ttl=40.0)
    jobs = [add(s, "a") for _ in range(5)]
    for job in jobs:
        s.finish(job, "done", b"{}")
    with pytest.raises(Refused) as refused:
        add(s, "a")
    assert 39 <= refused.value.retry_after <= 40


def test_a_result_that_does_not_fit_is_known_before_it_is_stored() -> None:
    s = store(max_bytes=10 * JOB_OVERHEAD)
    job = add(s, None, 100)
    assert s.fits(job, 9 * JOB_OVERHEAD)
    assert not s.fits(job, 9 * JOB_OVERHEAD + 1)


@pytest.mark.parametrize(
    ("body", "content_type", "expected"),
    [
        (b' {"a": [1, 2]}\n', "application/json", {"a": [1, 2]}),
        (b'{"a": NaN}', "application/json", {"a": None}),
        (b"not json", "application/json", "not json"),
        (b'{"a": 1}', "text/plain", '{"a": 1}'),
        (b"\xff", None, "\ufffd"),
    ],
)
def test_a_result_is_the_workers_json_as_it_is_or_its_text(
    body: bytes, content_type: str | None, expected: object
) -> None:
    encoded = result_json({"status_code": 200}, body, content_type)
    assert json.loads(encoded) == {"status_code": 200, "body": expected}


def test_a_large_json_result_is_written_without_being_re_encoded() -> None:
    body = json.dumps({"outputs": np.arange(1000.0).tolist()}, indent=1).encode()
    assert result_json({}, body, "application/json") == b'{"body":' + body + b"}"
