"""What the worker's and the orchestrator's /metrics promise (issue 20; docs/worker.md and
docs/orchestrator.md): Prometheus naming habits and the one set of
latency buckets, written out here rather than imported, so that a change to the code's
tuple fails these tests."""

from __future__ import annotations

import re

from prometheus_client.parser import text_string_to_metric_families

# seconds, worker and orchestrator alike (0.1 ms: the digits inference takes about 0.2 ms)
LATENCY_BOUNDS = (
    "0.0001", "0.00025", "0.0005", "0.001", "0.0025", "0.005", "0.01", "0.025", "0.05",
    "0.1", "0.25", "0.5", "1.0", "2.5", "5.0", "10.0", "30.0", "60.0", "+Inf",
)  # fmt: skip

_TIME_WORDS = ("duration", "wait", "latency", "time")
_SMALL_UNITS = re.compile(r"_(ms|millis|milliseconds|us|micros|microseconds|ns)(_|$)")


def histogram_bounds(text: str, name: str) -> list[str]:
    """The ``le`` bounds of histogram ``name``'s first series, in order."""
    for family in text_string_to_metric_families(text):
        if family.name == name:
            bounds: list[str] = []
            for sample in family.samples:
                if sample.name == f"{name}_bucket":
                    if bounds and sample.labels["le"] == bounds[0]:
                        break  # the next series starts
                    bounds.append(sample.labels["le"])
            return bounds
    raise AssertionError(f"no histogram {name}")


# The orchestrator's /metrics: its own families and the autoscaler's decisions it reports.
ORCHESTRATOR_PREFIXES = ("onnxfleet_orchestrator_", "onnxfleet_autoscaler_")


def naming_problems(text: str, prefix: str | tuple[str, ...]) -> list[str]:
    """Where the exposition breaks https://prometheus.io/docs/practices/naming/ (or the
    project's own rules: one prefix, ``code`` for the HTTP status)."""
    problems: list[str] = []
    for family in text_string_to_metric_families(text):
        name = family.name
        if not name.startswith(prefix):
            problems.append(f"{name}: not prefixed {prefix}")
        if not family.documentation:
            problems.append(f"{name}: no HELP")
        if _SMALL_UNITS.search(name):
            problems.append(f"{name}: not in base units")
        timed = any(word in name for word in _TIME_WORDS)
        if family.type == "histogram" and timed and not name.endswith("_seconds"):
            problems.append(f"{name}: a time histogram not in _seconds")
        for sample in family.samples:
            if family.type == "counter" and not sample.name.endswith(("_total", "_created")):
                problems.append(f"{sample.name}: a counter sample without _total")
            if "status" in sample.labels:
                problems.append(f"{sample.name}: label status (the convention is code)")
    return sorted(set(problems))
