"""canary.py's rules at their edges: the spec's validation and defaults, the exact spread,
the bounded p99, the window, each check at its boundary, early rollback, and the view."""

from __future__ import annotations

import math
from typing import Any

import pytest

from onnxfleet.orchestrator import canary as canary_module
from onnxfleet.orchestrator.canary import (
    Canary,
    CanarySpec,
    LatencyHistogram,
    Side,
    Verdict,
    answer_ok,
)

T0 = 1000.0  # an arbitrary monotonic clock reading at the start


def spec(**overrides: Any) -> CanarySpec:
    return CanarySpec.from_json({"version": "v2", **overrides})


def feed(
    c: Canary, version: str, n: int, *, errors: int = 0, seconds: float = 0.1, now: float = T0 + 1
) -> None:
    """``n`` answers of ``version``, the first ``errors`` of them failed."""
    for i in range(n):
        c.record(version, i >= errors, seconds, now)


# --- the spec -------------------------------------------------------------------------------


def test_the_defaults_fill_every_field_but_the_version() -> None:
    assert CanarySpec.from_json({"version": "v2"}) == CanarySpec(
        version="v2",
        percent=10.0,
        window_s=60.0,
        min_requests=20,
        max_error_rate_margin=0.01,
        max_p99_factor=1.5,
    )
    assert CanarySpec("v2") == CanarySpec.from_json({"version": "v2"})
    assert canary_module.DEFAULTS == {
        "percent": 10.0,
        "window_s": 60.0,
        "min_requests": 20,
        "max_error_rate_margin": 0.01,
        "max_p99_factor": 1.5,
    }


def test_every_field_of_the_body_is_taken_and_the_model_is_allowed() -> None:
    body = {
        "model": "digits",
        "version": "2.0.1",
        "percent": 25,
        "window_s": 30,
        "min_requests": 5,
        "max_error_rate_margin": 0,
        "max_p99_factor": 2,
    }
    got = CanarySpec.from_json(body)
    assert got == CanarySpec("2.0.1", 25.0, 30.0, 5, 0.0, 2.0)
    assert all(type(v) is float for v in (got.percent, got.window_s, got.max_p99_factor))
    assert type(got.max_error_rate_margin) is float


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ([], "body: expected a JSON object, got list"),
        ("v2", "body: expected a JSON object, got str"),
        (
            {"version": "v2", "precent": 5},
            "precent: unknown field (expected some of max_error_rate_margin, max_p99_factor,"
            " min_requests, model, percent, version, window_s)$",
        ),
        ({"version": "v2", "b": 1, "a": 2}, "a: unknown field"),
        ({}, "version: required (the canary version, a string)"),
        ({"percent": 5}, "version: required"),
    ],
)
def test_a_body_that_is_not_a_spec_is_refused_naming_what_was_expected(body: object, message: str) -> None:
    with pytest.raises(ValueError, match="^" + message.replace("(", r"\(").replace(")", r"\)")):
        CanarySpec.from_json(body)


@pytest.mark.parametrize("version", ["0", "v2", "A1._-b", "a" * 64, "1.0.0-rc.1"])
def test_a_version_matching_the_name_pattern_is_taken(version: str) -> None:
    assert spec(version=version).version == version


@pytest.mark.parametrize("version", ["", "-v2", ".v2", "_v2", "v 2", "v2/", "a" * 65, 2, None, ["v2"]])
def test_any_other_version_is_refused(version: object) -> None:
    with pytest.raises(
        ValueError,
        match=r"^version: expected a non-empty string matching \[A-Za-z0-9\]\[A-Za-z0-9._-\]\{0,63\}"
        r" \(at most 64 characters\), got ",
    ):
        spec(version=version)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("percent", 1e-9),
        ("percent", 99.999),
        ("window_s", 1e-3),
        ("window_s", 86400),
        ("min_requests", 1),
        ("max_error_rate_margin", 0),
        ("max_error_rate_margin", 1),
        ("max_p99_factor", 1),
        ("max_p99_factor", 1e300),
    ],
)
def test_the_limits_of_every_field_are_inclusive_where_stated(name: str, value: float) -> None:
    assert getattr(spec(**{name: value}), name) == value


