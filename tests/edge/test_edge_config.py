"""The file the role deploys: rendered by Ansible from roles/edge, accepted by HAProxy, and
saying what the rest of the suite relies on."""

from __future__ import annotations

import json
import re
import socket
from pathlib import Path

import pytest

from tests.edge.edge_support import Haproxy, Ports, check_config, edge_variables, render
from tests.edge.pki import Pki

# every status HAProxy 2.6 can make itself that a client of this edge may meet
OWN_ANSWERS = {400, 403, 404, 408, 413, 429, 500, 502, 503, 504}


@pytest.fixture
def rendered(pki: Pki, tmp_path: Path) -> Path:
    return render(tmp_path / "haproxy.cfg", edge_variables(Ports(), pki, tmp_path))


def test_the_rendered_file_passes_haproxy_s_check(rendered: Path) -> None:
    checked = check_config(rendered)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout + checked.stderr == ""  # no warning either


def test_every_answer_the_edge_makes_is_the_json_envelope(rendered: Path) -> None:
    errors = dict(
        re.findall(
            r"^\s+http-error status (\d+) content-type application/json string '([^']*)'",
            rendered.read_text(),
            re.M,
        )
    )
    assert {int(status) for status in errors} == OWN_ANSWERS
    for status, body in errors.items():
        envelope = json.loads(body)
        assert set(envelope) >= {"error", "code"}, status
        assert re.fullmatch(r"[a-z_]+", envelope["code"]), status
    assert json.loads(errors["429"])["retry_after"] == 10
    assert json.loads(errors["413"])["limit"] == 1024 * 1024


def sections(config: str) -> dict[str, list[str]]:
    """The rendered file's sections ("frontend public", ...), their lines stripped."""
    found: dict[str, list[str]] = {}
    current: list[str] = []
    for line in config.splitlines():
        if line and not line[0].isspace() and not line.startswith("#"):
            current = found.setdefault(line.strip(), [])
        elif line.strip() and not line.strip().startswith("#"):
            current.append(line.strip())
    return found


def test_the_prometheus_exporter_is_on_the_loopback_metrics_frontend_only(pki: Pki, tmp_path: Path) -> None:
    ports = Ports()
    found = sections(render(tmp_path / "haproxy.cfg", edge_variables(ports, pki, tmp_path)).read_text())
    exporting = [name for name, lines in found.items() if any("prometheus-exporter" in x for x in lines)]
    assert exporting == ["frontend metrics"]
    metrics = found["frontend metrics"]
    assert [x for x in metrics if x.startswith("bind ")] == [f"bind 127.0.0.1:{ports.metrics}"]
    assert "http-request use-service prometheus-exporter if { path /metrics }" in metrics
    assert metrics[-1].startswith("http-request return status 404 content-type application/json ")
    assert not [x for x in metrics if x.startswith(("default_backend", "use_backend"))]


def test_the_inactive_colour_is_disabled(pki: Pki, tmp_path: Path) -> None:
    ports = Ports()
    for colour, other in (("blue", "green"), ("green", "blue")):
        text = render(
            tmp_path / f"{colour}.cfg", edge_variables(ports, pki, tmp_path, fleet_orchestrator_colour=colour)
        ).read_text()
        port = {"blue": ports.blue, "green": ports.green}
        assert re.search(rf"^\s+server {colour} 127\.0\.0\.1:{port[colour]} maxconn 500$", text, re.M)
        assert re.search(rf"^\s+server {other} 127\.0\.0\.1:{port[other]} maxconn 500 disabled$", text, re.M)


def test_plain_http_can_be_switched_off(pki: Pki, tmp_path: Path) -> None:
    ports = Ports()
    config = render(tmp_path / "haproxy.cfg", edge_variables(ports, pki, tmp_path, edge_http_redirect=False))
    haproxy = Haproxy(config, ports.tls).start()
    try:
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", ports.http), timeout=2)
    finally:
        haproxy.stop()
