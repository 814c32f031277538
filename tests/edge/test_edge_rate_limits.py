"""Issue 17, item 8: rate limits belong to the client's identity. A request whose Bearer
token is one of the fleet's counts against that token, wherever it comes from (one
application server behind a NAT gateway is one address); everything else (no token, or a
token the edge does not know) counts against its address, so made-up tokens buy nothing.

The busy client is `onnxfleet load --rate 500` in its own process, through the role's
HAProxy at its default limits; the anonymous clients share its address (127.0.0.1)."""

from __future__ import annotations

import hashlib
import http.client
import json
import secrets
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.edge.edge_support import CLIENT_TOKEN, FrontDoor, Ports, edge_variables, render
from tests.edge.pki import Pki
from tests.orchestrator.orch_support import SimFleet

RATE = 500  # requests/s of the busy client
SECONDS = 12  # longer than the 10 s window: a limit per 10 s would have been met
LIMIT = 1000  # edge_rate_limit_requests by default, per edge_rate_limit_period_s (10 s)


def assert_limited_after(statuses: list[int], limit: int) -> None:
    """``limit`` answers from the orchestrator (401: no token it knows), then soon a 429.
    HAProxy's rate over 10 s is an estimate (the previous period's count weighted by the
    share of it still in the window): it never counts more than were sent, so no request
    within the limit is refused, but a burst that straddles two periods may get a few
    hundred more through before it is."""
    assert 429 not in statuses[:limit], statuses.index(429)
    assert set(statuses[:limit]) == {401}
    assert statuses[-1] == 429, f"no 429 after {len(statuses)} requests"
    assert set(statuses[:-1]) == {401}


class Client:
    """One keep-alive HTTPS connection from ``source``; each request says its token."""

    def __init__(self, front: FrontDoor, source: str) -> None:
        self.conn = http.client.HTTPSConnection(
            "localhost",
            front.ports.tls,
            timeout=15,
            source_address=(source, 0),
            context=ssl.create_default_context(cafile=str(front.pki.ca_file)),
        )

    def post(self, token: str | None) -> tuple[int, dict[str, str], bytes]:
        headers = {"Content-Type": "application/json"}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        self.conn.request("POST", "/run_model", body=b"{}", headers=headers)
        response = self.conn.getresponse()
        body = response.read()
        if response.getheader("Connection", "").lower() == "close":
            self.conn.close()  # the next request opens a new connection
        return response.status, {k.lower(): v for k, v in response.getheaders()}, body

    def until_refused(
        self, token: str | None, at_most: int, made_up: bool = False
    ) -> tuple[list[int], dict[str, str], bytes]:
        """Requests with ``token`` (None: none; ``made_up``: a new random one each time)
        until the first 429 (or ``at_most``): the statuses and the refusal."""
        statuses: list[int] = []
        while len(statuses) < at_most:
            status, headers, body = self.post(secrets.token_urlsafe(32) if made_up else token)
            statuses.append(status)
            if status == 429:
                return statuses, headers, body
        return statuses, {}, b""

    def close(self) -> None:
        self.conn.close()


def test_a_busy_client_with_a_token_is_not_refused_and_anonymous_ones_still_are(
    pki: Pki, sim: SimFleet, tmp_path: Path
) -> None:
    """At the role's defaults: `onnxfleet load --rate 500` with the fleet's token from
    127.0.0.1 for 12 s gets no 429 (main: 429 after the address's first 1,000 requests).
    Meanwhile from the same address, requests without a token are refused after 1,000 (the
    busy client's requests do not use up the address's quota), then so is a made-up token;
    from another address, a new made-up token on every request is refused after 1,000 too."""
    for i in range(4):
        sim.mode(i, "ok", service_ms=2)
    token_file = tmp_path / "token"
    token_file.write_text(CLIENT_TOKEN + "\n")
    with FrontDoor(pki, sim, containers=4) as front:
        busy = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "onnxfleet",
                "load",
                "--url",
                front.url,
                "--cacert",
                str(pki.ca_file),
                "--token-file",
                str(token_file),
                "--rate",
                str(RATE),
                "--duration",
                str(SECONDS),
                "-c",
                "64",  # in flight at most: under 100 connections per address, with room for the others
                "--json",
                "-",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            time.sleep(2)  # the busy client's first 1,000 requests are in
            same_address = Client(front, "127.0.0.1")
            anonymous, refused_headers, refused_body = same_address.until_refused(None, at_most=2 * LIMIT)
            made_up = same_address.post(secrets.token_urlsafe(32))
            same_address.close()
            out, err = busy.communicate(timeout=SECONDS + 60)
        finally:
            if busy.poll() is None:
                busy.kill()
                busy.wait()
        # (after the busy client: the machine's CPU is its while it runs)
        other_address = Client(front, "127.0.12.1")
        random_tokens, _, _ = other_address.until_refused(None, at_most=2 * LIMIT, made_up=True)
        other_address.close()
    summary = json.loads(out)["summary"]
    assert summary["status_codes"] == {"200": summary["requests"]}, (summary["status_codes"], err[-2000:])
    # Far more than an address may send went through: 500 requests/s held gives 6,000
    # (measured on a quiet machine); with other test runs on the 2 cores this client held
    # 340-420, which still shows what counts, not how fast the machine is.
    assert summary["requests"] >= 3 * LIMIT, (summary["requests"], summary["rate"])
    # made-up tokens and no token: the address's quota, whoever else calls from there
    assert_limited_after(anonymous, LIMIT)
    assert refused_headers["retry-after"] == "10"
    assert json.loads(refused_body)["code"] == "rate_limited"
    assert made_up[0] == 429
    assert_limited_after(random_tokens, LIMIT)