NUMBER = "expected a number, got "
PERCENT = "percent: expected a number greater than 0 and less than 100, got "
WINDOW = "window_s: expected a number of seconds greater than 0 and at most 86400, got "
MARGIN = r"max_error_rate_margin: expected a number from 0 to 1 \(0.01 is 1 point\), got "
FACTOR = "max_p99_factor: expected a finite number >= 1, got "


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("percent", 0, PERCENT + "0.0"),
        ("percent", 100, PERCENT + "100.0"),
        ("percent", -5, PERCENT),
        ("percent", math.nan, PERCENT + "nan"),
        ("percent", math.inf, PERCENT),
        ("percent", "10", "percent: " + NUMBER + "'10'"),
        ("percent", True, "percent: " + NUMBER + "True"),
        ("percent", None, "percent: " + NUMBER + "None"),
        ("window_s", 0, WINDOW + "0.0"),
        ("window_s", -1, WINDOW),
        ("window_s", 86400.001, WINDOW + "86400.001"),
        ("window_s", math.nan, WINDOW),
        ("window_s", [60], "window_s: " + NUMBER + r"\[60\]"),
        ("min_requests", 0, "min_requests: expected an integer >= 1, got 0"),
        ("min_requests", -3, "min_requests: expected an integer >= 1, got -3"),
        ("min_requests", 20.0, "min_requests: expected an integer, got 20.0"),
        ("min_requests", True, "min_requests: expected an integer, got True"),
        ("min_requests", "20", "min_requests: expected an integer, got '20'"),
        ("max_error_rate_margin", -0.001, MARGIN + "-0.001"),
        ("max_error_rate_margin", 1.001, MARGIN + "1.001"),
        ("max_error_rate_margin", math.nan, MARGIN),
        ("max_error_rate_margin", False, "max_error_rate_margin: " + NUMBER + "False"),
        ("max_p99_factor", 0.999, FACTOR + "0.999"),
        ("max_p99_factor", 0, FACTOR),
        ("max_p99_factor", math.inf, FACTOR + "inf"),
        ("max_p99_factor", math.nan, FACTOR),
        ("max_p99_factor", {}, "max_p99_factor: " + NUMBER),
    ],
)
def test_a_value_out_of_its_range_is_refused_naming_the_field_and_the_range(
    name: str, value: object, message: str
) -> None:
    with pytest.raises(ValueError, match="^" + message):
        spec(**{name: value})


def test_the_spec_checks_its_values_when_built_directly_too() -> None:
    with pytest.raises(ValueError, match=r"^percent: "):
        CanarySpec("v2", percent=100)
    with pytest.raises(ValueError, match=r"^min_requests: expected an integer, got 2\.5"):
        CanarySpec("v2", min_requests=2.5)  # type: ignore[arg-type]


# --- what counts as an error ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "ok"), [(None, False), (200, True), (404, True), (499, True), (500, False), (503, False)]
)
def test_an_error_is_a_5xx_or_no_answer_and_a_4xx_is_not(status: int | None, ok: bool) -> None:
    assert answer_ok(status) is ok


# --- the spread ------------------------------------------------------------------------------


def calls(c: Canary, n: int) -> list[int]:
    """The 1-based numbers of the calls among ``n`` that went to the canary."""
    return [k for k in range(1, n + 1) if c.routes_to_canary()]


def test_ten_percent_is_exactly_every_tenth_call() -> None:
    assert calls(Canary(spec(percent=10), T0), 100) == list(range(10, 101, 10))


