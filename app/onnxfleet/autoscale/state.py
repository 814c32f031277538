"""The policy's state in a JSON file, so a restart keeps the pending window and the last
action's time (a restarted autoscaler neither starts a delay over nor acts twice).

Default path: ``<fleet_state_dir>/autoscaler.json``, beside the fleet's SSH key and tokens
(~/.local/state/onnxfleet/<fleet>/). Written to a temporary file and renamed, so a kill
mid-write leaves the previous state.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from onnxfleet.autoscale.policy import State, Window

log = logging.getLogger("onnxfleet.autoscale")


def default_state_dir(fleet: str) -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "onnxfleet" / fleet


def to_json(state: State) -> dict[str, Any]:
    window = state.window
    return {
        "window": None
        if window is None
        else {"direction": window.direction, "since": window.since, "desired": window.desired},
        "last_action_at": state.last_action_at,
        "last_decision": state.last_decision,
    }


def from_json(raw: object) -> State:
    """Raises ValueError on anything but what ``to_json`` wrote."""
    try:
        assert isinstance(raw, dict)
        w = raw["window"]
        window = None
        if w is not None:
            assert w["direction"] in ("out", "in")
            assert isinstance(w["since"], int | float)
            assert isinstance(w["desired"], int)
            window = Window(w["direction"], float(w["since"]), w["desired"])
        last = raw["last_action_at"]
        assert last is None or isinstance(last, int | float)
        decision = raw["last_decision"]
        assert decision is None or isinstance(decision, dict)
    except (AssertionError, KeyError, TypeError) as exc:
        raise ValueError("expected {window, last_action_at, last_decision}") from exc
    return State(window=window, last_action_at=None if last is None else float(last), last_decision=decision)


def load(path: Path) -> State:
    """The saved state; a fresh one when there is none, or (logged) when it is unreadable."""
    try:
        return from_json(json.loads(path.read_text()))
    except FileNotFoundError:
        return State()
    except (OSError, ValueError) as exc:
        log.warning("autoscaler state %s is unreadable (%s): starting afresh", path, exc)
        return State()


def save(path: Path, state: State) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(to_json(state), indent=1) + "\n")
    tmp.replace(path)