@pytest.fixture(scope="module")
def small_limits(pki: Pki, sim_fleet: SimFleet) -> Iterator[FrontDoor]:
    """Two tokens, 20 requests per token and 30 per address in 10 s."""
    edge = {"edge_token_rate_limit_requests": 20, "edge_rate_limit_requests": 30}
    tokens = {"alice": "alice-token-0123456789", "bob": "bob-token-0123456789ab"}
    with FrontDoor(pki, sim_fleet, edge=edge, tokens=tokens) as door:
        yield door


def test_a_token_has_its_own_limit_wherever_it_calls_from(small_limits: FrontDoor) -> None:
    """alice's 20 requests from four addresses (spelt "Bearer" and "bearer") are her
    quota: more, from a fifth address, get 429 naming the token's limit; bob and the
    addresses' anonymous quotas are untouched."""
    front = small_limits
    for i in range(20):
        scheme = "Bearer" if i % 2 else "bearer"
        alice = {"Authorization": f"{scheme} alice-token-0123456789"}
        answer = front.request(headers=alice, token=None, source=f"127.0.13.{i % 4 + 1}")
        assert answer.status == 200, answer
    fifth = Client(front, "127.0.13.5")
    statuses, headers, body = fifth.until_refused("alice-token-0123456789", at_most=20)
    fifth.close()
    assert set(statuses[:-1]) <= {200}
    assert statuses[-1] == 429, statuses
    assert headers["retry-after"] == "10"
    assert json.loads(body) == {
        "error": "too many requests with this token: at most 20 in 10 s",
        "code": "rate_limited",
        "retry_after": 10,
    }
    assert front.request(token="bob-token-0123456789ab", source="127.0.13.1").status == 200
    assert front.request(token=None, source="127.0.13.1").status == 401  # the address's quota is whole


def test_an_unknown_token_counts_against_its_address(small_limits: FrontDoor) -> None:
    """From one address, a new made-up token on each request: after the address's 30, 429;
    a known token from that address still passes."""
    front = small_limits
    client = Client(front, "127.0.14.1")
    statuses, _, body = client.until_refused(None, at_most=60, made_up=True)
    client.close()
    assert_limited_after(statuses, 30)
    expected = "too many requests from this address without a known token: at most 30 in 10 s"
    assert json.loads(body)["error"] == expected
    assert front.request(token="bob-token-0123456789ab", source="127.0.14.1").status == 200


def test_the_edge_gets_the_tokens_hashes_only(pki: Pki, tmp_path: Path) -> None:
    """The map the role deploys: one "<sha256 hex> <name>" line per token, never a token;
    with fleet_auth off, none (every request then counts against its address)."""
    tokens = {"alice": "alice-token-0123456789", "bob": "bob-token-0123456789ab"}
    variables = edge_variables(Ports(), pki, tmp_path, tokens)
    render(tmp_path / "haproxy.cfg", variables)
    text = Path(variables["edge_token_map"]).read_text()
    entries = [line.split() for line in text.splitlines() if line and not line.startswith("#")]
    assert entries == [[hashlib.sha256(token.encode()).hexdigest(), name] for name, token in tokens.items()]
    assert "alice-token" not in text
    assert "bob-token" not in text

    open_fleet = edge_variables(Ports(), pki, tmp_path, tokens, fleet_auth=False)
    render(tmp_path / "open.cfg", open_fleet)
    text = Path(open_fleet["edge_token_map"]).read_text()
    assert [line for line in text.splitlines() if line and not line.startswith("#")] == []
