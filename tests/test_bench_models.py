"""bench/models.py runs end to end, tiny: real workers, orchestrators and wrk on loopback,
and every model of both set-ups gets answers (figures printed, no errors)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import ROOT

pytestmark = pytest.mark.slow


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is missing (make setup installs it)")
def test_bench_models_prints_figures_for_each_model(tmp_path: Path) -> None:
    rows_file = tmp_path / "rows.json"
    command = [sys.executable, "-m", "bench.models", "--duration", "0.5", "--rounds", "1", "--warm-up", "0.2"]
    done = subprocess.run(
        [*command, "--clients", "6", "--json", str(rows_file)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    rows = {(r["setup"], r["model"]): r for r in json.loads(rows_file.read_text())}
    expected = {
        ("A", "digits"),
        ("A", "total"),
        ("B", "digits"),
        ("B", "iris"),
        ("B", "credit"),
        ("B", "total"),
    }
    assert set(rows) == expected
    for key, row in rows.items():
        assert row["requests"] > 0, key
        assert row["errors"] == 0, key
        assert row["rps"] > 0, key
    assert rows[("A", "digits")]["clients"] == 6
    assert [rows[("B", m)]["clients"] for m in ("digits", "iris", "credit")] == [2, 2, 2]
    assert rows[("B", "total")]["requests"] == sum(
        rows[("B", m)]["requests"] for m in ("digits", "iris", "credit")
    )
    printed = [line.split() for line in done.stdout.splitlines()]
    for setup, model in expected:
        line = next(fields for fields in printed if fields[:2] == [setup, model])
        assert int(line[3]) == rows[(setup, model)]["requests"]
        assert line[-1] == "0", line
