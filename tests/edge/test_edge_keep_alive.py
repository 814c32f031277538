"""The edge keeps its connections to the orchestrator and reuses them (issue 19): a new
connection per request cost the edge and the orchestrator more CPU than forwarding the
request. Counted at the orchestrator's port by the kernel: every connection made to it in
the last minute is in /proc/net/tcp, open, closing or in TIME_WAIT (60 s on Linux)."""

from __future__ import annotations

import http.client
from pathlib import Path

from tests.edge.edge_support import CLIENT_TOKEN, FrontDoor, client_context
from tests.edge.pki import Pki
from tests.orchestrator.orch_support import SimFleet

LISTEN = "0A"
CLIENT_CONNECTIONS = 4
REQUESTS_EACH = 30
HEADERS = {"Content-Type": "application/json", "Authorization": f"Bearer {CLIENT_TOKEN}"}


def connections_to(port: int) -> set[tuple[str, str]]:
    """The TCP connections to or from ``port`` on loopback (listeners aside), each as its
    (lower, higher) address pair, so that both ends of a connection count once."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, remote, state = line.split()[1:4]
            if state == LISTEN:
                continue
            if int(local.rsplit(":", 1)[1], 16) == port or int(remote.rsplit(":", 1)[1], 16) == port:
                low, high = sorted((local, remote))
                found.add((low, high))
    return found


def test_the_edge_reuses_its_connections_to_the_orchestrator(pki: Pki, sim: SimFleet) -> None:
    """4 client keep-alive connections, 30 requests each, through the edge: the
    orchestrator accepts at most one connection per client connection, not one per request."""
    with FrontDoor(pki, sim) as front:
        before = connections_to(front.ports.blue)  # the test's own readiness checks
        statuses = []
        for _ in range(CLIENT_CONNECTIONS):
            conn = http.client.HTTPSConnection(
                "localhost", front.ports.tls, timeout=15, context=client_context(pki.ca_file)
            )
            try:
                for _ in range(REQUESTS_EACH):
                    conn.request("POST", "/run_model", body=b"{}", headers=HEADERS)
                    response = conn.getresponse()
                    response.read()
                    statuses.append(response.status)
            finally:
                conn.close()
        made = connections_to(front.ports.blue) - before
    assert statuses == [200] * (CLIENT_CONNECTIONS * REQUESTS_EACH)
    assert 1 <= len(made) <= CLIENT_CONNECTIONS, f"{len(made)} connections for {len(statuses)} requests"
