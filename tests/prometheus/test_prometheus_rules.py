"""The prometheus role's rules, rendered as the role deploys them, against promtool's
unit tests (rules_test.yml): every alert firing and not firing."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.prometheus.prom_support import promtool, render

HERE = Path(__file__).resolve().parent


def rules(work: Path, **variables: object) -> Path:
    render("onnxfleet.rules.yml.j2", work / "onnxfleet.rules.yml", **variables)
    shutil.copy(HERE / "rules_test.yml", work / "rules_test.yml")
    return work


def test_every_alert_fires_and_stays_quiet_as_rules_test_says(tmp_path: Path) -> None:
    work = rules(tmp_path)
    checked = promtool("check", "rules", work / "onnxfleet.rules.yml")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 9 rules found" in checked.stdout
    tested = promtool("test", "rules", "rules_test.yml", cwd=work)
    assert tested.returncode == 0, tested.stdout + tested.stderr


@pytest.mark.parametrize(
    ("variables", "alert"),
    [
        ({"prometheus_error_ratio": 0.2}, "OnnxfleetHighErrorRate"),
        ({"prometheus_queue_wait_p99_s": 5}, "OnnxfleetQueueWaitHigh"),
        ({"prometheus_capacity_ratio": 2.5}, "OnnxfleetNearCapacity"),
        ({"prometheus_container_down_for": "5m"}, "OnnxfleetContainerDown"),
    ],
)
def test_the_thresholds_are_the_role_variables(
    tmp_path: Path, variables: dict[str, object], alert: str
) -> None:
    """Above the threshold the role is given, the same series no longer page."""
    tested = promtool("test", "rules", "rules_test.yml", cwd=rules(tmp_path, **variables))
    assert tested.returncode != 0
    assert f"alertname: {alert}" in tested.stdout + tested.stderr
