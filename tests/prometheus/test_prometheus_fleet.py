"""A real Prometheus (Debian's binary) scraping real processes on loopback, configured by
the collection's filter and rules: the edge (Debian's HAProxy with the edge role's
haproxy.cfg), the orchestrator's admin listener through the edge's admin frontend (with
the admin token), two real workers (gunicorn + onnxruntime). Every target is up, every
query of the shipped Grafana dashboard answers with data, and stopping a worker fires
OnnxfleetContainerDown."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import yaml
from ansible_collections.onnxfleet.serving.plugins.filter.models import fleet_model_plan
from ansible_collections.onnxfleet.serving.plugins.filter.prometheus import prometheus_config

from tests.edge.edge_support import FrontDoor
from tests.edge.pki import Pki
from tests.prometheus.prom_support import Prometheus, render
from tests.support import ROOT, Service, free_port, wait_for

DIGITS = ROOT / "app" / "models" / "digits.onnx"
DASHBOARD = ROOT / "roles" / "prometheus" / "files" / "grafana" / "onnxfleet.json"
SAMPLE = json.dumps({"inputs": [[float(i % 17) for i in range(64)]]}).encode()
NODES = ("worker-1", "worker-2")

pytestmark = pytest.mark.slow


def start_worker(name: str, port: int) -> Service:
    return Service(
        [
            "worker",
            *("--model", str(DIGITS), "--bind", f"127.0.0.1:{port}", "--container-name", name),
            *("--max-concurrency", "1", "--intra-op-threads", "1"),
        ],
        port,
    )


class _Unused:
    """FrontDoor's sim containers: replaced by the real workers' routing table."""

    def url(self, index: int) -> str:
        return f"http://127.0.0.1:9/{index}"


@dataclass
class Watched:
    front: FrontDoor
    workers: dict[str, Service]
    prometheus: Prometheus
    config: dict[str, Any]


@pytest.fixture(scope="module")
def watched(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Watched]:
    work = tmp_path_factory.mktemp("watched")
    metrics_port = free_port()
    ports = {node: free_port() for node in NODES}
    hostvars = {
        node: {"fleet_node": node, "fleet_private_address": "127.0.0.1", "fleet_worker_base_port": port}
        for node, port in ports.items()
    }
    plan = fleet_model_plan(
        list(NODES),
        hostvars,
        models=[{"name": "digits", "path": str(DIGITS), "default": True}],
        containers=1,
        base_port=5000,
        max_concurrency=1,
        model_file=str(DIGITS),
    )
    front = FrontDoor(pki, _Unused(), edge={"fleet_edge_metrics_port": metrics_port})  # type: ignore[arg-type]
    routes = {"containers": [], "health": {"interval_s": 0.2, "timeout_s": 0.5, "fall": 2, "rise": 2}}
    for node in plan["nodes"]:
        for name, port in zip(node["models"][0]["container_names"], node["models"][0]["ports"], strict=True):
            routes["containers"].append(
                {"name": name, "url": f"http://127.0.0.1:{port}", "node": node["node"]}
            )
    front.routes_path.write_text(json.dumps(routes))
    haproxy_cfg = front.config.read_text()
    if "prometheus-exporter" not in haproxy_cfg:
        # Until the edge role's own exporter frontend lands (the metrics branch,
        # CONTRACT-metrics.md): the same frontend, on the contract's port.
        front.config.write_text(
            haproxy_cfg + f"\nfrontend metrics\n    bind 127.0.0.1:{metrics_port}\n"
            "    http-request use-service prometheus-exporter if { path /metrics }\n"
        )
    rules = render("onnxfleet.rules.yml.j2", work / "onnxfleet.rules.yml", prometheus_container_down_for="2s")
    config = prometheus_config(
        plan,
        node="orchestrator",
        edge_metrics_port=metrics_port,
        admin_url=front.admin_url,
        admin_token_file=str(front.work / "admin-token"),
        scrape_interval="1s",
        scrape_timeout="1s",
        evaluation_interval="1s",
        rule_files=[str(rules)],
    )
    (work / "prometheus.yml").write_text(yaml.safe_dump(config, sort_keys=False))
    workers = {f"{node}/0": start_worker(f"{node}/0", port).start() for node, port in ports.items()}
    try:
        for worker in workers.values():
            worker.wait_ready()
        with front, Prometheus(work / "prometheus.yml", work) as prometheus:
            yield Watched(front, workers, prometheus, config)
    finally:
        for worker in workers.values():
            worker.stop()


def targets(prometheus: Prometheus) -> list[dict[str, Any]]:
    return list(prometheus.api("targets")["activeTargets"])


def test_prometheus_has_every_component_up(watched: Watched) -> None:
    def all_up() -> list[dict[str, Any]] | None:
        found = targets(watched.prometheus)
        return found if len(found) == 4 and all(t["health"] == "up" for t in found) else None

    try:
        found = wait_for(all_up, timeout=30, what="every target up")
    except AssertionError:
        raise AssertionError(json.dumps(targets(watched.prometheus), indent=1)) from None
    by_job = sorted((t["labels"]["job"], t["labels"].get("container", "")) for t in found)
    assert by_job == [("edge", ""), ("orchestrator", ""), ("worker", "worker-1/0"), ("worker", "worker-2/0")]
    orchestrator = next(t for t in found if t["labels"]["job"] == "orchestrator")
    assert orchestrator["scrapeUrl"] == watched.front.admin_url + "/metrics"
    assert {t["labels"]["node"] for t in found} == {"orchestrator", *NODES}


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, expression) of every query of the dashboard, Grafana's interval
    variable replaced by a window of this test's 1 s scrapes."""
    dashboard = json.loads(DASHBOARD.read_text())
    found = [(p["title"], t["expr"]) for p in dashboard["panels"] for t in p["targets"]]
    assert len(found) >= 10
    return [(title, expr.replace("$__rate_interval", "30s")) for title, expr in found]


def test_every_dashboard_query_answers_with_data(watched: Watched) -> None:
    for _ in range(20):
        answer = watched.front.request(body=SAMPLE)
        assert answer.status == 200, answer.body
    missing: list[str] = []
    for title, expr in dashboard_queries():
        assert not re.search(r"\$\w", expr), f"{title}: a Grafana variable left in {expr}"
        try:
            wait_for(lambda e=expr: watched.prometheus.query(e), timeout=30, what=expr)
        except AssertionError:
            missing.append(f"{title}: {expr}")
    assert not missing, "no data for:\n" + "\n".join(missing)
    served = watched.prometheus.query('sum(increase(onnxfleet_worker_requests_total{job="worker"}[1m]))')
    assert float(served[0]["value"][1]) >= 15  # the requests sent above, seen in the containers


def test_stopping_a_container_fires_container_down(watched: Watched) -> None:
    firing = 'ALERTS{alertname="OnnxfleetContainerDown", alertstate="firing"}'
    assert watched.prometheus.query(firing) == []
    watched.workers["worker-2/0"].stop()
    alerts = wait_for(lambda: watched.prometheus.query(firing), timeout=60, what="OnnxfleetContainerDown")
    assert {a["metric"]["container"] for a in alerts} == {"worker-2/0"}
    assert {a["metric"]["severity"] for a in alerts} == {"page"}
