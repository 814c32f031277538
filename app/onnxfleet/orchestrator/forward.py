"""What is forwarded: the request bytes sent to a container, the headers sent back."""

from __future__ import annotations

from collections.abc import Iterable

from onnxfleet.orchestrator.upstream import Headers, Response

# Not forwarded either way: connection management, framing, our own credentials, and the
# headers the orchestrator sets itself.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"content-length",
        b"expect",
        b"authorization",
        b"date",
        b"server",
        b"x-container",
        b"x-queue-wait-ms",
    }
)


# The request's id goes back as the orchestrator set it (the container's echo is dropped: a
# merged call's container saw the members' ids joined, each member's answer gets its own).
NOT_RETURNED = HOP_BY_HOP | {b"x-request-id"}


def _connection_options(headers: Iterable[tuple[bytes, bytes]]) -> frozenset[bytes]:
    """The header names that ``Connection:`` lists: hop-by-hop for this connection only
    (RFC 9110, 7.6.1), so never forwarded."""
    named: set[bytes] = set()
    for name, value in headers:
        if name == b"connection":
            named.update(token.strip().lower() for token in value.split(b","))
    return frozenset(named)


def request_bytes(method: str, path: bytes, headers: Iterable[tuple[bytes, bytes]], body: bytes) -> bytes:
    """The complete HTTP/1.1 request for a container: the client's headers, our framing.

    ``headers`` are the client's, names lowercased (as ASGI servers give them). The
    client's Host is passed through (as HAProxy does), so the bytes do not depend on the
    container and are built once, before the request even has a slot.
    """
    headers = list(headers)
    named = _connection_options(headers)
    parts = [method.encode(), b" ", path, b" HTTP/1.1\r\n"]
    has_host = False
    for name, value in headers:
        if name in HOP_BY_HOP or (named and name in named):
            continue
        has_host = has_host or name == b"host"
        parts += (name, b": ", value, b"\r\n")
    if not has_host:
        parts.append(b"Host: onnxfleet\r\n")
    parts.append(b"Content-Length: %d\r\n\r\n" % len(body))
    parts.append(body)
    return b"".join(parts)


def response_headers(response: Response) -> Headers:
    """The container's headers that go back to the client."""
    named = _connection_options((k.lower(), v) for k, v in response.headers)
    return [(k, v) for k, v in response.headers if k.lower() not in NOT_RETURNED and k.lower() not in named]
