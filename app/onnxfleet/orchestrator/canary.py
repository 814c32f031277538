"""Canary rollouts judged on live traffic (issue 18): pure logic, no I/O, time passed in.

One ``Canary`` per model under a rollout. The rules:

- Spread: ``routes_to_canary()`` answers for one unpinned request (one that names no
  version). ``percent`` % of the calls answer True, evenly and without randomness: an
  exact accumulator adds ``percent`` per call and sends the call whose sum reaches 100
  (10 % is every 10th call, 33 % is 33 calls in every 100). Once the verdict is
  ``rollback`` it answers False: the canary gets no more traffic. After ``promote`` the
  spread goes on unchanged: rolling the version out to every container is a deployment
  step, and sending all of the traffic to the few canary containers would overload them.
- Figures: every answer is recorded against its version: an error is an answer with a
  status >= 500 or no answer at all (``answer_ok``); a 4xx is the client's fault, not an
  error. The canary side holds the canary version; the baseline side holds every other
  version that recorded requests in the window. Each side keeps requests, errors, the
  error rate and its p99 latency from a ``LatencyHistogram`` (log-spaced buckets, bounded
  memory, p99 within 2 % of the exact nearest-rank value).
- Window: it starts when the canary is created and lasts ``window_s``. Records at or
  after its end (or after a verdict) are not counted.
- Checks, for a canary with at least ``min_requests`` requests:
  error rate: canary error rate <= baseline error rate + ``max_error_rate_margin``;
  latency: canary p99 <= ``max_p99_factor`` x baseline p99. Without baseline requests the
  error rate is judged against the margin alone and latency is not compared (the verdict's
  reason and figures say so). The comparisons are exact on the decimal values given.
- Verdict: at the end of the window, fewer than ``min_requests`` canary requests is a
  rollback ("too few requests"), a failed check is a rollback naming it with its figures,
  otherwise promote. Before the end, a rollback as soon as the canary has ``min_requests``
  requests and fails a check against the baseline's figures of the moment: requests that
  reach a bad canary are the only failures it causes, so they stop as soon as it is
  clear. A canary is never promoted early. The first verdict is final.
"""

from __future__ import annotations

import bisect
import math
import re
from dataclasses import asdict, dataclass, field, fields
from fractions import Fraction
from typing import Any, Literal

NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
MAX_WINDOW_S = 86400.0


def answer_ok(status: int | None) -> bool:
    """Whether an answer counts as a success: None is no answer from the container."""
    return status is not None and status < 500


def _exact(value: float) -> Fraction:
    """The decimal the number was written as (0.1 is 1/10, not the nearest binary float)."""
    return Fraction(repr(float(value)))


def _number(obj: dict[str, Any], name: str) -> float:
    value = obj.get(name, DEFAULTS[name])
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name}: expected a number, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class CanarySpec:
    version: str  # the canary version
    percent: float = 10.0  # 0 < percent < 100: share of the model's unpinned requests
    window_s: float = 60.0  # judged at the end of the window (or earlier on a clear failure)
    min_requests: int = 20  # fewer canary requests in the window: rollback, "too few requests"
    max_error_rate_margin: float = 0.01  # canary error rate <= baseline + margin (0.01 = 1 point)
    max_p99_factor: float = 1.5  # canary p99 <= factor * baseline p99

    def __post_init__(self) -> None:
        if not isinstance(self.version, str) or NAME_PATTERN.fullmatch(self.version) is None:
            raise ValueError(
                f"version: expected a non-empty string matching {NAME_PATTERN.pattern}"
                f" (at most 64 characters), got {self.version!r}"
            )
        if not 0 < self.percent < 100:
            raise ValueError(
                f"percent: expected a number greater than 0 and less than 100, got {self.percent!r}"
            )
        if not 0 < self.window_s <= MAX_WINDOW_S:
            raise ValueError(
                f"window_s: expected a number of seconds greater than 0 and at most"
                f" {MAX_WINDOW_S:g}, got {self.window_s!r}"
            )
        if isinstance(self.min_requests, bool) or not isinstance(self.min_requests, int):
            raise ValueError(f"min_requests: expected an integer, got {self.min_requests!r}")
        if self.min_requests < 1:
            raise ValueError(f"min_requests: expected an integer >= 1, got {self.min_requests!r}")
        if not 0 <= self.max_error_rate_margin <= 1:
            raise ValueError(
                "max_error_rate_margin: expected a number from 0 to 1 (0.01 is 1 point),"
                f" got {self.max_error_rate_margin!r}"
            )
        if not 1 <= self.max_p99_factor < math.inf:
            raise ValueError(f"max_p99_factor: expected a finite number >= 1, got {self.max_p99_factor!r}")

    @classmethod
    def from_json(cls, obj: object) -> CanarySpec:
        """The spec of a ``POST /admin/canary`` body; a ValueError names the field at fault."""
        if not isinstance(obj, dict):
            raise ValueError(f"body: expected a JSON object, got {type(obj).__name__}")
        unknown = sorted(set(obj) - ADMIN_FIELDS)
        if unknown:
            raise ValueError(
                f"{unknown[0]}: unknown field (expected some of {', '.join(sorted(ADMIN_FIELDS))})"
            )
        if "version" not in obj:
            raise ValueError("version: required (the canary version, a string)")
        return cls(
            version=obj["version"],
            percent=_number(obj, "percent"),
            window_s=_number(obj, "window_s"),
            min_requests=obj.get("min_requests", DEFAULTS["min_requests"]),
            max_error_rate_margin=_number(obj, "max_error_rate_margin"),
            max_p99_factor=_number(obj, "max_p99_factor"),
        )


