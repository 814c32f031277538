"""policy.py, rule by rule: target tracking, bounds, delays (windows), step size, settings."""

from __future__ import annotations

import re
from typing import Any

import pytest

from onnxfleet.autoscale.policy import Decision, Sample, Settings, State, Window, decide, desired_workers

ON = Settings(
    enabled=True,
    min_workers=2,
    max_workers=8,
    target_ongoing_requests=2.0,
    scale_out_delay_s=30.0,
    scale_in_delay_s=600.0,
    max_step=2,
)


def sample(nodes: int, ongoing: int, per_node: int = 2, queued: int = 0) -> Sample:
    return Sample(in_flight=ongoing - queued, queued=queued, serving=nodes * per_node, nodes=nodes)


def run(
    settings: Settings, samples: list[tuple[float, Sample]], state: State | None = None
) -> list[Decision]:
    state = state or State()
    decisions = []
    for now, s in samples:
        decision, state = decide(settings, state, s, now)
        decisions.append(decision)
    return decisions


@pytest.mark.parametrize(
    ("nodes", "ongoing", "queued", "want"),
    [
        (4, 16, 0, 4),  # 16 on 8 containers = 2 each: on target
        (4, 17, 0, 5),  # just above: ceil
        (4, 24, 8, 6),  # queued requests count as ongoing
        (4, 8, 0, 2),  # 1 each: half the nodes
        (4, 0, 0, 2),  # idle: the minimum
        (4, 1000, 0, 8),  # the maximum
        (3, 6, 0, 2),  # 1.5 nodes: rounded up
    ],
)
def test_target_tracking_within_the_bounds(nodes: int, ongoing: int, queued: int, want: int) -> None:
    assert desired_workers(ON, sample(nodes, ongoing, queued=queued)) == want


def test_float_error_does_not_add_a_node() -> None:
    settings = Settings(enabled=True, min_workers=1, max_workers=20, target_ongoing_requests=0.5)
    # 6 nodes x (6 ongoing / 12 containers) / 0.5 = 6, not 6.000000000000001 -> 7
    assert desired_workers(settings, sample(6, 6)) == 6


def test_nothing_serving_keeps_the_count() -> None:
    down = Sample(in_flight=0, queued=50, serving=0, nodes=5)
    assert desired_workers(ON, down) == 5
    decision = run(ON, [(t, down) for t in (0, 100, 1000)])[-1]
    assert (decision.action, decision.target, decision.ongoing_per_container) == ("hold", 5, None)


def test_scale_out_waits_for_its_delay_then_acts() -> None:
    busy = sample(4, 24)  # wants 6
    decisions = run(ON, [(0, busy), (10, busy), (29.9, busy), (30, busy)])
    assert [d.action for d in decisions] == ["hold", "hold", "hold", "scale_out"]
    assert [d.target for d in decisions] == [4, 4, 4, 6]
    assert decisions[-1].desired == 6
    assert "wanted for 10s of 30s" in decisions[1].reason


def test_scale_in_waits_for_its_own_longer_delay() -> None:
    idle = sample(6, 4)  # 4 on 12: wants 2
    decisions = run(ON, [(0, idle), (30, idle), (599, idle), (600, idle)])
    assert [d.action for d in decisions] == ["hold", "hold", "hold", "scale_in"]
    assert decisions[-1].target == 4  # one step of 2
    assert decisions[-1].current == 6


def test_a_dip_restarts_the_window() -> None:
    busy, calm = sample(4, 24), sample(4, 16)
    decisions = run(ON, [(0, busy), (20, calm), (25, busy), (50, busy), (55, busy)])
    assert [d.action for d in decisions] == ["hold", "hold", "hold", "hold", "scale_out"]
    assert "at target" in decisions[1].reason


def test_a_change_of_direction_restarts_the_window() -> None:
    decisions = run(ON, [(0, sample(4, 24)), (20, sample(4, 4)), (45, sample(4, 24)), (60, sample(4, 24))])
    assert [d.action for d in decisions] == ["hold"] * 4
    assert decisions[1].reason.startswith("scale in to 2 wanted for 0s")


def test_scale_out_takes_the_smallest_count_wanted_in_its_window() -> None:
    settings = replace_settings(max_step=10)
    decisions = run(settings, [(0, sample(4, 40)), (10, sample(4, 20)), (30, sample(4, 40))])
    assert decisions[0].desired == 8
    assert decisions[1].desired == 5
    assert (decisions[-1].action, decisions[-1].target) == ("scale_out", 5)


def test_scale_in_takes_the_largest_count_wanted_in_its_window() -> None:
    settings = replace_settings(max_step=10)
    decisions = run(settings, [(0, sample(8, 0)), (100, sample(8, 24)), (600, sample(8, 0))])
    assert decisions[1].desired == 6
    assert (decisions[-1].action, decisions[-1].target) == ("scale_in", 6)


