"""The decision, and nothing else: no I/O, no clock (``now`` is given), so every rule is
tested alone.

Target tracking as Ray Serve's ``target_ongoing_requests``: the load is the requests in
flight plus those queued, divided by the containers serving; the desired node count is
``ceil(nodes * load_per_container / target)``, kept within [minimum, maximum]. A change
must be wanted for a whole delay (a stabilization window, as Knative's and EC2 target
tracking's) before it is made, and then by at most ``max_step`` nodes: over a scale-out
window the smallest count wanted in it is taken, over a scale-in window the largest, so
one burst or one idle second moves nothing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any, Literal

Action = Literal["scale_out", "scale_in", "hold"]
Direction = Literal["out", "in"]
ACTIONS: tuple[Action, ...] = ("scale_out", "scale_in", "hold")


@dataclass(frozen=True)
class Settings:
    """``fleet_autoscaling`` (inventory/group_vars/all.yml), checked."""

    enabled: bool = False
    min_workers: int = 1
    max_workers: int = 8
    target_ongoing_requests: float = 2.0
    scale_out_delay_s: float = 30.0
    scale_in_delay_s: float = 600.0
    max_step: int = 2

    @classmethod
    def from_mapping(cls, raw: object) -> Settings:
        """Raises ValueError naming the field and what was expected."""
        if not isinstance(raw, Mapping):
            raise ValueError(f"fleet_autoscaling: expected a mapping, got {type(raw).__name__}")
        defaults = {f.name: f.default for f in fields(cls)}
        unknown = sorted(set(raw) - set(defaults))
        if unknown:
            raise ValueError(
                f"fleet_autoscaling: unknown key(s) {unknown}: expected some of {sorted(defaults)}"
            )
        values = {**defaults, **raw}
        if not isinstance(values["enabled"], bool):
            raise ValueError("fleet_autoscaling.enabled: expected true or false")
        for key in ("min_workers", "max_workers", "max_step"):
            value = values[key]
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"fleet_autoscaling.{key}: expected a whole number >= 1, got {value!r}")
        for key in ("target_ongoing_requests", "scale_out_delay_s", "scale_in_delay_s"):
            value = values[key]
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise ValueError(f"fleet_autoscaling.{key}: expected a number, got {value!r}")
            if value < 0 or (key == "target_ongoing_requests" and value <= 0):
                raise ValueError(f"fleet_autoscaling.{key}: expected a positive number, got {value!r}")
        if values["min_workers"] > values["max_workers"]:
            raise ValueError(
                f"fleet_autoscaling: min_workers ({values['min_workers']}) is above "
                f"max_workers ({values['max_workers']})"
            )
        return cls(
            enabled=values["enabled"],
            min_workers=values["min_workers"],
            max_workers=values["max_workers"],
            target_ongoing_requests=float(values["target_ongoing_requests"]),
            scale_out_delay_s=float(values["scale_out_delay_s"]),
            scale_in_delay_s=float(values["scale_in_delay_s"]),
            max_step=values["max_step"],
        )


@dataclass(frozen=True)
class Sample:
    """What the orchestrator's /status says at one time."""

    in_flight: int
    queued: int
    serving: int  # containers ready or busy (not draining, not down)
    nodes: int  # worker nodes with a container in the routing table

    @property
    def ongoing(self) -> int:
        return self.in_flight + self.queued

    @classmethod
    def from_status(cls, status: object) -> Sample:
        """Raises ValueError when ``status`` is not an orchestrator's /status."""
        try:
            assert isinstance(status, dict)
            containers = status["containers"]
            assert isinstance(containers, list)
            in_flight = status["totals"]["in_flight"]
            queued = sum(m["queue"]["depth"] for m in status["models"])
            serving = sum(c["state"] in ("ready", "busy") for c in containers)
            nodes = len({c["node"] for c in containers})
            assert isinstance(in_flight, int)
            assert isinstance(queued, int)
        except (AssertionError, KeyError, TypeError) as exc:
            raise ValueError(
                "expected the orchestrator's /status (containers, totals.in_flight, models[].queue.depth)"
            ) from exc
        return cls(in_flight=in_flight, queued=queued, serving=serving, nodes=nodes)