DEFAULTS: dict[str, Any] = {f.name: f.default for f in fields(CanarySpec) if f.name != "version"}
# the admin API body names the model too; the orchestrator checks that one
ADMIN_FIELDS = frozenset({"model", "version", *DEFAULTS})


class LatencyHistogram:
    """Latencies in log-spaced buckets: memory is bounded by ``BUCKETS``, not by traffic.

    Bucket ``i`` holds ``[FLOOR_S * GROWTH**i, FLOOR_S * GROWTH**(i + 1))``; a percentile
    is its bucket's geometric middle, kept within the smallest and largest value seen, so
    it is within ``sqrt(GROWTH) - 1`` (2 %) of the exact value from 1 us to 4.6 hours.
    """

    GROWTH = 1.04
    FLOOR_S = 1e-6
    BUCKETS = 600  # FLOOR_S * GROWTH**600 is about 16600 s
    _LOG_GROWTH = math.log(GROWTH)

    def __init__(self) -> None:
        self.counts: dict[int, int] = {}
        self.occupied: list[int] = []  # the keys of counts, ascending
        self.count = 0
        self.low = math.inf
        self.high = 0.0

    @classmethod
    def bucket(cls, seconds: float) -> int:
        ratio = max(seconds / cls.FLOOR_S, 1.0)  # at or below the floor: bucket 0
        return min(int(math.log(ratio) / cls._LOG_GROWTH), cls.BUCKETS - 1)

    def add(self, seconds: float) -> None:
        seconds = max(seconds, 0.0)
        i = self.bucket(seconds)
        if i not in self.counts:
            bisect.insort(self.occupied, i)
        self.counts[i] = self.counts.get(i, 0) + 1
        self.count += 1
        self.low = min(self.low, seconds)
        self.high = max(self.high, seconds)

    def percentile(self, q: int) -> float | None:
        """The nearest-rank ``q``-th percentile (1 <= q <= 100) in seconds; None when empty."""
        if not self.count:
            return None
        rank = (q * self.count + 99) // 100  # ceil(q / 100 * count), in integers
        above = self.count - rank
        seen = 0
        # from the top: a p99 is a few buckets down, and this runs on every answer
        for i in reversed(self.occupied):
            seen += self.counts[i]
            if seen > above:
                break
        middle: float = self.FLOOR_S * self.GROWTH ** (i + 0.5)
        return min(max(middle, self.low), self.high)


@dataclass
class Side:
    """One side's figures in the window (the canary, or the baseline's versions together)."""

    requests: int = 0
    errors: int = 0
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)
    versions: set[str] = field(default_factory=set)

    def record(self, version: str, ok: bool, seconds: float) -> None:
        self.requests += 1
        self.errors += not ok
        self.latency.add(seconds)
        self.versions.add(version)

    def error_rate(self) -> Fraction:
        return Fraction(self.errors, self.requests) if self.requests else Fraction(0)

    def p99_s(self) -> float | None:
        return self.latency.percentile(99)

    def figures(self) -> dict[str, Any]:
        p99 = self.p99_s()
        return {
            "requests": self.requests,
            "errors": self.errors,
            "error_rate": float(self.error_rate()),
            "p99_ms": None if p99 is None else p99 * 1000,
            "versions": sorted(self.versions),
        }


@dataclass(frozen=True)
class Verdict:
    decision: Literal["promote", "rollback"]
    reason: str
    figures: dict[str, Any]  # {"canary": {requests, errors, error_rate, p99_ms}, "baseline": {...}}
    elapsed_s: float = 0.0  # from the start of the canary to the verdict


def _pct(rate: Fraction) -> str:
    return f"{float(rate) * 100:.1f} %"


def _points(margin: Fraction) -> str:
    return f"{float(margin) * 100:.1f} points"


