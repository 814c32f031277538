"""The orchestrator's command line: its defaults are the settings' own, bad numbers are
refused by the parser naming the flag, and no test double ships in the package."""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

import pytest

from onnxfleet import cli as onnxfleet_cli
from onnxfleet.orchestrator import cli
from onnxfleet.orchestrator.limits import Limits
from onnxfleet.orchestrator.settings import HealthSpec, Settings


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="onnxfleet orchestrator")
    cli.configure(p)
    return p


def routes(tmp_path: Path) -> str:
    path = tmp_path / "routes.json"
    path.write_text(json.dumps({"containers": [{"name": "a/0", "url": "http://127.0.0.1:1", "node": "a"}]}))
    return str(path)


def test_the_command_line_defaults_are_the_settings_and_limits_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ONNXFLEET_API_TOKEN", raising=False)
    monkeypatch.delenv("ONNXFLEET_ADMIN_TOKEN", raising=False)
    settings, limits, _ = cli.load(parser().parse_args(["--routes", routes(tmp_path)]))
    expected = Settings(routes_path=str(Path(routes(tmp_path)).resolve()))
    assert settings == expected
    assert settings.health_defaults == HealthSpec()
    assert limits == Limits()


@pytest.mark.parametrize(
    ("flag", "value", "expected"),
    [
        ("--upstream-timeout", "0", "expected a value > 0, got 0.0"),
        ("--job-ttl", "-1", "expected a value > 0, got -1.0"),
        ("--health-interval", "nan", "expected a value > 0, got nan"),
        ("--max-jobs", "0", "expected a value > 0, got 0"),
        ("--max-connections", "0", "expected a value > 0, got 0"),
        ("--keep-alive", "0", "expected a value > 0, got 0.0"),
        ("--health-rise", "0", "expected a value > 0, got 0"),
        ("--retries", "-1", "expected a value >= 0, got -1"),
        ("--max-jobs", "many", "invalid int value: 'many'"),
    ],
)
def test_a_bad_number_is_refused_by_the_parser_naming_the_flag(
    flag: str, value: str, expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as stopped:
        parser().parse_args(["--routes", "routes.json", flag, value])
    assert stopped.value.code == 2
    assert f"argument {flag}: {expected}" in capsys.readouterr().err


def test_zero_retries_is_allowed() -> None:
    assert parser().parse_args(["--routes", "r.json", "--retries", "0"]).retries == 0


def test_the_package_ships_no_test_double() -> None:
    assert importlib.util.find_spec("onnxfleet.simbackend") is None
    assert "sim-backend" not in onnxfleet_cli.COMMANDS
    assert importlib.util.find_spec("tests.simbackend") is not None
