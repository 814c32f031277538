"""`onnxfleet load` against a fleet behind the edge: HTTPS verified against the fleet's CA,
a bearer token from an option, a file or the environment, and refusals told apart."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from onnxfleet.load import LoadPlan, run_load
from onnxfleet.load.report import format_summary, summarize
from tests.load.load_support import LoadServer, load_cli


def test_https_verified_against_the_given_ca(server: LoadServer) -> None:
    proc = load_cli("--url", server.https_url, "--cacert", str(server.ca_file), "-n", "6", "-c", "2", "-q")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert server.paths == {"/run_model": 6}
    assert re.search(r"^requests\s+6 in [\d.]+ s with 2 concurrent: 6 succeeded, 0 failed", proc.stdout, re.M)


def test_https_without_the_ca_is_a_tls_error_with_a_hint(server: LoadServer) -> None:
    proc = load_cli("--url", server.https_url, "-n", "3", "-q")
    assert proc.returncode == 1
    assert server.arrived == 0  # nothing is sent to a server that was not verified
    assert re.search(r"^errors\s+tls x3$", proc.stdout, re.M)
    assert re.search(r"^hints\s+tls: .* pass the fleet's CA with --cacert$", proc.stdout, re.M)


def test_the_token_comes_from_the_environment_unless_a_file_is_given(
    server: LoadServer, tmp_path: Path
) -> None:
    env = {**os.environ, "ONNXFLEET_TOKEN": "from-env"}
    assert load_cli("--url", server.url, "-n", "1", "-q", env=env).returncode == 0
    assert server.last_headers["Authorization"] == "Bearer from-env"
    token = tmp_path / "token"
    token.write_text("from-file\n")
    assert load_cli("--url", server.url, "-n", "1", "-q", "--token-file", str(token), env=env).returncode == 0
    assert server.last_headers["Authorization"] == "Bearer from-file"
    assert load_cli("--url", server.url, "-n", "1", "-q", "--token", "from-option", env=env).returncode == 0
    assert server.last_headers["Authorization"] == "Bearer from-option"
    without = {k: v for k, v in os.environ.items() if k != "ONNXFLEET_TOKEN"}
    assert load_cli("--url", server.url, "-n", "1", "-q", env=without).returncode == 0
    assert "Authorization" not in server.last_headers


def test_unauthorized_and_rate_limited_answers_are_reported_apart(server: LoadServer) -> None:
    url = server.url + "/run_model?answers=401:unauthorized,429:rate_limited,429:queue_full,200,503"
    proc = load_cli("--url", url, "-n", "10", "--json", "-")
    assert proc.returncode == 1
    summary = json.loads(proc.stdout)["summary"]
    assert summary["status_codes"] == {"200": 2, "401": 2, "429": 4, "503": 2}
    assert summary["refusals"] == {
        "401 unauthorized": 2,
        "429 queue_full": 2,
        "429 rate_limited": 2,
        "503 overloaded": 2,
    }
    text = proc.stderr  # --json -: the text summary is on stderr
    assert re.search(
        r"^refusals\s+401 unauthorized x2  429 queue_full x2  429 rate_limited x2  503 overloaded x2$",
        text,
        re.M,
    )
    assert "401: the token is missing or not accepted" in text
    assert "429 rate_limited: the edge limits requests per client address" in text
    assert "429 queue_full: the orchestrator's queue is full" in text


def test_a_clean_run_has_no_refusals_line(server: LoadServer) -> None:
    proc = load_cli("--url", server.url, "-n", "2", "-q")
    assert proc.returncode == 0
    assert "refusals" not in proc.stdout
    assert "hints" not in proc.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--cacert", "/nonexistent/ca.pem"], "cannot read the CA certificate '/nonexistent/ca.pem'"),
        (["--cacert", "NOT-PEM"], "expected PEM certificates in"),
    ],
)
def test_a_bad_ca_file_is_bad_usage(
    server: LoadServer, tmp_path: Path, args: list[str], message: str
) -> None:
    if "NOT-PEM" in args:
        bogus = tmp_path / "ca.pem"
        bogus.write_text("not a certificate\n")
        args = ["--cacert", str(bogus)]
    proc = load_cli("--url", server.https_url, *args)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert server.arrived == 0


def test_a_ca_with_a_plain_http_url_is_bad_usage(server: LoadServer) -> None:
    proc = load_cli("--url", server.url, "--cacert", str(server.ca_file))
    assert proc.returncode == 2
    assert "a CA certificate is only used with an https:// URL" in proc.stderr


def test_the_api_takes_the_ca_and_keeps_the_refusal_codes(server: LoadServer) -> None:
    plan = LoadPlan(
        server.https_url + "/run_model?answers=200,401:unauthorized",
        n=4,
        cacert=str(server.ca_file),
        token="t",
    )
    results = run_load(plan)
    assert sorted((r.status, r.code) for r in results.records) == [
        (200, None),
        (200, None),
        (401, "unauthorized"),
        (401, "unauthorized"),
    ]
    assert server.last_headers["Authorization"] == "Bearer t"
    assert re.search(r"^refusals\s+401 unauthorized x2$", format_summary(summarize(results)), re.M)
