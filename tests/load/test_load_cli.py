"""`onnxfleet load` as users run it: a real subprocess against a real HTTP server."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from onnxfleet.load.sample import DIGIT_ZERO
from tests.load.load_support import LoadServer, load_cli
from tests.support import free_port


def _shares(stdout: str, label: str) -> dict[str, int]:
    """``name count share%`` rows of one block of the text summary."""
    block = re.search(rf"^{label}\s+(.*?)(?=^\S|\Z)", stdout, re.M | re.S)
    assert block, stdout
    return {name: int(count) for name, count in re.findall(r"(\S+)\s+(\d+)\s+[\d.]+%", block.group(1))}


def test_seed_experiment_matches_what_the_server_counted(server: LoadServer, tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    proc = load_cli(
        "--url", server.url + "/run_model?delay=0.05", "-n", "100", "-c", "5",
        "--json", str(out), "--json-requests",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert server.arrived == 100
    assert server.max_in_flight == 5  # K workers, never more
    assert len(server.peers) <= 5  # keep-alive: one connection per worker
    assert json.loads(server.last_body) == {"inputs": [list(DIGIT_ZERO)]}

    document = json.loads(out.read_text())
    summary = document["summary"]
    assert summary["requests"] == summary["succeeded"] == 100
    assert summary["status_codes"] == {"200": 100}
    assert summary["errors"] == {}
    assert summary["containers"] == dict(server.containers)
    assert summary["versions"] == dict(server.versions)
    assert set(summary["queue_wait_ms"]) == {"p50", "p90", "p99", "max"}
    latency = summary["latency_ms"]
    assert 50 <= latency["min"] <= latency["p50"] <= latency["p90"] <= latency["p99"] <= latency["max"]
    assert len(document["requests"]) == 100
    first = document["requests"][0]
    assert (first["status"], first["error"]) == (200, None)
    assert first["container"] in server.containers
    assert first["latency_ms"] >= 50

    assert _shares(proc.stdout, "containers") == dict(server.containers)
    assert _shares(proc.stdout, "model versions") == dict(server.versions)
    assert re.search(
        r"^requests\s+100 in [\d.]+ s with 5 concurrent: 100 succeeded, 0 failed", proc.stdout, re.M
    )
    assert re.search(
        r"^latency ms\s+min [\d.]+\s+mean [\d.]+\s+p50 [\d.]+\s+p90 [\d.]+\s+p99", proc.stdout, re.M
    )


def test_bare_url_posts_to_run_model(server: LoadServer) -> None:
    proc = load_cli("--url", server.url, "-n", "3", "-q")
    assert proc.returncode == 0, proc.stderr
    assert server.paths == {"/run_model": 3}
    assert proc.stderr == ""  # --quiet: no progress


def test_failed_requests_are_counted_and_exit_1(server: LoadServer) -> None:
    proc = load_cli("--url", server.url + "/run_model?fail_every=4", "-n", "40", "-c", "4", "--json", "-")
    assert proc.returncode == 1
    summary = json.loads(proc.stdout)["summary"]  # --json -: stdout is only the JSON document
    assert server.statuses == {200: 30, 503: 10}
    assert summary["status_codes"] == {"200": 30, "503": 10}
    assert (summary["succeeded"], summary["failed"]) == (30, 10)
    assert re.search(r"^status codes\s+200 x30\s+503 x10$", proc.stderr, re.M)


def test_connection_refused_is_an_error_kind(server: LoadServer) -> None:
    proc = load_cli("--url", f"http://127.0.0.1:{free_port()}", "-n", "7", "-c", "2")
    assert proc.returncode == 1
    assert re.search(r"^errors\s+connect_refused x7$", proc.stdout, re.M)
    assert re.search(r"^status codes\s+none$", proc.stdout, re.M)


def test_duration_ends_an_unlimited_run(server: LoadServer, tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    # A run that never ends raises TimeoutExpired; the wall time is not bounded tighter
    # because a loaded CI machine took 11.5 s just to start and stop the interpreter.
    proc = load_cli(
        "--url", server.url + "/run_model?delay=0.02", "-n", "0", "--duration", "2.5", "-c", "2",
        "--json", str(out), timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(out.read_text())["summary"]
    assert 2.5 <= summary["duration_s"] < 4  # in-flight requests finish after the deadline
    assert summary["requests"] == server.arrived > 20
    # stderr is a pipe: plain progress lines instead of a bar
    assert re.search(r"^onnxfleet load: \d+ requests\s+[\d.]+ req/s\s+0 failed", proc.stderr, re.M)
    assert "\r" not in proc.stderr


def test_count_ends_the_run_before_its_duration(server: LoadServer) -> None:
    started = time.monotonic()
    proc = load_cli("--url", server.url, "-n", "5", "--duration", "60", "-q")
    assert proc.returncode == 0, proc.stderr
    assert time.monotonic() - started < 20
    assert server.arrived == 5


def test_body_headers_token_and_url_path(server: LoadServer, tmp_path: Path) -> None:
    body = tmp_path / "body.json"
    body.write_text('{"inputs": [[1, 2, 3]]}')
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    proc = load_cli(
        "--url", server.url + "/v2/models/digits/infer", "-n", "3", "--data", f"@{body}",
        "-H", "X-Trace: abc:1", "--token-file", str(token), "-q",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert server.paths == {"/v2/models/digits/infer": 3}
    assert server.last_body == body.read_bytes()
    assert server.last_headers["X-Trace"] == "abc:1"
    assert server.last_headers["Authorization"] == "Bearer s3cret"
    assert server.last_headers["Content-Type"] == "application/json"


def test_progress_bar_on_a_terminal(server: LoadServer) -> None:
    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "onnxfleet",
            "load",
            "--url",
            server.url + "/run_model?delay=0.05",
            "-n",
            "20",
        ],
        stdout=subprocess.PIPE,
        stderr=follower,
    )
    os.close(follower)
    seen = b""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if select.select([leader], [], [], 0.2)[0]:
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            seen += chunk
        elif proc.poll() is not None:
            break
    os.close(leader)
    assert proc.wait(10) == 0
    text = seen.decode()
    assert re.search(r"\r\[#{30}\] 100%\s+20/20 requests", text), text
    assert re.search(r"\r\[[#.]{30}\]\s+\d+%", text)


def test_histogram_png(server: LoadServer, tmp_path: Path) -> None:
    png = tmp_path / "latency.png"
    proc = load_cli("--url", server.url, "-n", "30", "-c", "3", "--histogram", str(png), "-q")
    assert proc.returncode == 0, proc.stderr
    from matplotlib.image import imread

    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    height, width = imread(str(png)).shape[:2]
    assert (width, height) == (800, 450)


def test_histogram_without_matplotlib_fails_before_sending(server: LoadServer, tmp_path: Path) -> None:
    blocker = tmp_path / "blocked" / "matplotlib"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('matplotlib is not installed')\n")
    env = {**os.environ, "PYTHONPATH": str(blocker.parent)}
    proc = load_cli("--url", server.url, "-n", "5", "--histogram", str(tmp_path / "h.png"), env=env)
    assert proc.returncode == 2
    assert "--histogram needs matplotlib: pip install 'onnxfleet[plot]'" in proc.stderr
    assert server.arrived == 0


def test_interrupt_prints_the_summary_of_every_request(server: LoadServer, tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "onnxfleet", "load", "--url", server.url + "/run_model?delay=0.1",
         "-n", "0", "--duration", "60", "-c", "3", "-q", "--json", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 20
    while server.arrived < 10 and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=20)
    assert proc.returncode == 130, stderr
    assert "(interrupted)" in stdout
    summary = json.loads(out.read_text())["summary"]
    assert summary["interrupted"] is True
    # requests in flight at the interrupt finished and were counted
    assert summary["requests"] == summary["succeeded"] == server.arrived >= 10


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--url", "ftp://127.0.0.1/"], "expected an http:// or https:// URL"),
        (["--url", "127.0.0.1:8080"], "expected an http:// or https:// URL"),
        (["--url", "http://"], "expected a host"),
        (["--url", "http://127.0.0.1:99999"], "expected a numeric port"),
        (["--data", "@/nonexistent/body.json"], "cannot read --data file '/nonexistent/body.json'"),
        (["--data", '{"inputs": [[1, 2'], "--data must be JSON"),
        (["-c", "0"], "the concurrency must be 1 or more"),
        (["-n", "0"], "-n 0 (unlimited) needs --duration"),
        (["-n", "-3"], "the request count must be 0 (unlimited) or more"),
        (["--duration", "-1"], "the duration must be a positive number"),
        (["--timeout", "0"], "the timeout must be a positive number"),
        (["-H", "no-colon"], "--header expects NAME:VALUE"),
        (["-H", "bad name: x"], "--header expects NAME:VALUE"),
        (["--json-requests"], "--json-requests needs --json FILE"),
        (["--json", "/nonexistent/dir/out.json"], "--json: no directory"),
        (["--token-file", "/nonexistent/token"], "cannot read --token-file"),
        (["-c", "many"], "invalid int value: 'many'"),
    ],
)
def test_bad_usage_exits_2(server: LoadServer, args: list[str], message: str) -> None:
    url_given = "--url" in args
    proc = load_cli(*([] if url_given else ["--url", server.url]), *args)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert proc.stdout == ""
    assert server.arrived == 0
