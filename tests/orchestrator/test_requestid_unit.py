"""The orchestrator's request ids: which of a client's ids are kept, what replaces the rest."""

from __future__ import annotations

import pytest

from onnxfleet.orchestrator import requestid
from onnxfleet.orchestrator.forward import request_bytes, response_headers
from onnxfleet.orchestrator.upstream import Response

KEPT = [b"a", b"0" * 128, b"abc-DEF_1.2:3", b"4bf92f3577b34da6a3ce929d0e0e4736", b"00f0-67aa"]
REPLACED = [b"", b"0" * 129, b"two words", b"a,b", b'quo"te', b"line\r\nforged: 1", b"tab\t"]
REPLACED += [b"\xc3\xa9", b"a/b", b"%0a", b"a\x00"]


@pytest.mark.parametrize("value", KEPT)
def test_a_safe_id_is_valid(value: bytes) -> None:
    assert requestid.valid(value)


@pytest.mark.parametrize("value", REPLACED)
def test_anything_else_is_not(value: bytes) -> None:
    assert not requestid.valid(value)


def test_a_new_id_is_valid_and_new_each_time() -> None:
    ids = {requestid.new() for _ in range(100)}
    assert len(ids) == 100
    assert all(requestid.valid(i) and len(i) == 32 for i in ids)


def test_a_clients_single_valid_id_is_kept_with_the_headers_untouched() -> None:
    headers = [(b"host", b"h"), (b"x-request-id", b"mine-1"), (b"accept", b"*/*")]
    request_id, out = requestid.assign(list(headers))
    assert (request_id, out) == (b"mine-1", headers)


def test_without_an_id_one_is_made_and_added() -> None:
    request_id, out = requestid.assign([(b"host", b"h")])
    assert requestid.valid(request_id)
    assert len(request_id) == 32
    assert out == [(b"host", b"h"), (b"x-request-id", request_id)]


@pytest.mark.parametrize(
    "given",
    [[b"two words"], [b"a", b"b"], [b"0" * 129], [b"ok", b"not ok"]],
    ids=["invalid", "two", "long", "mixed"],
)
def test_an_invalid_or_repeated_id_is_replaced_by_exactly_one_new_one(given: list[bytes]) -> None:
    headers = [(b"host", b"h"), *((b"x-request-id", v) for v in given), (b"accept", b"*/*")]
    request_id, out = requestid.assign(headers)
    assert request_id not in given
    assert requestid.valid(request_id)
    assert out == [(b"host", b"h"), (b"accept", b"*/*"), (b"x-request-id", request_id)]


def test_the_id_and_traceparent_are_forwarded_as_they_are() -> None:
    trace = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    request_id, headers = requestid.assign([(b"traceparent", trace), (b"tracestate", b"v=1")])
    data = request_bytes("POST", b"/run_model", headers, b"{}")
    head = data.split(b"\r\n\r\n")[0].split(b"\r\n")
    assert head[1:4] == [b"traceparent: " + trace, b"tracestate: v=1", b"x-request-id: " + request_id]


def test_the_containers_echo_of_the_id_is_not_passed_back() -> None:
    """The orchestrator adds the request's own id: a merged call's container saw several."""
    response = Response(200, [(b"X-Request-Id", b"a,b"), (b"X-Model-Version", b"1")], b"{}", True)
    assert response_headers(response) == [(b"X-Model-Version", b"1")]