def test_one_step_is_at_most_max_step() -> None:
    decision = run(ON, [(0, sample(2, 1000)), (30, sample(2, 1000))])[-1]
    assert (decision.action, decision.current, decision.desired, decision.target) == ("scale_out", 2, 8, 4)
    decision = run(replace_settings(max_step=1), [(0, sample(8, 0)), (600, sample(8, 0))])[-1]
    assert (decision.action, decision.target) == ("scale_in", 7)


def test_below_the_minimum_or_above_the_maximum_acts_at_once_by_steps() -> None:
    low = run(replace_settings(min_workers=5), [(0, sample(1, 0))])[0]
    assert (low.action, low.target) == ("scale_out", 3)
    assert "below the minimum 5" in low.reason
    just = run(replace_settings(min_workers=3), [(0, sample(2, 0))])[0]
    assert (just.action, just.target) == ("scale_out", 3)
    high = run(replace_settings(max_workers=3), [(0, sample(8, 1000))])[0]
    assert (high.action, high.target) == ("scale_in", 6)
    assert "above the maximum 3" in high.reason
    near = run(replace_settings(max_workers=7), [(0, sample(8, 1000))])[0]
    assert (near.action, near.target) == ("scale_in", 7)


def test_never_past_the_bounds_however_long_it_wants() -> None:
    huge = [(float(t), sample(8, 10_000)) for t in range(0, 3000, 30)]
    assert {d.action for d in run(ON, huge)} == {"hold"}
    idle = [(float(t), sample(2, 0)) for t in range(0, 3000, 30)]
    assert {d.action for d in run(ON, idle)} == {"hold"}


def test_disabled_never_acts() -> None:
    off = replace_settings(enabled=False)
    decisions = run(off, [(0, sample(1, 1000)), (10_000, sample(1, 1000))])
    assert [d.action for d in decisions] == ["hold", "hold"]
    assert "disabled" in decisions[0].reason


def test_the_state_after_acting_starts_afresh() -> None:
    busy = sample(4, 24)
    _, state = decide(ON, State(), busy, 0)
    assert state.window == Window("out", 0, 6)
    decision, state = decide(ON, state, busy, 30)
    assert decision.action == "scale_out"
    assert state.window is None
    assert state.last_action_at == 30
    assert state.last_decision == decision.as_dict()
    # the nodes are not there yet: a new window, not a second action
    decision, state = decide(ON, state, busy, 31)
    assert decision.action == "hold"
    assert state.window == Window("out", 31, 6)


def test_a_window_given_back_goes_on_where_it_was() -> None:
    """What a restart does: the saved window (state.py) is handed back."""
    decision, _ = decide(ON, State(window=Window("out", 0, 6)), sample(4, 24), 30)
    assert (decision.action, decision.target) == ("scale_out", 6)
    decision, _ = decide(ON, State(), sample(4, 24), 30)
    assert decision.action == "hold"


def replace_settings(**changes: Any) -> Settings:
    return Settings.from_mapping({**vars(ON), **changes})


def test_settings_defaults_and_checks() -> None:
    assert Settings.from_mapping({}) == Settings()
    assert Settings.from_mapping({}).enabled is False
    assert Settings.from_mapping({"target_ongoing_requests": 3}).target_ongoing_requests == 3.0


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ([], "expected a mapping"),
        ({"maximum": 3}, "unknown key(s) ['maximum']"),
        ({"enabled": "yes"}, "enabled: expected true or false"),
        ({"min_workers": 0}, "min_workers: expected a whole number >= 1"),
        ({"max_workers": 2.5}, "max_workers: expected a whole number >= 1"),
        ({"max_step": True}, "max_step: expected a whole number >= 1"),
        ({"target_ongoing_requests": 0}, "target_ongoing_requests: expected a positive number"),
        ({"scale_in_delay_s": -1}, "scale_in_delay_s: expected a positive number"),
        ({"scale_out_delay_s": float("nan")}, "scale_out_delay_s: expected a number"),
        ({"scale_out_delay_s": "30"}, "scale_out_delay_s: expected a number"),
        ({"min_workers": 5, "max_workers": 4}, "min_workers (5) is above max_workers (4)"),
    ],
)
def test_bad_settings_are_named(raw: object, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        Settings.from_mapping(raw)


def test_sample_from_status() -> None:
    status = {
        "containers": [
            {"node": "w1", "state": "ready"},
            {"node": "w1", "state": "busy"},
            {"node": "w2", "state": "draining"},
            {"node": "w3", "state": "down"},
        ],
        "totals": {"in_flight": 3},
        "models": [{"queue": {"depth": 4}}, {"queue": {"depth": 1}}],
    }
    assert Sample.from_status(status) == Sample(in_flight=3, queued=5, serving=2, nodes=3)
    for bad in ({}, [], {"containers": [], "totals": {"in_flight": "3"}, "models": []}):
        with pytest.raises(ValueError, match="expected the orchestrator's /status"):
            Sample.from_status(bad)
