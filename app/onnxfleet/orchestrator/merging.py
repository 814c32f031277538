"""Requests merged along their batch dimension into one container call, its answer split back.

Pure functions over bytes and numpy arrays. A request is read with the same codec
functions and the same checks as the worker reads it (``onnxfleet.oip``), and each
client's share of a merged answer is written with the same functions the worker would
have used for its request alone, from the same values: same fields, same bytes. A
request that the checks refuse is never merged: sent alone, its own container answer
(the exact error) comes back.

The merged call is binary OIP (cheapest to build and to read on both sides): the inputs
of its members concatenated in order, every output asked for in binary.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from urllib.parse import quote

import numpy as np

from onnxfleet import oip
from onnxfleet.oip import CodecError, InferRequest, Signature
from onnxfleet.orchestrator.routes import ModelSpec
from onnxfleet.orchestrator.upstream import Headers, Response

RUN_MODEL, INFER = "run_model", "infer"
# the binary answer's JSON header at most (names, shapes, sizes): kept out of the body limit
HEADER_ALLOWANCE = 4096

_UNREAD, _MERGEABLE, _ALONE = range(3)


class Part:
    """One batchable request as batching sees it: its format and, once read, its rows."""

    __slots__ = (
        "body_size",
        "header",
        "inputs",
        "key",
        "kind",
        "model",
        "nbytes",
        "request",
        "request_id",
        "rows",
        "state",
        "version",
    )

    def __init__(
        self,
        kind: str,
        body_size: int,
        model: ModelSpec,
        *,
        header: bytes | None = None,
        request_id: bytes | None = None,
        version: str | None = None,
    ) -> None:
        self.kind = kind
        self.body_size = body_size  # the body is the end of the exchange's bytes
        self.model = model  # read against its signature
        # what else the worker reads: Content-Type (/run_model), Inference-Header-Content-Length (OIP)
        self.header = header
        self.request_id = request_id  # echoed by the worker as X-Request-Id
        self.version = version  # /v2/models/{name}/versions/{version}/infer
        self.state = _UNREAD
        self.inputs: dict[str, np.ndarray] = {}
        self.request: InferRequest | None = None  # OIP: the outputs it asks for, its id
        self.rows = 0
        self.key: tuple[tuple[int, ...], ...] = ()  # members share every input's other dimensions
        self.nbytes = 0

    @property
    def read(self) -> bool:
        return self.state != _UNREAD

    @property
    def mergeable(self) -> bool:
        return self.state == _MERGEABLE

    def alone(self) -> None:
        """Never merged: sent with its own bytes (refused by the checks, or re-sent singly);
        what was read of it is dropped (memory)."""
        self.state = _ALONE
        self.inputs = {}
        self.request = None


def _json_type(content_type: bytes | None) -> bool:
    """What the worker's ``/run_model`` accepts: JSON, or no Content-Type at all."""
    if content_type is None:
        return True
    mimetype = content_type.split(b";", 1)[0].strip().lower()
    return not mimetype or mimetype == b"application/json" or mimetype.endswith(b"+json")


def _wire_size(array: np.ndarray) -> int:
    if array.dtype.kind == "O":
        return sum(4 + len(x if isinstance(x, bytes) else str(x).encode()) for x in array.flat)
    return int(array.nbytes)


def read(part: Part, body: bytes, signature: Signature, max_rows: int, max_bytes: int) -> None:
    """Read ``part``'s request as the worker would; it stays mergeable only when the
    worker would run it as it is and it fits in a call on its own."""
    part.state = _ALONE
    request = None
    try:
        if part.kind == RUN_MODEL:
            if not _json_type(part.header):
                return
            inputs = oip.run_model.parse_request(body, signature)
        else:
            length = part.header.decode("latin-1") if part.header is not None else None
            request = oip.parse_request(body, length, signature)
            signature.check_outputs(request.output_names(signature))
            inputs = request.inputs
    except CodecError:
        return
    rows = {int(array.shape[0]) for array in inputs.values()}
    if len(rows) != 1:  # inputs that disagree on the batch: the container says what it thinks
        return
    part.rows = rows.pop()
    part.key = tuple(inputs[name].shape[1:] for name in signature.input_names)
    part.nbytes = sum(_wire_size(array) for array in inputs.values())
    if 0 < part.rows <= max_rows and part.nbytes <= max_bytes:
        part.state = _MERGEABLE
        part.inputs = inputs  # kept only for merging
        part.request = request


