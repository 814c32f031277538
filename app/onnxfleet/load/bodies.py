"""What the load client sends: request bodies, each with the headers that describe it.

A run cycles through its bodies in order (request *i* gets body *i mod count*). They come
from ``--data`` (one JSON body), ``--data-lines`` (a JSON body per line) or ``--data-dir``
(a directory of ``.json`` bodies and ``.bin`` OIP binary bodies: a JSON inference header
followed by the tensors' bytes, sent with ``Inference-Header-Content-Length``).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from onnxfleet.load.sample import DEFAULT_BODY

JSON_HEADERS: Mapping[str, str] = {"Content-Type": "application/json"}
HEADER_LENGTH = "Inference-Header-Content-Length"
SUFFIXES = (".json", ".bin")


@dataclass(frozen=True)
class Body:
    """One request body; ``data`` None sends none (a GET)."""

    data: bytes | None
    headers: Mapping[str, str] = field(default_factory=dict)

    def __repr__(self) -> str:  # bodies can be large and private
        size = "no body" if self.data is None else f"{len(self.data)} bytes"
        return f"Body({size}, headers={sorted(self.headers)})"


DEFAULT = Body(DEFAULT_BODY, JSON_HEADERS)
EMPTY = Body(None)


def json_body(raw: bytes, where: str) -> Body:
    """``raw`` as a JSON body; ValueError naming ``where`` when it is not JSON."""
    try:
        json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{where} must be JSON: {exc}") from None
    return Body(raw, JSON_HEADERS)


def _read(name: str, option: str) -> bytes:
    try:
        return sys.stdin.buffer.read() if name == "-" else Path(name).read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read {option} {name!r}: {exc.strerror or exc}") from None


def read_json_lines(name: str) -> tuple[Body, ...]:
    """One JSON body per non-blank line of file ``name`` (``-``: stdin)."""
    bodies = tuple(
        json_body(line.strip(), f"--data-lines {name!r} line {number}")
        for number, line in enumerate(_read(name, "--data-lines").splitlines(), 1)
        if line.strip()
    )
    if not bodies:
        raise ValueError(f"--data-lines {name!r} has no body: expected one JSON document per line")
    return bodies


def _binary_sizes(header: Any) -> int:
    """The bytes of binary data the inputs of an OIP header announce."""
    inputs = header.get("inputs") if isinstance(header, dict) else None
    if not isinstance(inputs, list):
        raise ValueError('expected a JSON inference header {"inputs": [...]} at the start')
    total = 0
    for tensor in inputs:
        parameters = tensor.get("parameters") if isinstance(tensor, dict) else None
        size = parameters.get("binary_data_size", 0) if isinstance(parameters, dict) else 0
        if type(size) is not int or size < 0:
            raise ValueError(f'"binary_data_size" must be a non-negative integer, got {size!r}')
        total += size
    return total


def oip_binary_body(raw: bytes, where: str) -> Body:
    """An OIP binary body: the JSON inference header, then exactly the bytes its inputs'
    ``binary_data_size`` announce. The header ends where its JSON object closes."""
    try:
        # latin-1 maps each byte to one character, so the end index is the byte length;
        # UTF-8 text inside the header's strings only has bytes >= 0x80 and parses alike
        header, length = json.JSONDecoder().raw_decode(raw.decode("latin-1"))
        raw[:length].decode()
        announced = _binary_sizes(header)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(
            f"{where}: expected an OIP binary body (a JSON inference header, then the tensors' bytes): {exc}"
        ) from None
    if announced != len(raw) - length:
        raise ValueError(
            f"{where}: the header's binary_data_size add up to {announced} bytes, "
            f"{len(raw) - length} follow the {length}-byte header"
        )
    return Body(raw, {"Content-Type": "application/octet-stream", HEADER_LENGTH: str(length)})


def read_body_dir(name: str) -> tuple[Body, ...]:
    """The ``.json`` and ``.bin`` files of directory ``name``, in name order (dot files skipped)."""
    directory = Path(name)
    if not directory.is_dir():
        raise ValueError(f"--data-dir {name!r} is not a directory")
    bodies = []
    for path in sorted(p for p in directory.iterdir() if not p.name.startswith(".")):
        if path.suffix not in SUFFIXES or not path.is_file():
            raise ValueError(f"--data-dir {name!r}: expected only .json and .bin files, found {path.name!r}")
        raw = _read(str(path), "--data-dir file")
        read = json_body if path.suffix == ".json" else oip_binary_body
        bodies.append(read(raw, f"--data-dir file {path.name!r}"))
    if not bodies:
        raise ValueError(f"--data-dir {name!r} has no .json or .bin file")
    return tuple(bodies)


def read_data(data: str) -> Body:
    """``--data``: JSON text, ``@FILE`` or ``@-`` (stdin)."""
    raw = _read(data[1:], "--data file") if data.startswith("@") else data.encode()
    return json_body(raw, "--data")
