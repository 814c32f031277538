"""The edge as site.yml deployed it on the session's fleet (HAProxy on the orchestrator
node, published on the controller): HTTPS verified by the fleet's CA, a client token
required, plain HTTP only redirected, /admin/* refused from the public side; and client
tokens added and revoked by re-running the orchestrator role, with no restart of the
orchestrator's container."""

from __future__ import annotations

import http.client
import json
import re
import ssl
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.ansible.ansible_support import DeployedFleet, explain, run
from tests.support import ROOT

pytestmark = [pytest.mark.docker, pytest.mark.slow]

CARD = json.loads((ROOT / "app" / "models" / "digits.json").read_text())
BODY = json.dumps({"inputs": CARD["example"]["inputs"]}).encode()
ROLE_PLAY = """\
- name: The orchestrator role alone (its client tokens)
  hosts: orchestrators
  become: true
  gather_facts: false
  roles:
    - role: onnxfleet.serving.orchestrator
"""


def call(
    fleet: DeployedFleet, path: str, token: str | None, method: str = "POST", body: bytes | None = BODY
) -> tuple[int, dict[str, str], Any]:
    """(status, headers with lower-case names, JSON body) of one request through the edge."""
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(fleet.url + path, data=body, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=30, context=fleet.tls()) as response:
            return response.status, lower(response.headers.items()), json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, lower(exc.headers.items()), json.loads(exc.read())


def lower(items: Any) -> dict[str, str]:
    return {name.lower(): value for name, value in items}


def docker(*args: str) -> str:
    proc = subprocess.run(["docker", *args], capture_output=True, text=True, check=True, timeout=60)
    return proc.stdout.strip()


def started_at(fleet: DeployedFleet) -> str:
    """{container: its start time} of the orchestrator containers on the node (either colour)."""
    node = f"{fleet.name}-orchestrator"
    found = docker("exec", node, "docker", "ps", "-a", "--filter", "label=onnxfleet.service=orchestrator",
                   "--format", "{{.Names}} {{.ID}}")  # fmt: skip
    return " ".join(
        f"{line} " + docker("exec", node, "docker", "inspect", "-f", "{{.State.StartedAt}}", line.split()[1])
        for line in sorted(found.splitlines())
    )


@pytest.fixture(scope="module")
def edge(fleet: DeployedFleet) -> DeployedFleet:
    assert fleet.molecule.returncode == 0, "the fleet scenario failed: " + explain(fleet.molecule)
    return fleet


def test_https_with_the_fleets_ca_and_the_token_serves(edge: DeployedFleet) -> None:
    status, headers, answer = call(edge, "/run_model", edge.token)
    assert status == 200, answer
    assert answer["outputs"]["label"] == [CARD["example"]["label"]]
    assert headers["strict-transport-security"].startswith("max-age=")
    # and the certificate is not one any client would take: only with the fleet's CA
    with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
        urllib.request.urlopen(edge.url + "/healthz", timeout=10, context=ssl.create_default_context())


@pytest.mark.parametrize("token", [None, "not-a-token-of-this-fleet"])
def test_inference_without_a_valid_token_gets_401_json(edge: DeployedFleet, token: str | None) -> None:
    status, headers, answer = call(edge, "/run_model", token)
    assert status == 401, answer
    assert answer["code"] == "unauthorized"
    assert headers["content-type"].startswith("application/json")
    assert headers["www-authenticate"].startswith("Bearer")


@pytest.mark.parametrize("path", ["/admin/reload", "//admin/drain", "/%61dmin/ready"])
def test_admin_is_refused_on_the_public_side(edge: DeployedFleet, path: str) -> None:
    status, _headers, answer = call(edge, path, edge.token)
    assert status == 403, answer
    assert answer["code"] == "forbidden"


def test_plain_http_on_the_node_is_only_a_redirect(edge: DeployedFleet) -> None:
    node = f"{edge.name}-orchestrator"
    addresses = docker("inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}", node)
    address = addresses.split()[0]
    connection = http.client.HTTPConnection(address, 80, timeout=10)
    connection.request("POST", "/run_model?x=1", body=BODY, headers={"Host": "fleet.example"})
    response = connection.getresponse()
    response.read()
    connection.close()
    assert response.status == 308
    assert response.headers["Location"] == "https://fleet.example/run_model?x=1"
    # nothing else of the node answers in plain HTTP from outside it (9101: the edge's exporter)
    for port in (8081, 9081, 9000, 9101):
        with pytest.raises(ConnectionRefusedError):
            http.client.HTTPConnection(address, port, timeout=5).request("GET", "/healthz")


# HAProxy's exporter on the node's loopback (fleet_edge_metrics_port), read from the node itself
SCRAPE = "import urllib.request as u; print(u.urlopen('http://127.0.0.1:9101/metrics').read().decode())"
PUBLIC_REQUESTS = re.compile(r'^haproxy_frontend_http_requests_total\{proxy="public"\} [1-9]', re.M)


def test_the_edge_s_prometheus_exporter_answers_on_the_node_s_loopback(edge: DeployedFleet) -> None:
    assert call(edge, "/run_model", edge.token)[0] == 200
    text = docker("exec", f"{edge.name}-orchestrator", "python3", "-c", SCRAPE)
    assert PUBLIC_REQUESTS.search(text), text[:2000]


def test_a_token_added_then_revoked_by_rerunning_the_role_without_a_restart(
    edge: DeployedFleet, tmp_path: Path
) -> None:
    play = tmp_path / "orchestrator.yml"
    play.write_text(ROLE_PLAY)
    before = started_at(edge)
    added = "a-token-added-by-a-test-0123456789"
    default = {"name": "default", "token": edge.token}

    def converge(tokens: list[dict[str, str]]) -> subprocess.CompletedProcess[str]:
        tokens_file = tmp_path / "tokens.json"  # not on the command line
        tokens_file.write_text(json.dumps({"fleet_api_tokens": tokens}))
        tokens_file.chmod(0o600)
        return run(
            ["ansible-playbook", str(play), "-e", edge.vars_file, "-e", f"@{tokens_file}"], env=edge.env()
        )

    assert call(edge, "/run_model", added)[0] == 401
    proc = converge([default, {"name": "added-by-test", "token": added}])
    assert proc.returncode == 0, explain(proc)
    assert added not in proc.stdout + proc.stderr
    assert "RUNNING HANDLER [onnxfleet.serving.orchestrator : Ask the orchestrator to reload" in proc.stdout
    assert call(edge, "/run_model", added)[0] == 200
    assert call(edge, "/run_model", edge.token)[0] == 200

    proc = converge([default])
    assert proc.returncode == 0, explain(proc)
    status, _headers, answer = call(edge, "/run_model", added)
    assert (status, answer["code"]) == (401, "unauthorized")
    assert call(edge, "/run_model", edge.token)[0] == 200
    assert started_at(edge) == before, "the orchestrator's container was restarted"