def merged_request(model: str, signature: Signature, parts: Sequence[Part]) -> bytes:
    """The merged call: every member's inputs concatenated in order, binary in and out.

    ``X-Request-Id`` lists the members' own ids (the worker logs it: which requests ran
    together), when they have any and the list is short.
    """
    inputs = {name: np.concatenate([part.inputs[name] for part in parts]) for name in signature.input_names}
    body, headers = oip.encode_request(inputs, binary_data=True, binary_output=True)
    head = [
        b"POST /v2/models/%s/infer HTTP/1.1\r\nHost: onnxfleet\r\n" % quote(model, safe="").encode(),
        *(b"%s: %s\r\n" % (k.encode(), v.encode()) for k, v in headers.items()),
    ]
    ids = b",".join(part.request_id for part in parts if part.request_id)
    if ids and len(ids) <= 4096:
        head.append(b"X-Request-Id: %s\r\n" % ids)
    head.append(b"Content-Length: %d\r\n\r\n" % len(body))
    return b"".join([*head, body])


# a member's own, not copied from the merged answer
_OWN_HEADERS = (b"content-type", b"inference-header-content-length", b"x-request-id", b"content-length")


class _Answers:
    """What the members' answers share: the merged answer's identity (model name, version,
    container) and its headers, around the place where the worker writes the content ones."""

    def __init__(self, merged: Response, identity: tuple[str, str, str]) -> None:
        self.identity = identity
        kept: Headers = []
        at = 0
        for name, value in merged.headers:
            lower = name.lower()
            if lower == b"content-type":
                at = len(kept)
            elif lower not in _OWN_HEADERS:
                kept.append((name, value))
        self.before, self.after = kept[:at], kept[at:]

    def answer(self, part: Part, outputs: dict[str, Any]) -> Response:
        """``part``'s answer, written as the worker writes an answer to it alone."""
        model, version, container = self.identity
        if part.request is None:
            body = oip.run_model.encode_response(outputs, model, version, container)
            content = {"Content-Type": oip.JSON_TYPE}
        else:
            body, content = oip.encode_response(
                part.request, outputs, model, version, {"container": container}
            )
        headers = [*self.before, *((k.encode(), v.encode()) for k, v in content.items()), *self.after]
        if part.request_id:
            headers.append((b"X-Request-Id", part.request_id))
        return Response(200, headers, body, True)


def split(
    response: Response, parts: Sequence[Part], wanted: Sequence[bool], signature: Signature
) -> list[Response | None] | None:
    """Each member's answer from the merged call's 200 (None where not ``wanted``: its client
    is gone), or None when the answer does not split into the members' rows (each is then
    re-sent alone: its container's own answer is the truth)."""
    try:
        answer = oip.decode_response(response.body, response.header(oip.HEADER_LENGTH))
    except CodecError:
        return None
    outputs = answer.outputs
    container = answer.parameters.get("container")
    version = answer.model_version
    total = sum(part.rows for part in parts)
    if (
        not isinstance(version, str)
        or not isinstance(container, str)
        or any(array.ndim == 0 or array.shape[0] != total for array in outputs.values())
    ):
        return None
    shared = _Answers(response, (answer.model_name, version, container))
    answers: list[Response | None] = []
    start = 0
    for part, want in zip(parts, wanted, strict=True):
        end = start + part.rows
        mine = _rows(outputs, part, signature, start, end) if want else None
        start = end
        if want and mine is None:
            return None
        answers.append(shared.answer(part, mine) if mine is not None else None)
    return answers


def _rows(
    outputs: dict[str, np.ndarray], part: Part, signature: Signature, start: int, end: int
) -> dict[str, np.ndarray] | None:
    """This member's rows of the outputs it asked for, in its order (None: one is missing)."""
    names = list(outputs) if part.request is None else part.request.output_names(signature)
    if any(name not in outputs for name in names):
        return None
    return {name: outputs[name][start:end] for name in names}