@dataclass(frozen=True)
class Window:
    """A change wanted since ``since``; ``desired`` is the most cautious count wanted in it."""

    direction: Direction
    since: float
    desired: int


@dataclass(frozen=True)
class State:
    """What survives a restart (state.py keeps it in a file)."""

    window: Window | None = None
    last_action_at: float | None = None
    last_decision: dict[str, Any] | None = None


@dataclass(frozen=True)
class Decision:
    action: Action
    current: int  # worker nodes now
    desired: int  # what target tracking wants now, within the bounds
    target: int  # the count to apply now (``current`` when holding)
    reason: str
    ongoing_per_container: float | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "current": self.current,
            "desired": self.desired,
            "target": self.target,
            "reason": self.reason,
            "ongoing_per_container": self.ongoing_per_container,
        }


def desired_workers(settings: Settings, sample: Sample) -> int:
    """Target tracking, within [min_workers, max_workers]; ``sample.nodes`` when nothing serves
    (no load figure to track: the fleet is down or starting, which nodes would not fix)."""
    if sample.serving == 0:
        wanted = sample.nodes
    else:
        per_container = sample.ongoing / sample.serving
        # round() first: 6 * 0.5 / 0.5 is 6.000000000000001 in floats, which ceil makes 7
        wanted = math.ceil(round(sample.nodes * per_container / settings.target_ongoing_requests, 9))
    return min(settings.max_workers, max(settings.min_workers, wanted))


def decide(settings: Settings, state: State, sample: Sample, now: float) -> tuple[Decision, State]:
    """The decision at ``now`` and the state after it, as if the decision were carried out."""
    current = sample.nodes
    desired = desired_workers(settings, sample)
    per_container = round(sample.ongoing / sample.serving, 3) if sample.serving else None
    load = f"{sample.ongoing} ongoing on {sample.serving} container(s)"

    def hold(reason: str, window: Window | None) -> tuple[Decision, State]:
        decision = Decision("hold", current, desired, current, reason, per_container)
        return decision, replace(state, window=window, last_decision=decision.as_dict())

    def act(target: int, reason: str) -> tuple[Decision, State]:
        action: Action = "scale_out" if target > current else "scale_in"
        decision = Decision(action, current, desired, target, reason, per_container)
        return decision, State(window=None, last_action_at=now, last_decision=decision.as_dict())

    if not settings.enabled:
        return hold("autoscaling is disabled (fleet_autoscaling.enabled)", None)
    if current < settings.min_workers:
        return act(
            min(settings.min_workers, current + settings.max_step),
            f"below the minimum {settings.min_workers}",
        )
    if current > settings.max_workers:
        return act(
            max(settings.max_workers, current - settings.max_step),
            f"above the maximum {settings.max_workers}",
        )
    if desired == current:
        return hold(f"at target: {load}, target {settings.target_ongoing_requests:g} per container", None)
    direction: Direction = "out" if desired > current else "in"
    window = state.window
    if window is None or window.direction != direction:
        window = Window(direction, now, desired)
    else:
        cautious = min if direction == "out" else max
        window = Window(direction, window.since, cautious(window.desired, desired))
    delay = settings.scale_out_delay_s if direction == "out" else settings.scale_in_delay_s
    waited = now - window.since
    if waited < delay:
        return hold(
            f"scale {direction} to {window.desired} wanted for {waited:.0f}s of {delay:g}s: {load}", window
        )
    step = max(-settings.max_step, min(settings.max_step, window.desired - current))
    return act(
        current + step,
        f"{load}, target {settings.target_ongoing_requests:g} per container, for {waited:.0f}s",
    )
