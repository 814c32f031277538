"""The latency histogram buckets (seconds) that the worker and the orchestrator share, so
that one PromQL query or Grafana panel reads both.

Measured (``python scripts/metrics_latency.py``: the digits worker behind an orchestrator
on loopback, 300 one-image requests, means from their own /metrics; four runs on a loaded
2-core machine): an inference inside onnxruntime takes 0.13-0.26 ms, a whole worker
request 0.5-0.9 ms, and the orchestrator adds 1.1-2.1 ms (its HTTP hop to the worker
included). With the old smallest bucket (1 ms) every inference fell in the first one;
these start at 0.1 ms and end at 60 s (the orchestrator's top bucket before), 2 to 2.5x
apart.
"""

from __future__ import annotations

LATENCY_BUCKETS: tuple[float, ...] = (
    0.0001, 0.00025, 0.0005,
    0.001, 0.0025, 0.005,
    0.01, 0.025, 0.05,
    0.1, 0.25, 0.5,
    1.0, 2.5, 5.0,
    10.0, 30.0, 60.0,
)  # fmt: skip
