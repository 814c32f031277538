"""HAProxy's own Prometheus exporter (issue 20): on the loopback metrics frontend
(``fleet_edge_metrics_port``) only, counting what the public listener answers. Real
HAProxy from the role's template, real orchestrator, sim containers."""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.edge.edge_support import Answer, FrontDoor
from tests.edge.pki import Pki
from tests.orchestrator.orch_support import SimFleet, wait_for


@pytest.fixture(scope="module")
def front(pki: Pki, sim_fleet: SimFleet) -> Iterator[FrontDoor]:
    with FrontDoor(pki, sim_fleet) as door:
        wait_for(lambda: door.request().status == 200, timeout=20, what="the sim containers in service")
        yield door


def scrape(front: FrontDoor, path: str = "/metrics") -> tuple[int, str, str]:
    """GET on the metrics frontend: status, Content-Type, body."""
    conn = http.client.HTTPConnection("127.0.0.1", front.ports.metrics, timeout=10)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.getheader("Content-Type") or "", response.read().decode()
    finally:
        conn.close()


def sample(text: str, name: str, **labels: str) -> float:
    """The value of ``name`` (a sample name, e.g. ``..._total``) whose labels include ``labels``."""
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and labels.items() <= s.labels.items():
                return float(s.value)
    raise AssertionError(f"no sample {name}{labels}")


def public_requests(front: FrontDoor) -> float:
    status, _, text = scrape(front)
    assert status == 200, text
    return sample(text, "haproxy_frontend_http_requests_total", proxy="public")


def test_the_exporter_counts_the_public_listener_s_requests(front: FrontDoor) -> None:
    before = public_requests(front)
    _, _, text = scrape(front)
    ok = {"proxy": "orchestrator", "code": "2xx"}
    answered = sample(text, "haproxy_backend_http_responses_total", **ok)
    answers = [front.request() for _ in range(3)]
    assert [a.status for a in answers] == [200] * 3
    wait_for(lambda: public_requests(front) - before == 3, timeout=5, what="3 more public requests")
    status, content_type, text = scrape(front)
    assert status == 200
    assert content_type.startswith("text/plain")
    assert sample(text, "haproxy_backend_http_responses_total", **ok) == answered + 3
    assert sample(text, "haproxy_server_status", proxy="orchestrator", server="blue", state="UP") == 1


def test_other_paths_on_the_metrics_port_get_a_json_404(front: FrontDoor) -> None:
    for path in ("/", "/stats", "/metrics/x", "/admin/status"):
        status, content_type, body = scrape(front, path)
        assert (status, content_type) == (404, "application/json"), path
        assert json.loads(body) == {
            "error": "only /metrics (the HAProxy Prometheus exporter) is served on this port",
            "code": "not_found",
        }


def test_the_public_listener_s_metrics_is_not_the_exporter(front: FrontDoor) -> None:
    answer: Answer = front.request("GET", "/metrics", body=None)
    assert "haproxy_" not in json.dumps(answer.body)
