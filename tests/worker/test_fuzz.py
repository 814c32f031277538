"""Property-based fuzzing of a real worker: over a thousand generated bodies (valid and
broken JSON, wrong shapes and types, huge numbers, NaN, deep nesting, wrong content
types) on the inference routes. Never a 5xx, always a strict JSON answer."""

from __future__ import annotations

import json
import time

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support import Service

EXAMPLES = 1100

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=8)
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=25,
)
numbers = (
    st.floats(min_value=0, max_value=16, width=32)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.integers(min_value=-(10**40), max_value=10**40)
)


def repeated(
    elements: st.SearchStrategy[object], max_size: int = 8, max_times: int = 18
) -> st.SearchStrategy:
    """Lists of up to max_size x max_times items from few draws (drawing every float of
    a 64-wide row one by one would spend the time budget in the generator)."""
    return st.tuples(st.lists(elements, max_size=max_size), st.integers(0, max_times)).map(
        lambda t: t[0] * t[1]
    )


# Digits rows: grey levels, sometimes NaN, infinities or extreme FP32 values.
pixels = st.floats(min_value=0, max_value=16, width=32) | st.sampled_from(
    [float("nan"), float("inf"), -1e38, 3e38]
)
valid_rows = st.lists(pixels, min_size=8, max_size=8).map(lambda r: r * 8)
any_rows = valid_rows | repeated(numbers) | json_values
batches = st.lists(any_rows, max_size=4)
run_model_bodies = st.fixed_dictionaries(
    {
        "inputs": batches
        | json_values
        | st.dictionaries(st.sampled_from(["input", "x", ""]), batches, max_size=2)
    }
)
v2_tensors = st.fixed_dictionaries(
    {
        "name": st.sampled_from(["input", "x"]) | json_values,
        "shape": st.lists(st.integers(min_value=-2, max_value=70), max_size=3) | json_values,
        "datatype": st.sampled_from(["FP32", "INT64", "BYTES", "float32"]) | json_values,
    },
    optional={"data": repeated(numbers) | batches | json_values},
)
v2_bodies = st.fixed_dictionaries(
    {"inputs": st.lists(v2_tensors, max_size=2) | json_values},
    optional={
        "outputs": st.lists(st.fixed_dictionaries({"name": st.text(max_size=12)}), max_size=2),
        "id": scalars,
    },
)
valid_run_model = st.fixed_dictionaries({"inputs": st.lists(valid_rows, min_size=1, max_size=4)})


@st.composite
def valid_v2(draw: st.DrawFn) -> dict:
    rows = draw(st.lists(valid_rows, min_size=1, max_size=3))
    data = [value for row in rows for value in row]
    return {"inputs": [{"name": "input", "shape": [len(rows), 64], "datatype": "FP32", "data": data}]}


@st.composite
def encoded(draw: st.DrawFn, values: st.SearchStrategy[object]) -> bytes:
    """JSON text (with NaN/Infinity literals when present), sometimes cut or corrupted."""
    text = json.dumps(draw(values)).encode()
    damage = draw(st.sampled_from(["none", "none", "none", "cut", "flip", "nest"]))
    if damage == "cut" and text:
        return text[: draw(st.integers(min_value=0, max_value=len(text) - 1))]
    if damage == "flip" and text:
        at = draw(st.integers(min_value=0, max_value=len(text) - 1))
        return text[:at] + bytes([draw(st.integers(min_value=0, max_value=255))]) + text[at + 1 :]
    if damage == "nest":
        depth = draw(st.integers(min_value=1, max_value=5000))
        return b'{"inputs": ' + b"[" * depth + text + b"]" * depth + b"}"
    return text


bodies = (
    encoded(valid_run_model)
    | encoded(valid_v2())
    | encoded(run_model_bodies)
    | encoded(v2_bodies)
    | encoded(json_values)
    | st.binary(max_size=300)
    | st.sampled_from([b"", b"NaN", b"[]", b"{}", b'{"inputs": null}', b"\xef\xbb\xbf{}"])
)
paths = st.sampled_from(
    [
        "/run_model",
        "/run_model",
        "/v2/models/digits/infer",
        "/v2/models/digits/versions/1/infer",
        "/v2/models/x/infer",
    ]
)
content_types = st.sampled_from(
    ["application/json"] * 6
    + ["application/json; charset=utf-8", "text/plain", "", "application/octet-stream"]
)


def strict_json(text: str) -> object:
    def reject(constant: str) -> object:
        raise ValueError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=reject)


@pytest.mark.slow
def test_no_5xx_and_always_json(digits_worker: Service) -> None:
    session = requests.Session()
    statuses: dict[int, int] = {}
    started = time.monotonic()

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.large_base_example,
        ],
    )
    @given(path=paths, content_type=content_types, body=bodies)
    def check(path: str, content_type: str, body: bytes) -> None:
        headers = {"Content-Type": content_type} if content_type else {}
        response = session.post(digits_worker.url + path, data=body, headers=headers, timeout=30)
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
        assert response.status_code < 500, (response.status_code, response.text, body[:300])
        assert response.headers["Content-Type"] == "application/json"
        answer = strict_json(response.text)
        assert isinstance(answer, dict)
        if response.status_code == 200:
            assert "outputs" in answer
        else:
            assert isinstance(answer["error"], str)
            assert isinstance(answer["code"], str)

    check()
    elapsed = time.monotonic() - started
    sent = sum(statuses.values())
    print(f"{sent} bodies in {elapsed:.1f} s: {dict(sorted(statuses.items()))}")
    assert sent >= 1000
    assert len(statuses) >= 4, statuses  # the bodies reached 200, 400, 415, 422...
    assert '"level":"error"' not in digits_worker.log()
