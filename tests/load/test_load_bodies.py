"""What `onnxfleet load` sends: bodies from a JSON lines file or a directory (JSON and OIP
binary, cycled), any method, extra headers; the binary bodies against a real worker."""

from __future__ import annotations

import json
import re
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as triton

from onnxfleet.load.sample import DIGIT_ZERO
from tests.load.load_support import LoadServer, load_cli
from tests.support import Service
from tests.worker.worker_support import DIGITS, metric, worker

INFER = "/v2/models/digits/infer"


def oip_binary(rows: int, first: float = 0.0) -> tuple[bytes, int]:
    """An OIP request with ``rows`` digits images as binary data, as tritonclient makes it:
    the body and the length of its JSON header."""
    tensor = triton.InferInput("input", [rows, 64], "FP32")
    tensor.set_data_from_numpy(np.full((rows, 64), first, dtype=np.float32), binary_data=True)
    outputs = [triton.InferRequestedOutput("label", binary_data=False)]
    body, header_length = triton.InferenceServerClient.generate_request_body([tensor], outputs=outputs)
    return body, header_length


@pytest.fixture(scope="module")
def digits_worker() -> Iterator[Service]:
    with worker(DIGITS, "--intra-op-threads", "1", container="load-digits") as service:
        yield service


def test_json_lines_are_cycled_in_order(server: LoadServer, tmp_path: Path) -> None:
    lines = [{"inputs": [[float(i)] * 64]} for i in range(3)]
    bodies = tmp_path / "bodies.jsonl"
    bodies.write_text(
        "\n".join(json.dumps(line) for line in lines[:2]) + "\n\n" + json.dumps(lines[2]) + "\n"
    )
    proc = load_cli("--url", server.url, "--data-lines", str(bodies), "-n", "7", "-q")
    assert proc.returncode == 0, proc.stderr
    assert [json.loads(body) for _, body, _ in server.seen] == [lines[i % 3] for i in range(7)]
    assert {headers["Content-Type"] for _, _, headers in server.seen} == {"application/json"}
    assert re.search(r"^target\s+POST http://\S+/run_model  \(3 bodies, cycled\)$", proc.stdout, re.M)


def test_json_lines_from_stdin_with_concurrency_send_each_body(server: LoadServer) -> None:
    lines = [json.dumps({"n": i}) for i in range(5)]
    proc = load_cli(
        "--url", server.url, "--data-lines", "-", "-n", "20", "-c", "4", "-q", input="\n".join(lines)
    )
    assert proc.returncode == 0, proc.stderr
    sent = sorted(body.decode() for _, body, _ in server.seen)
    assert sent == sorted(lines * 4)


def test_a_directory_of_json_and_oip_binary_bodies(server: LoadServer, tmp_path: Path) -> None:
    """Name order; a .bin body goes with its Inference-Header-Content-Length, found where
    its JSON header closes, and is sent byte for byte."""
    one, one_header = oip_binary(1)
    three, three_header = oip_binary(3, 2.0)
    (tmp_path / "b-one.bin").write_bytes(one)
    (tmp_path / "a.json").write_text('{"inputs": [[1, 2, 3]]}')
    (tmp_path / "c-three.bin").write_bytes(three)
    (tmp_path / ".hidden").write_text("not a body")
    proc = load_cli("--url", server.url + INFER, "--data-dir", str(tmp_path), "-n", "6", "-q", "--json", "-")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["summary"]["planned"]["bodies"] == 3
    expected = [(b'{"inputs": [[1, 2, 3]]}', None), (one, str(one_header)), (three, str(three_header))]
    seen = [(body, headers.get("Inference-Header-Content-Length")) for _, body, headers in server.seen]
    assert seen == expected * 2
    assert [headers["Content-Type"] for _, _, headers in server.seen[:3]] == [
        "application/json",
        "application/octet-stream",
        "application/octet-stream",
    ]


