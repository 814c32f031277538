"""Helpers for the batching tests: client requests in every format, raw answers to compare."""

from __future__ import annotations

import http.client
import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from onnxfleet import oip

# the formats a client may use: /run_model JSON, OIP JSON, OIP binary in, binary in and out,
# and one or two outputs asked for by name
FORMATS = ("run_model", "json", "binary", "binary_out", "some_outputs")
# what differs between two answers to the same request for reasons other than the request:
# the time, the connection, and what the orchestrator adds
NOT_COMPARED = {
    "date",
    "server",
    "connection",
    "keep-alive",
    "content-length",
    "x-queue-wait-ms",
    "x-container",
    "x-request-id",  # the orchestrator sets its own (it is checked where it is the subject)
}


def client_request(
    fmt: str,
    rows: np.ndarray,
    request_id: str | None = None,
    *,
    model: str = "echo",
    input_name: str = "x",
    some_output: str = "n",
) -> tuple[str, bytes, dict[str, str]]:
    """(path, body, headers) of one request for ``rows`` in format ``fmt``."""
    headers = {"X-Request-Id": request_id} if request_id is not None else {}
    if fmt == "run_model":
        body = json.dumps({"inputs": rows.tolist()}).encode()
        return "/run_model", body, {"Content-Type": "application/json", **headers}
    outputs = [oip.RequestedOutput(some_output, binary=True)] if fmt == "some_outputs" else None
    body, extra = oip.encode_request(
        {input_name: rows},
        outputs,
        binary_data=fmt != "json",
        binary_output=fmt == "binary_out",
        request_id=request_id,
    )
    if fmt == "json":
        extra.pop("Content-Type")  # as tritonclient sends JSON: no Content-Type
    return f"/v2/models/{model}/infer", body, {**extra, **headers}


@dataclass
class Answer:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)

    def comparable(self) -> tuple[int, list[tuple[str, str]], bytes]:
        """Status, headers (but those of NOT_COMPARED) and body, to compare two answers."""
        kept = [(k.lower(), v) for k, v in self.headers if k.lower() not in NOT_COMPARED]
        return self.status, kept, self.body

    def json(self) -> Any:
        return json.loads(self.body)

    def outputs(self) -> dict[str, Any]:
        """The answer's outputs as nested lists, whatever its format."""
        if self.header("inference-header-content-length") is None:
            document = self.json()
            if isinstance(document["outputs"], dict):  # /run_model
                return dict(document["outputs"])
        answer = oip.decode_response(self.body, self.header("inference-header-content-length"))
        return {name: array.tolist() for name, array in answer.outputs.items()}


def post(base: str, path: str, body: bytes, headers: dict[str, str], timeout: float = 30.0) -> Answer:
    """One POST on a new connection; the answer's headers in the order they came."""
    host, _, port = base.removeprefix("http://").partition(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        conn.request("POST", path, body, headers)
        response = conn.getresponse()
        return Answer(response.status, response.getheaders(), response.read())
    finally:
        conn.close()
