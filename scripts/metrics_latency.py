"""Mean latencies from the worker's and the orchestrator's own /metrics: the digits worker
(one intra-op thread) behind an orchestrator, both on loopback, 300 one-image requests
after 50 to warm up. The figures behind onnxfleet.buckets.LATENCY_BUCKETS.

Run from the repository root with the .venv active: ``python scripts/metrics_latency.py``.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.orchestrator.orch_support import orchestrator, routes
from tests.worker.worker_support import DIGITS, metric, worker

REQUESTS = 300


def mean_ms(after: str, before: str, name: str, **labels: str) -> float:
    total = metric(after, name + "_sum", **labels) - metric(before, name + "_sum", **labels)
    count = metric(after, name + "_count", **labels) - metric(before, name + "_count", **labels)
    return total / count * 1000


def main() -> None:
    body = {"inputs": json.loads(DIGITS.with_suffix(".json").read_text())["example"]["inputs"]}
    work = Path(tempfile.mkdtemp(prefix="onnxfleet-latency-"))
    with (
        worker(DIGITS, "--intra-op-threads", "1", container="latency-0") as w,
        orchestrator(routes(work / "routes.json", [("latency-0", w.url, "node-0")])) as o,
    ):
        session = requests.Session()
        for _ in range(50):
            session.post(o.url + "/run_model", json=body, timeout=10)
        worker_before = session.get(w.url + "/metrics", timeout=10).text
        orch_before = session.get(o.url + "/metrics", timeout=10).text
        for _ in range(REQUESTS):
            answer = session.post(o.url + "/run_model", json=body, timeout=10)
            assert answer.status_code == 200, answer.text
        worker_after = session.get(w.url + "/metrics", timeout=10).text
        orch_after = session.get(o.url + "/metrics", timeout=10).text
    inference = mean_ms(worker_after, worker_before, "onnxfleet_worker_inference_duration_seconds")
    request = mean_ms(
        worker_after, worker_before, "onnxfleet_worker_request_duration_seconds", endpoint="/run_model"
    )
    through = mean_ms(orch_after, orch_before, "onnxfleet_orchestrator_request_duration_seconds")
    print(f"worker inference     {inference:.3f} ms")
    print(f"worker request       {request:.3f} ms")
    print(f"orchestrator request {through:.3f} ms (adds {through - request:.3f} ms)")


if __name__ == "__main__":
    main()