@pytest.mark.parametrize("percent", [33, 50, 12.5, 0.1, 99.9, 1 / 3 * 100])
def test_any_percent_spreads_evenly_without_drift(percent: float) -> None:
    c = Canary(spec(percent=percent), T0)
    share = canary_module._exact(percent)
    expected = [k for k in range(1, 3001) if math.floor(k * share / 100) > math.floor((k - 1) * share / 100)]
    assert calls(c, 3000) == expected
    assert len(expected) == math.floor(3000 * share / 100)


def test_a_tenth_of_a_percent_is_one_call_in_a_thousand_exactly() -> None:
    # adding 0.1 as a binary float a thousand times stays under 100: the exact sum does not
    assert calls(Canary(spec(percent=0.1), T0), 2000) == [1000, 2000]


def test_after_a_rollback_no_call_goes_to_the_canary() -> None:
    c = Canary(spec(percent=50, min_requests=1), T0)
    assert calls(c, 4) == [2, 4]
    c.record("v2", False, 0.1, T0 + 1)
    assert c.verdict(T0 + 1) is not None
    assert calls(c, 100) == []


def test_after_a_promotion_the_spread_goes_on_unchanged() -> None:
    c = Canary(spec(percent=50, min_requests=1), T0)
    c.record("v2", True, 0.1, T0 + 1)
    verdict = c.verdict(T0 + 60)
    assert verdict is not None
    assert verdict.decision == "promote"
    assert calls(c, 6) == [2, 4, 6]


# --- the latency histogram -------------------------------------------------------------------


def nearest_rank(values: list[float], q: int) -> float:
    ordered = sorted(values)
    return ordered[math.ceil(q / 100 * len(ordered)) - 1]


def test_an_empty_histogram_has_no_percentile() -> None:
    assert LatencyHistogram().percentile(99) is None


@pytest.mark.parametrize("seconds", [0.0, 1e-7, 0.000123, 0.25, 0.375, 1.7, 3000.0, 90000.0])
def test_one_value_or_many_equal_ones_give_it_back_exactly(seconds: float) -> None:
    h = LatencyHistogram()
    for _ in range(7):
        h.add(seconds)
    assert h.percentile(99) == seconds
    assert h.percentile(1) == seconds


def test_a_negative_duration_counts_as_zero() -> None:
    h = LatencyHistogram()
    h.add(-0.5)
    assert (h.count, h.low, h.high, h.percentile(99)) == (1, 0.0, 0.0, 0.0)


@pytest.mark.parametrize(
    ("fast", "slow", "expected"), [(99, 1, 0.01), (98, 2, 1.0), (198, 2, 0.01), (197, 3, 1.0)]
)
def test_the_p99_is_the_nearest_rank(fast: int, slow: int, expected: float) -> None:
    h = LatencyHistogram()
    for _ in range(fast):
        h.add(0.01)
    for _ in range(slow):
        h.add(1.0)
    assert h.count == fast + slow
    assert h.percentile(99) == pytest.approx(expected, rel=0.02)


def test_every_percentile_is_within_two_percent_of_the_exact_one() -> None:
    # log-uniform over 1e-5 .. 1e3 s, in a fixed scrambled order
    values = [10 ** (-5 + 8 * ((i * 7919) % 2003) / 2003) for i in range(2003)]
    h = LatencyHistogram()
    for v in values:
        h.add(v)
    for q in (1, 10, 50, 90, 95, 99, 100):
        got = h.percentile(q)
        assert got is not None
        exact = nearest_rank(values, q)
        assert abs(got - exact) <= 0.0199 * exact, (q, got, exact)


@pytest.mark.parametrize("k", [1, 10, 137, 400, 598])
def test_bucket_k_holds_floor_times_growth_to_the_k(k: int) -> None:
    low = LatencyHistogram.FLOOR_S * LatencyHistogram.GROWTH**k
    assert LatencyHistogram.bucket(low * 1.001) == k
    assert LatencyHistogram.bucket(low * 1.039) == k
    assert LatencyHistogram.bucket(low * 1.041) == k + 1


