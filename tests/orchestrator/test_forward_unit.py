"""What the orchestrator forwards, byte for byte: the request to a container, the headers back
(the Host default and the basic framing are in test_exchange_unit.py)."""

from __future__ import annotations

from onnxfleet.orchestrator.forward import request_bytes, response_headers
from onnxfleet.orchestrator.upstream import Response


def test_the_request_keeps_the_clients_headers_and_frames_the_body_itself() -> None:
    headers = [(b"host", b"fleet.example"), (b"content-type", b"application/json"), (b"x-a", b"1")]
    sent = request_bytes("POST", b"/run_model", headers, b'{"x": 1}')
    assert sent == (
        b"POST /run_model HTTP/1.1\r\n"
        b"host: fleet.example\r\ncontent-type: application/json\r\nx-a: 1\r\n"
        b"Content-Length: 8\r\n\r\n"
        b'{"x": 1}'
    )


def test_hop_by_hop_headers_and_credentials_stay_behind() -> None:
    headers = [
        (b"host", b"h"),
        (b"connection", b"keep-alive"),
        (b"transfer-encoding", b"chunked"),
        (b"content-length", b"99"),
        (b"authorization", b"Bearer secret"),
        (b"upgrade", b"websocket"),
        (b"x-kept", b"yes"),
    ]
    assert request_bytes("POST", b"/p", headers, b"ab") == (
        b"POST /p HTTP/1.1\r\nhost: h\r\nx-kept: yes\r\nContent-Length: 2\r\n\r\nab"
    )


def test_headers_the_connection_header_names_are_not_forwarded() -> None:
    """RFC 9110 7.6.1: every comma-separated name, blanks and case aside."""
    headers = [
        (b"connection", b"X-Hop ,  x-other,Keep-Alive"),
        (b"x-hop", b"1"),
        (b"x-other", b"2"),
        (b"x-kept", b"3"),
    ]
    assert request_bytes("GET", b"/", headers, b"") == (
        b"GET / HTTP/1.1\r\nx-kept: 3\r\nHost: onnxfleet\r\nContent-Length: 0\r\n\r\n"
    )


def test_only_the_connection_header_names_headers() -> None:
    # A header of another name that lists names removes nothing.
    headers = [(b"x-list", b"x-a, x-b"), (b"x-a", b"1"), (b"x-b", b"2")]
    assert request_bytes("GET", b"/", headers, b"") == (
        b"GET / HTTP/1.1\r\nx-list: x-a, x-b\r\nx-a: 1\r\nx-b: 2\r\n"
        b"Host: onnxfleet\r\nContent-Length: 0\r\n\r\n"
    )


def test_the_containers_headers_come_back_without_hop_by_hop_ones() -> None:
    response = Response(
        200,
        [
            (b"Content-Type", b"application/json"),
            (b"Connection", b"keep-alive, X-Private"),
            (b"X-Private", b"1"),
            (b"Content-Length", b"2"),
            (b"Server", b"gunicorn"),
            (b"X-Container", b"spoofed"),
            (b"x-model-version", b"1"),
        ],
        b"{}",
        True,
    )
    assert response_headers(response) == [(b"Content-Type", b"application/json"), (b"x-model-version", b"1")]


def test_a_lowercase_connection_header_from_a_container_names_headers_too() -> None:
    response = Response(200, [(b"connection", b"x-a"), (b"X-A", b"1"), (b"X-B", b"2")], b"", True)
    assert response_headers(response) == [(b"X-B", b"2")]
