"""state.py (a restart keeps the window), guard.py (one change of a fleet at a time) and
settings.py (fleet_autoscaling as the playbooks see it, through the real `ansible`)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from onnxfleet.autoscale import guard, state
from onnxfleet.autoscale.policy import Settings, State, Window
from onnxfleet.autoscale.settings import from_file, from_inventory
from tests.support import ROOT


def test_the_state_round_trips_through_its_file(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "autoscaler.json"
    saved = State(window=Window("in", 12.5, 3), last_action_at=7.0, last_decision={"action": "hold"})
    state.save(path, saved)
    assert state.load(path) == saved
    assert (path.parent.stat().st_mode & 0o777) == 0o700
    assert not path.with_name("autoscaler.json.tmp").exists()
    state.save(path, State())
    assert state.load(path) == State()


def test_no_state_or_a_bad_one_starts_afresh(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "autoscaler.json"
    assert state.load(path) == State()
    for bad in ("{", "[]", json.dumps({"window": {"direction": "up", "since": 1, "desired": 2},
                                       "last_action_at": None, "last_decision": None})):  # fmt: skip
        path.write_text(bad)
        assert state.load(path) == State()
    assert "unreadable" in caplog.text


def test_one_autoscaler_per_fleet(tmp_path: Path) -> None:
    busy = pytest.raises(guard.Busy, match="another autoscaler holds")
    with guard.exclusive(tmp_path), busy, guard.exclusive(tmp_path):
        pass
    with guard.exclusive(tmp_path):  # released on exit
        pass


def test_a_killed_holder_leaves_no_lock(tmp_path: Path) -> None:
    hold = (
        "import fcntl, sys, time; f = open(sys.argv[1], 'ab'); "
        "fcntl.flock(f, fcntl.LOCK_EX); print('held', flush=True); time.sleep(60)"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", hold, str(tmp_path / "autoscaler.lock")],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(guard.Busy), guard.exclusive(tmp_path):
            pass
    finally:
        holder.kill()
        holder.wait()
    with guard.exclusive(tmp_path):
        pass


def test_playbooks_are_found_by_fleet(tmp_path: Path) -> None:
    script = tmp_path / "ansible-playbook"
    script.write_text("#!/bin/sh\nsleep 60\nexit 0\n")
    script.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k != "ONNXFLEET_FLEET"}
    default = subprocess.Popen([str(script)], env=env)
    named = subprocess.Popen([str(script)], env={**env, "ONNXFLEET_FLEET": "autoscaler-unit"})
    try:
        for proc in (default, named):
            cmdline = Path(f"/proc/{proc.pid}/cmdline")
            for _ in range(100):
                if b"ansible-playbook" in cmdline.read_bytes():
                    break
                time.sleep(0.05)
        assert named.pid in guard.playbooks_running("autoscaler-unit")
        assert default.pid not in guard.playbooks_running("autoscaler-unit")
        assert default.pid in guard.playbooks_running("onnxfleet")
    finally:
        for proc in (default, named):
            proc.kill()
            proc.wait()
    assert guard.playbooks_running("autoscaler-unit") == []


def test_settings_from_a_file(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    path.write_text(json.dumps({"fleet_autoscaling": {"enabled": True, "max_workers": 3}}))
    assert from_file(path) == Settings(enabled=True, max_workers=3)
    path.write_text(json.dumps({"enabled": True}))
    assert from_file(path).enabled is True
    path.write_text("enabled: true")
    with pytest.raises(ValueError, match=r"s\.json"):
        from_file(path)


@pytest.mark.skipif(shutil.which("ansible") is None, reason="ansible is not installed (make setup)")
def test_settings_from_the_inventory_with_the_playbooks_extra_vars(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ONNXFLEET_FLEET", "autoscaler-no-such-fleet")  # no node: nothing to inspect
    assert from_inventory(ROOT, []) == Settings()  # group_vars/all.yml's: the defaults, disabled
    override = json.dumps({"fleet_autoscaling": {"enabled": True, "max_workers": 3}})
    assert from_inventory(ROOT, ["-e", override]) == Settings(enabled=True, max_workers=3)
    with pytest.raises(ValueError, match="min_workers: expected a whole number"):
        from_inventory(ROOT, ["-e", json.dumps({"fleet_autoscaling": {"min_workers": 0}})])