def test_the_buckets_are_bounded_at_both_ends() -> None:
    assert LatencyHistogram.GROWTH == 1.04
    assert LatencyHistogram.FLOOR_S == 1e-6
    assert LatencyHistogram.BUCKETS == 600
    assert [LatencyHistogram.bucket(s) for s in (0.0, 1e-9, 1e-6)] == [0, 0, 0]
    assert LatencyHistogram.bucket(1.0000001e-6) == 0
    assert LatencyHistogram.bucket(1.05e-6) == 1
    top = LatencyHistogram.FLOOR_S * LatencyHistogram.GROWTH**599
    assert [LatencyHistogram.bucket(s) for s in (top * 1.01, top * 1.05, 1e6, 1e12)] == [599] * 4
    assert LatencyHistogram.bucket(top / 1.01) == 598


def test_memory_does_not_grow_with_traffic() -> None:
    h = LatencyHistogram()
    for i in range(100_000):
        h.add(10 ** (-8 + 14 * (i % 9973) / 9973))  # 1e-8 .. 1e6 s, over every bucket
    assert h.count == 100_000
    assert len(h.counts) == LatencyHistogram.BUCKETS
    assert sum(h.counts.values()) == 100_000


# --- one side's figures ----------------------------------------------------------------------


def test_a_side_without_requests_has_no_error_rate_and_no_p99() -> None:
    assert Side().figures() == {"requests": 0, "errors": 0, "error_rate": 0.0, "p99_ms": None, "versions": []}


def test_a_sides_p99_is_the_99th_percentile_not_the_maximum() -> None:
    side = Side()
    for _ in range(99):
        side.record("v1", True, 0.25)
    side.record("v1", True, 1.0)
    assert side.figures()["p99_ms"] == 250.0


def test_a_side_counts_requests_errors_and_versions() -> None:
    side = Side()
    side.record("v1", True, 0.25)
    side.record("v0", False, 0.25)
    side.record("v1", True, 0.25)
    side.record("v1", True, 0.25)
    assert side.figures() == {
        "requests": 4,
        "errors": 1,
        "error_rate": 0.25,
        "p99_ms": 250.0,
        "versions": ["v0", "v1"],
    }


# --- the window and the verdict --------------------------------------------------------------


def test_a_good_canary_is_judged_only_at_the_end_of_the_window_then_promoted() -> None:
    c = Canary(spec(window_s=60), T0)
    feed(c, "v1", 200, errors=2, seconds=0.25)
    feed(c, "v2", 20, seconds=0.25)
    assert c.verdict(T0 + 59.999) is None  # never promoted early
    verdict = c.verdict(T0 + 60)
    assert verdict == Verdict(
        "promote",
        "error rate 0.0 % <= baseline 1.0 % + 1.0 points; p99 250.0 ms <= 1.5 x baseline p99 250.0 ms"
        " (20 canary requests)",
        {
            "canary": {"requests": 20, "errors": 0, "error_rate": 0.0, "p99_ms": 250.0, "versions": ["v2"]},
            "baseline": {
                "requests": 200,
                "errors": 2,
                "error_rate": 0.01,
                "p99_ms": 250.0,
                "versions": ["v1"],
            },
            "latency_compared": True,
        },
        elapsed_s=60.0,
    )
    assert c.verdict(T0 + 1e6) is verdict  # the first verdict is final


def test_fewer_canary_requests_than_the_minimum_is_a_rollback_at_the_end() -> None:
    c = Canary(spec(min_requests=20, window_s=30), T0)
    feed(c, "v1", 100)
    feed(c, "v2", 19)
    assert c.verdict(T0 + 29.9) is None
    verdict = c.verdict(T0 + 30)
    assert verdict is not None
    assert verdict.decision == "rollback"
    assert verdict.reason == "too few requests: 19 canary requests in the 30 s window, at least 20 needed"
    assert verdict.figures["canary"]["requests"] == 19


