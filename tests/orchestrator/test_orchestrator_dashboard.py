"""The dashboard page, rendered by headless Chromium from the live /status."""

from __future__ import annotations

from pathlib import Path

from tests.orchestrator.orch_support import (
    SimFleet,
    call,
    chromium,
    container_state,
    orchestrator,
    routes,
    wait_for,
)


def test_dashboard_renders_the_fleet(sim: SimFleet, tmp_path: Path) -> None:
    table = routes(tmp_path / "routes.json", [("a/0", sim.url(0), "n1"), ("b/0", sim.url(1), "n2")])
    with orchestrator(table) as orch:
        for _ in range(3):
            assert call(orch.url + "/run_model", "POST", {})[0] == 200
        call(orch.url + "/admin/drain", "POST", {"container": "b/0"})
        wait_for(lambda: container_state(orch, "b/0")["state"] == "draining", what="draining")
        code, headers, _ = call(orch.url + "/")
        assert code == 200
        assert headers["Content-Type"].startswith("text/html")
        dom = chromium(tmp_path / "profile", "--dump-dom", orch.url + "/")
        assert '<tr data-container="a/0"><td>a/0</td><td>n1</td><td class="ready">ready</td>' in dom
        assert '<td class="draining">draining</td>' in dom
        assert '<b id="queue-depth">0 / 1000</b>' in dom
        assert '<b id="ready">yes</b>' in dom
        assert "<td>sim-1</td>" in dom  # the model version the containers answered with
        assert '<div id="error" role="alert"></div>' in dom
