"""The JSON line every service writes (onnxfleet.logs): its fields, and its time stamp, which
the formatter computes once a second and must still give each record its own."""

from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import Iterator

import pytest

from onnxfleet import logs


def record(created: float, **extra: object) -> logging.LogRecord:
    entry = logging.makeLogRecord({"name": "onnxfleet.t", "levelno": 20, "levelname": "INFO", "msg": "m %d"})
    entry.args = (7,)
    entry.created = created
    entry.msecs = int((created - int(created)) * 1000)
    entry.__dict__.update(extra)
    return entry


def expected_stamp(created: float) -> str:
    return (
        time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(int(created))) + f".{int((created % 1) * 1000):03d}Z"
    )


def test_each_record_gets_its_own_time_across_seconds() -> None:
    formatter = logs.JsonFormatter("svc")
    base = 1_800_000_000.0
    moments = [base + 0.123, base + 0.999, base + 1.5, base + 0.25, base + 61.001, base + 3600.0]
    stamps = [json.loads(formatter.format(record(t)))["ts"] for t in moments]
    assert stamps == [expected_stamp(t) for t in moments]


def test_the_line_has_the_extra_fields_and_none_of_the_record_s_own() -> None:
    line = json.loads(logs.JsonFormatter("svc").format(record(1_800_000_000.5, request_id="r1", status=200)))
    assert line == {
        "ts": expected_stamp(1_800_000_000.5),
        "level": "info",
        "service": "svc",
        "logger": "onnxfleet.t",
        "msg": "m 7",
        "request_id": "r1",
        "status": 200,
    }


@pytest.fixture
def configured() -> Iterator[io.StringIO]:
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    logs.configure("svc")
    stream = io.StringIO()
    handler = root.handlers[0]
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(stream)
    yield stream
    root.handlers[:], root.level = saved


def test_configured_lines_from_a_logger_and_an_exception(configured: io.StringIO) -> None:
    logging.getLogger("onnxfleet.access").info("%s %d", "POST", 200, extra={"request_id": "abc"})
    try:
        raise ValueError("bad")
    except ValueError:
        logging.getLogger("onnxfleet.x").exception("failed")
    first, second = (json.loads(line) for line in configured.getvalue().splitlines())
    assert (first["msg"], first["request_id"], first["logger"]) == ("POST 200", "abc", "onnxfleet.access")
    assert (second["level"], second["msg"]) == ("error", "failed")
    assert "ValueError: bad" in second["exc"]