def test_exactly_the_minimum_of_canary_requests_is_enough() -> None:
    c = Canary(spec(min_requests=20), T0)
    feed(c, "v1", 100)
    feed(c, "v2", 20)
    verdict = c.verdict(T0 + 60)
    assert verdict is not None
    assert verdict.decision == "promote"


def test_too_few_requests_without_any_traffic() -> None:
    c = Canary(spec(min_requests=1, window_s=0.5), T0)
    verdict = c.verdict(T0 + 0.5)
    assert verdict is not None
    assert verdict.reason == "too few requests: 0 canary requests in the 0.5 s window, at least 1 needed"


@pytest.mark.parametrize(("canary_errors", "decision"), [(1, "promote"), (2, "rollback")])
def test_the_error_rate_may_exceed_the_baselines_by_the_margin_and_no_more(
    canary_errors: int, decision: str
) -> None:
    c = Canary(spec(min_requests=100, max_error_rate_margin=0.01), T0)
    feed(c, "v1", 100)
    feed(c, "v2", 100, errors=canary_errors)
    verdict = c.verdict(T0 + 60)
    assert verdict is not None
    assert verdict.decision == decision


def test_the_error_rate_comparison_is_exact_on_the_decimals_given() -> None:
    # 0.7 + 0.1 is 0.7999999999999999 in binary floats: the canary's 0.8 is within it exactly
    c = Canary(spec(min_requests=10, max_error_rate_margin=0.1), T0)
    feed(c, "v1", 10, errors=7)
    feed(c, "v2", 10, errors=8)
    verdict = c.verdict(T0 + 60)
    assert verdict is not None
    assert verdict.reason.startswith("error rate 80.0 % <= baseline 70.0 % + 10.0 points; ")


def test_a_failing_canary_short_of_the_minimum_is_rolled_back_for_too_few_requests() -> None:
    c = Canary(spec(min_requests=8), T0)
    feed(c, "v1", 1000, errors=3)
    feed(c, "v2", 7, errors=7)
    assert c.verdict(T0 + 59) is None
    verdict = c.verdict(T0 + 60)
    assert verdict is not None
    assert verdict.decision == "rollback"
    assert verdict.reason == "too few requests: 7 canary requests in the 60 s window, at least 8 needed"


def test_a_failing_error_rate_is_a_rollback_naming_the_rates_and_the_margin() -> None:
    c = Canary(spec(min_requests=8, max_error_rate_margin=0.01), T0)
    feed(c, "v1", 1000, errors=3)
    feed(c, "v2", 8, errors=1, now=T0 + 2.5)
    verdict = c.verdict(T0 + 2.5)
    assert verdict is not None
    assert verdict.decision == "rollback"
    assert (
        verdict.reason
        == "error rate 12.5 % > baseline 0.3 % + 1.0 points (judged after 2.5 s of the 60 s window)"
    )
    assert verdict.elapsed_s == 2.5


@pytest.mark.parametrize(("canary_s", "decision"), [(0.375, "promote"), (0.376, "rollback")])
def test_the_p99_may_be_the_factor_times_the_baselines_and_no_more(canary_s: float, decision: str) -> None:
    c = Canary(spec(min_requests=20, max_p99_factor=1.5), T0)
    feed(c, "v1", 100, seconds=0.25)
    feed(c, "v2", 20, seconds=canary_s, now=T0 + 10)
    verdict = c.verdict(T0 + 60)
    assert verdict is not None
    assert verdict.decision == decision
    if decision == "rollback":
        assert (
            verdict.reason
            == "p99 376.0 ms > 1.5 x baseline p99 250.0 ms (judged after 10.0 s of the 60 s window)"
        )
        assert verdict.elapsed_s == 10.0


