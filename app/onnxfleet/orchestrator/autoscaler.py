"""The autoscaler's last decision, as it reports it (``PUT /admin/autoscaler``): shown in
/status, /metrics and on the dashboard. The orchestrator only keeps it; the autoscaler
(``onnxfleet autoscale``, on the controller) decides and acts."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from onnxfleet.autoscale.policy import ACTIONS
from onnxfleet.orchestrator.errors import BadRequest
from onnxfleet.orchestrator.messages import Reply, Request, json_reply

_COUNTS = ("current", "desired", "target")
log = logging.getLogger("onnxfleet.orchestrator")


class AutoscalerRecord(Collector):
    def __init__(self) -> None:
        self.last: dict[str, Any] | None = None
        self.decisions = dict.fromkeys(ACTIONS, 0)

    def put(self, request: Request) -> Reply:
        expected = (
            'expected a JSON object {"action": one of ' + "/".join(ACTIONS) + ', "current", "desired", '
            '"target": whole numbers >= 0, "reason": text, "dry_run": true or false}'
        )
        try:
            body = json.loads(request.body) if request.body else None
        except ValueError:
            body = None
        if not isinstance(body, dict) or body.get("action") not in ACTIONS:
            raise BadRequest(expected)
        for key in _COUNTS:
            value = body.get(key)
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 100_000:
                raise BadRequest(f"{key}: {expected}")
        reason, dry_run = body.get("reason"), body.get("dry_run")
        if not isinstance(reason, str) or len(reason) > 1000:
            raise BadRequest(f"reason: {expected}")
        if not isinstance(dry_run, bool):
            raise BadRequest(f"dry_run: {expected}")
        self.last = {
            "action": body["action"],
            **{key: body[key] for key in _COUNTS},
            "reason": reason,
            "dry_run": dry_run,
            "at": round(time.time(), 3),
        }
        self.decisions[body["action"]] += 1
        log.info(
            "autoscaler: %s %d -> %d",
            body["action"],
            body["current"],
            body["target"],
            extra={"autoscaler": self.last},
        )
        return json_reply(self.view())

    def view(self) -> dict[str, Any]:
        return {"last": self.last, "decisions": dict(self.decisions)}

    def collect(self) -> Iterator[Metric]:
        decisions = CounterMetricFamily(
            "onnxfleet_autoscaler_decisions",
            "Decisions the autoscaler reported, by action",
            labels=["action"],
        )
        for action, count in self.decisions.items():
            decisions.add_metric([action], count)
        yield decisions
        if self.last is not None:
            for key, text in (
                ("current", "Worker nodes when the autoscaler last decided"),
                ("desired", "Worker nodes the autoscaler's target tracking wants"),
                ("target", "Worker nodes the autoscaler's last decision scales to"),
            ):
                yield GaugeMetricFamily(f"onnxfleet_autoscaler_{key}_workers", text, value=self.last[key])
