"""TLS as clients and attackers meet it: the fleet's CA verifies the edge; TLS 1.0/1.1,
ciphers without forward secrecy or AEAD, plain HTTP on the TLS port and HTTP/2 are refused;
HSTS on every answer; the plain HTTP port only redirects."""

from __future__ import annotations

import http.client
import socket
import ssl
from collections.abc import Iterator

import pytest

from tests.edge.edge_support import FrontDoor
from tests.edge.pki import Pki
from tests.orchestrator.orch_support import SimFleet

MOZILLA_INTERMEDIATE_TLS12 = {
    "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305",
    "ECDHE-RSA-CHACHA20-POLY1305",
}


@pytest.fixture(scope="module")
def front(pki: Pki, sim_fleet: SimFleet) -> Iterator[FrontDoor]:
    with FrontDoor(pki, sim_fleet) as door:
        yield door


def handshake(front: FrontDoor, context: ssl.SSLContext) -> tuple[str, str, str | None]:
    """(TLS version, cipher, ALPN protocol) the edge agrees to, or ssl.SSLError."""
    with (
        socket.create_connection(("127.0.0.1", front.ports.tls), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        cipher = tls.cipher()
        assert cipher is not None
        return str(tls.version()), cipher[0], tls.selected_alpn_protocol()


def legacy_client(front: FrontDoor, version: ssl.TLSVersion, ciphers: str) -> ssl.SSLContext:
    """A client that offers what a careless server would accept (OpenSSL security level 0)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(front.pki.ca_file)
    context.minimum_version = version
    context.maximum_version = version
    context.set_ciphers(f"{ciphers}:@SECLEVEL=0")
    return context


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_tls_1_2_and_1_3_verified_against_the_fleet_ca(front: FrontDoor, version: ssl.TLSVersion) -> None:
    context = ssl.create_default_context(cafile=str(front.pki.ca_file))
    context.minimum_version = context.maximum_version = version
    context.set_alpn_protocols(["h2", "http/1.1"])
    negotiated, cipher, alpn = handshake(front, context)
    assert negotiated == {ssl.TLSVersion.TLSv1_2: "TLSv1.2", ssl.TLSVersion.TLSv1_3: "TLSv1.3"}[version]
    if version == ssl.TLSVersion.TLSv1_2:
        assert cipher in MOZILLA_INTERMEDIATE_TLS12
    assert alpn == "http/1.1"  # never h2: its bodies have no Content-Length to check
    # and nobody else's CA is trusted for it
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(front, ssl.create_default_context())


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")  # offering them is the point
@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1])
def test_tls_1_0_and_1_1_are_refused(front: FrontDoor, version: ssl.TLSVersion) -> None:
    with pytest.raises(ssl.SSLError, match=r"VERSION|PROTOCOL|ALERT"):
        handshake(front, legacy_client(front, version, "ALL"))


@pytest.mark.parametrize(
    "cipher",
    [
        "AES128-SHA",  # RSA key exchange (no forward secrecy), CBC with SHA-1
        "AES128-GCM-SHA256",  # RSA key exchange
        "AES256-GCM-SHA384",  # RSA key exchange
        "ECDHE-RSA-AES128-SHA",  # CBC with SHA-1
        "ECDHE-RSA-AES128-SHA256",  # CBC
        "ECDHE-RSA-AES256-SHA384",  # CBC
    ],
)
def test_weak_tls_1_2_ciphers_are_refused(front: FrontDoor, cipher: str) -> None:
    with pytest.raises(ssl.SSLError):
        handshake(front, legacy_client(front, ssl.TLSVersion.TLSv1_2, cipher))


def test_plain_http_on_the_tls_port_gets_no_answer(front: FrontDoor) -> None:
    with socket.create_connection(("127.0.0.1", front.ports.tls), timeout=5) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert sock.recv(65536) == b""  # closed: nothing is served without TLS


def test_hsts_on_the_orchestrator_s_answers_and_on_the_edge_s_own(front: FrontDoor) -> None:
    for answer in (
        front.request("GET", "/healthz", body=None, source="127.0.2.1"),
        front.request("POST", "/run_model", source="127.0.2.1"),
        front.request("POST", "/run_model", token=None, source="127.0.2.1"),  # the orchestrator's 401
        front.request("POST", "/admin/reload", source="127.0.2.1"),  # the edge's 403
    ):
        assert answer.header("Strict-Transport-Security") == "max-age=63072000", answer


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_the_plain_http_port_only_redirects(front: FrontDoor, method: str) -> None:
    before = front.status()["totals"]["answered"]
    for path in ("/run_model?x=1", "/admin/reload", "/status"):
        conn = http.client.HTTPConnection("127.0.0.1", front.ports.http, timeout=5)
        conn.request(
            method, path, body=b"{}" if method == "POST" else None, headers={"Host": "fleet.example:80"}
        )
        response = conn.getresponse()
        response.read()
        conn.close()
        # 308 keeps the method and the body; the client is sent to the TLS port
        assert response.status == 308
        assert response.getheader("Location") == f"https://fleet.example:{front.ports.tls}{path}"
    assert front.status()["totals"]["answered"] == before  # nothing reached the orchestrator