def test_both_failed_checks_are_named() -> None:
    c = Canary(spec(min_requests=20), T0)
    feed(c, "v1", 100, seconds=0.2)
    feed(c, "v2", 20, errors=10, seconds=0.5)
    verdict = c.verdict(T0 + 1)
    assert verdict is not None
    assert verdict.reason == (
        "error rate 50.0 % > baseline 0.0 % + 1.0 points; p99 500.0 ms > 1.5 x baseline p99 200.0 ms"
        " (judged after 1.0 s of the 60 s window)"
    )


def test_without_baseline_requests_the_error_rate_is_judged_against_the_margin_alone() -> None:
    c = Canary(spec(min_requests=100, max_error_rate_margin=0.01), T0)
    feed(c, "v2", 100, errors=1, seconds=5.0)  # slow, but there is nothing to compare with
    assert c.verdict(T0 + 59) is None
    verdict = c.verdict(T0 + 60)
    assert verdict is not None
    assert verdict.decision == "promote"
    assert verdict.reason == (
        "error rate 1.0 % <= 1.0 points (no baseline requests in the window: judged against the"
        " margin alone, latency not compared) (100 canary requests)"
    )
    assert verdict.figures["latency_compared"] is False
    assert verdict.figures["baseline"]["requests"] == 0

    c = Canary(spec(min_requests=100, max_error_rate_margin=0.01), T0)
    feed(c, "v2", 100, errors=2, now=T0 + 4)
    verdict = c.verdict(T0 + 4)
    assert verdict is not None
    assert verdict.decision == "rollback"
    assert verdict.reason == (
        "error rate 2.0 % > 1.0 points (no baseline requests in the window: judged against the"
        " margin alone, latency not compared) (judged after 4.0 s of the 60 s window)"
    )


def test_a_zero_margin_with_no_baseline_allows_no_error_at_all() -> None:
    c = Canary(spec(min_requests=3, max_error_rate_margin=0), T0)
    feed(c, "v2", 3, errors=0)
    verdict = c.verdict(T0 + 60)
    assert verdict is not None
    assert verdict.decision == "promote"
    c = Canary(spec(min_requests=3, max_error_rate_margin=0), T0)
    feed(c, "v2", 3, errors=1)
    verdict = c.verdict(T0 + 1)
    assert verdict is not None
    assert verdict.decision == "rollback"


# --- early rollback --------------------------------------------------------------------------


def test_a_failing_canary_is_not_judged_before_it_has_the_minimum_of_requests() -> None:
    c = Canary(spec(min_requests=20, percent=50), T0)
    feed(c, "v1", 100)
    for n in range(1, 20):
        c.record("v2", False, 0.1, T0 + n)
        assert c.verdict(T0 + n) is None
        assert c.view(T0 + n)["state"] == "judging"
    c.record("v2", False, 0.1, T0 + 20)
    # the record itself judged: the very next routing call sends nothing to the canary
    assert not any(c.routes_to_canary() for _ in range(10))
    verdict = c.verdict(T0 + 20)
    assert verdict is not None
    assert verdict.decision == "rollback"
    assert verdict.elapsed_s == 20.0


def test_the_baselines_record_can_trigger_the_early_rollback() -> None:
    c = Canary(spec(min_requests=20, max_error_rate_margin=0), T0)
    feed(c, "v1", 10, errors=1)  # baseline 10 %
    feed(c, "v2", 20, errors=2)  # canary 10 %: within 10 % + 0 points
    assert c.verdict(T0 + 1) is None
    c.record("v1", True, 0.1, T0 + 3)  # baseline now 1 in 11
    verdict = c.verdict(T0 + 3)
    assert verdict is not None
    assert (
        verdict.reason
        == "error rate 10.0 % > baseline 9.1 % + 0.0 points (judged after 3.0 s of the 60 s window)"
    )
    assert verdict.figures["baseline"]["requests"] == 11