class Canary:
    def __init__(self, spec: CanarySpec, now: float) -> None:
        self.spec = spec
        self.started = now
        self.ends = now + spec.window_s
        self.canary = Side()
        self.baseline = Side()
        self._verdict: Verdict | None = None
        margin, factor = _exact(spec.max_error_rate_margin), _exact(spec.max_p99_factor)
        self._margin = margin.numerator, margin.denominator
        self._factor = factor.numerator, factor.denominator
        share = _exact(spec.percent)
        self._step = share.numerator
        self._full = 100 * share.denominator
        self._sum = 0

    def routes_to_canary(self, now: float | None = None) -> bool:
        """Whether one unpinned request goes to the canary version.

        Given the time, a window that ended without a record since is judged first, so a
        "too few requests" rollback stops the canary's traffic too.
        """
        if now is not None:
            self.verdict(now)
        if self._verdict is not None and self._verdict.decision == "rollback":
            return False
        self._sum += self._step
        if self._sum < self._full:
            return False
        self._sum -= self._full
        return True

    def record(self, version: str, ok: bool, seconds: float, now: float) -> None:
        """One answer (``ok``: see ``answer_ok``) of ``version`` that took ``seconds``."""
        if now >= self.ends:
            self.verdict(now)  # judged on the window's records, without this one
        if self._verdict is not None:
            return
        side = self.canary if version == self.spec.version else self.baseline
        side.record(version, ok, seconds)
        self.verdict(now)  # a clear failure stops the canary's traffic at once

    def verdict(self, now: float) -> Verdict | None:
        """None while judging; the first verdict is final."""
        if self._verdict is None:
            self._verdict = self._judge(now)
        return self._verdict

    def _error_rate_ok(self) -> bool:
        """canary errors / requests <= baseline errors / requests + margin, in integers."""
        canary, baseline = self.canary, self.baseline
        m, d = self._margin
        if not baseline.requests:  # the margin alone
            return canary.errors * d <= m * canary.requests
        return (
            canary.errors * baseline.requests * d
            <= (baseline.errors * d + m * baseline.requests) * canary.requests
        )

    def _p99_ok(self) -> bool:
        """canary p99 <= factor * baseline p99, exactly; true without baseline requests."""
        canary_p99, baseline_p99 = self.canary.p99_s(), self.baseline.p99_s()
        if canary_p99 is None or baseline_p99 is None:
            return True
        f, d = self._factor
        cn, cd = canary_p99.as_integer_ratio()
        bn, bd = baseline_p99.as_integer_ratio()
        return cn * d * bd <= f * bn * cd

    def _checks(self, rate_ok: bool, p99_ok: bool) -> list[tuple[bool, str]]:
        """Each check of the canary against the baseline: (passed, what it compared)."""
        spec, canary, baseline = self.spec, self.canary, self.baseline
        margin = _exact(spec.max_error_rate_margin)
        rate = _pct(canary.error_rate())
        if not baseline.requests:
            return [
                (
                    rate_ok,
                    f"error rate {rate} {'<=' if rate_ok else '>'} {_points(margin)}"
                    " (no baseline requests in the window: judged against the margin alone,"
                    " latency not compared)",
                )
            ]
        canary_p99, baseline_p99 = canary.p99_s(), baseline.p99_s()
        assert canary_p99 is not None  # both sides have requests
        assert baseline_p99 is not None
        return [
            (
                rate_ok,
                f"error rate {rate} {'<=' if rate_ok else '>'}"
                f" baseline {_pct(baseline.error_rate())} + {_points(margin)}",
            ),
            (
                p99_ok,
                f"p99 {canary_p99 * 1000:.1f} ms {'<=' if p99_ok else '>'} {spec.max_p99_factor:g} x"
                f" baseline p99 {baseline_p99 * 1000:.1f} ms",
            ),
        ]

    def _judge(self, now: float) -> Verdict | None:
        spec, requests = self.spec, self.canary.requests
        over = now >= self.ends
        if requests < spec.min_requests:
            if not over:
                return None
            return self._decide(
                "rollback",
                f"too few requests: {requests} canary requests in the {spec.window_s:g} s window,"
                f" at least {spec.min_requests} needed",
                now,
            )
        rate_ok, p99_ok = self._error_rate_ok(), self._p99_ok()
        if rate_ok and p99_ok and not over:
            return None
        checks = self._checks(rate_ok, p99_ok)
        failed = [text for passed, text in checks if not passed]
        if failed:
            when = f" (judged after {now - self.started:.1f} s of the {spec.window_s:g} s window)"
            return self._decide("rollback", "; ".join(failed) + when, now)
        passed = "; ".join(text for _, text in checks)
        return self._decide("promote", f"{passed} ({requests} canary requests)", now)

    def _decide(self, decision: Literal["promote", "rollback"], reason: str, now: float) -> Verdict:
        return Verdict(decision, reason, self.figures(), elapsed_s=now - self.started)

    def figures(self) -> dict[str, Any]:
        return {
            "canary": self.canary.figures(),
            "baseline": self.baseline.figures(),
            "latency_compared": self.baseline.requests > 0,
        }

    def view(self, now: float) -> dict[str, Any]:
        """The JSON of ``GET /admin/canary`` and of the model's entry in ``/status``."""
        verdict = self.verdict(now)
        return {
            "spec": asdict(self.spec),
            "started": self.started,
            "elapsed_s": now - self.started,
            "remaining_s": max(self.ends - now, 0.0),
            "state": "judging" if verdict is None else verdict.decision,
            "reason": None if verdict is None else verdict.reason,
            "decided_after_s": None if verdict is None else verdict.elapsed_s,
            "figures": self.figures() if verdict is None else verdict.figures,
        }