def test_oip_binary_bodies_are_answered_by_a_real_worker(digits_worker: Service, tmp_path: Path) -> None:
    """A binary body of 1 image, one of 3 and a JSON OIP body of 2, cycled twice: the
    worker answers all and counts 12 rows in 6 inferences."""
    (tmp_path / "1.bin").write_bytes(oip_binary(1)[0])
    (tmp_path / "2.json").write_text(
        json.dumps(
            {
                "inputs": [
                    {"name": "input", "shape": [2, 64], "datatype": "FP32", "data": list(DIGIT_ZERO) * 2}
                ]
            }
        )
    )
    (tmp_path / "3.bin").write_bytes(oip_binary(3, 16.0)[0])
    proc = load_cli(
        "--url", digits_worker.url + INFER, "--data-dir", str(tmp_path), "-n", "6", "-c", "2", "-q"
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert re.search(r"^status codes\s+200 x6$", proc.stdout, re.M), proc.stdout
    with urllib.request.urlopen(digits_worker.url + "/metrics", timeout=10) as response:
        text = response.read().decode()
    assert metric(text, "onnxfleet_worker_batch_size_count") == 6
    assert metric(text, "onnxfleet_worker_batch_size_sum") == 12


@pytest.mark.parametrize("method", ["PUT", "PATCH", "DELETE"])
def test_any_method_with_a_body(server: LoadServer, method: str) -> None:
    proc = load_cli("--url", server.url + "/things/1", "-X", method, "--data", '{"a": 1}', "-n", "2", "-q")
    assert proc.returncode == 0, proc.stderr
    assert [(m, b) for m, b, _ in server.seen] == [(method, b'{"a": 1}')] * 2
    assert re.search(rf"^target\s+{method} http://\S+/things/1$", proc.stdout, re.M)


def test_get_sends_no_default_body_and_the_extra_headers(server: LoadServer, tmp_path: Path) -> None:
    out = tmp_path / "get.json"
    proc = load_cli(
        "--url", server.url + "/healthz", "--method", "GET", "-n", "3",
        "-H", "X-Trace: t-1", "-H", "Accept: application/json", "-q", "--json", str(out),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert [(m, b) for m, b, _ in server.seen] == [("GET", b"")] * 3
    headers = server.seen[0][2]
    assert (headers["X-Trace"], headers["Accept"]) == ("t-1", "application/json")
    assert "Content-Type" not in headers
    planned = json.loads(out.read_text())["summary"]["planned"]
    assert (planned["method"], planned["bodies"]) == ("GET", 1)


def test_extra_headers_win_over_a_body_s_own(server: LoadServer, tmp_path: Path) -> None:
    """-H replaces the Content-Type a body file implies; its header length stays."""
    body, header_length = oip_binary(1)
    (tmp_path / "x.bin").write_bytes(body)
    proc = load_cli(
        "--url", server.url + INFER, "--data-dir", str(tmp_path), "-n", "1", "-q",
        "-H", "Content-Type: application/vnd.test", "-H", "X-Api-Key: k",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    headers = server.seen[0][2]
    assert headers["Content-Type"] == "application/vnd.test"
    assert headers["Inference-Header-Content-Length"] == str(header_length)
    assert headers["X-Api-Key"] == "k"


def _bad_bin(path: Path) -> None:
    body, _ = oip_binary(1)
    (path / "short.bin").write_bytes(body[:-4])


def _bin_with_space(path: Path) -> None:
    body, length = oip_binary(1)
    (path / "space.bin").write_bytes(body[:length] + b" " + body[length:])


@pytest.mark.parametrize(
    ("files", "option", "message"),
    [
        ({"b.jsonl": '{"a": 1}\n{"a": \n'}, "--data-lines", "line 2 must be JSON"),
        ({"b.jsonl": "\n\n"}, "--data-lines", "has no body: expected one JSON document per line"),
        ({"b.bin": "{}"}, "--data-dir", "expected an OIP binary body"),
        ({"b.bin": 'x{"inputs": []}'}, "--data-dir", "expected an OIP binary body"),
        ({"b.txt": "{}"}, "--data-dir", "expected only .json and .bin files, found 'b.txt'"),
        ({"b.json": "{"}, "--data-dir", "--data-dir file 'b.json' must be JSON"),
        ({}, "--data-dir", "has no .json or .bin file"),
        (_bad_bin, "--data-dir", "binary_data_size add up to 256 bytes, 252 follow the"),
        (_bin_with_space, "--data-dir", "binary_data_size add up to 256 bytes, 257 follow the"),
    ],
)
def test_bad_body_files_exit_2_before_sending(
    server: LoadServer, tmp_path: Path, files: object, option: str, message: str
) -> None:
    if callable(files):
        files(tmp_path)
    else:
        assert isinstance(files, dict)
        for name, text in files.items():
            (tmp_path / name).write_text(text)
    target = str(tmp_path / "b.jsonl") if option == "--data-lines" else str(tmp_path)
    proc = load_cli("--url", server.url, option, target, "-n", "1")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert message in proc.stderr
    assert server.arrived == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--data-dir", "/nonexistent"], "--data-dir '/nonexistent' is not a directory"),
        (["--data-lines", "/nonexistent.jsonl"], "cannot read --data-lines '/nonexistent.jsonl'"),
        (["--data", "{}", "--data-lines", "x"], "not allowed with argument --data"),
        (["-X", "GE T"], "expected an HTTP method"),
        (["-X", ""], "expected an HTTP method"),
    ],
)
def test_bad_method_and_body_options_exit_2(server: LoadServer, args: list[str], message: str) -> None:
    proc = load_cli("--url", server.url, "-n", "1", *args)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert server.arrived == 0