def test_records_after_the_verdict_or_the_window_are_not_counted() -> None:
    c = Canary(spec(min_requests=1, window_s=10), T0)
    c.record("v2", True, 0.1, T0 + 1)
    c.record("v1", True, 0.1, T0 + 10)  # the end: judged before this record counts
    verdict = c.verdict(T0 + 10)
    assert verdict is not None
    assert verdict.decision == "promote"
    assert verdict.figures["baseline"]["requests"] == 0
    c.record("v2", False, 9.0, T0 + 11)
    assert c.canary.requests == 1
    assert c.baseline.requests == 0

    c = Canary(spec(min_requests=1), T0)
    c.record("v2", False, 0.1, T0 + 1)  # rolled back at once (no baseline, 100 % > 1 point)
    c.record("v2", True, 0.1, T0 + 2)
    c.record("v1", True, 0.1, T0 + 2)
    assert (c.canary.requests, c.baseline.requests) == (1, 0)


def test_every_other_version_is_baseline() -> None:
    c = Canary(spec(version="v2", min_requests=1), T0)
    c.record("v1", True, 0.1, T0 + 1)
    c.record("v0", False, 0.1, T0 + 1)
    c.record("v2", True, 0.1, T0 + 1)
    c.record("v2.1", True, 0.1, T0 + 1)
    figures = c.view(T0 + 1)["figures"]
    assert figures["canary"]["versions"] == ["v2"]
    assert figures["canary"]["requests"] == 1
    assert figures["baseline"]["versions"] == ["v0", "v1", "v2.1"]
    assert (figures["baseline"]["requests"], figures["baseline"]["errors"]) == (3, 1)


# --- the view --------------------------------------------------------------------------------


def test_the_view_while_judging() -> None:
    c = Canary(spec(window_s=60, percent=5), T0)
    c.record("v1", True, 0.002, T0 + 1)
    assert c.view(T0 + 15) == {
        "spec": {
            "version": "v2",
            "percent": 5.0,
            "window_s": 60.0,
            "min_requests": 20,
            "max_error_rate_margin": 0.01,
            "max_p99_factor": 1.5,
        },
        "started": T0,
        "elapsed_s": 15.0,
        "remaining_s": 45.0,
        "state": "judging",
        "reason": None,
        "decided_after_s": None,
        "figures": {
            "canary": {"requests": 0, "errors": 0, "error_rate": 0.0, "p99_ms": None, "versions": []},
            "baseline": {"requests": 1, "errors": 0, "error_rate": 0.0, "p99_ms": 2.0, "versions": ["v1"]},
            "latency_compared": True,
        },
    }


def test_the_view_after_the_verdict_keeps_the_figures_it_was_judged_on() -> None:
    c = Canary(spec(window_s=60), T0)
    view = c.view(T0 + 75)  # the view settles the verdict too
    assert view["state"] == "rollback"
    assert view["reason"] == "too few requests: 0 canary requests in the 60 s window, at least 20 needed"
    assert (view["elapsed_s"], view["remaining_s"], view["decided_after_s"]) == (75.0, 0.0, 75.0)
    c.baseline.record("v1", True, 0.1)  # not through record(): the view must not show it
    later = c.view(T0 + 90)
    assert later["figures"]["baseline"]["requests"] == 0
    assert (later["elapsed_s"], later["decided_after_s"]) == (90.0, 75.0)


def test_routing_with_the_time_judges_a_window_that_ended_without_records() -> None:
    c = Canary(spec(percent=50, window_s=10), T0)
    assert [c.routes_to_canary(T0 + 9.999) for _ in range(4)] == [False, True, False, True]
    assert c.verdict(T0 + 9.999) is None
    assert not any(c.routes_to_canary(T0 + 10) for _ in range(4))  # too few requests: rollback
    verdict = c.verdict(T0 + 11)
    assert verdict is not None
    assert (verdict.decision, verdict.elapsed_s) == ("rollback", 10.0)


def test_routing_without_the_time_judges_nothing() -> None:
    c = Canary(spec(percent=50, window_s=10), T0)
    assert [c.routes_to_canary() for _ in range(4)] == [False, True, False, True]
    assert c._verdict is None
