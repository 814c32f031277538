"""Never two changes of one fleet at once.

Two checks, both released by a killed process without cleanup: an exclusive ``flock`` on
``<state dir>/autoscaler.lock`` (one autoscaler per fleet; the kernel drops it when its
holder dies), and a look at the running processes for an ``ansible-playbook`` of the same
fleet (``ONNXFLEET_FLEET`` in its environment, ``onnxfleet`` without it): a site.yml,
rollout or teardown an operator runs. A lock file that site.yml would write could outlive
a killed run; a process list cannot.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

DEFAULT_FLEET = "onnxfleet"


class Busy(Exception):
    """Another change of the fleet is in progress."""


@contextmanager
def exclusive(state_dir: Path) -> Iterator[None]:
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    with (state_dir / "autoscaler.lock").open("ab") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise Busy(f"another autoscaler holds {state_dir / 'autoscaler.lock'}") from None
        yield


def _fleet_of(environ: bytes) -> str:
    for entry in environ.split(b"\0"):
        if entry.startswith(b"ONNXFLEET_FLEET="):
            return entry.partition(b"=")[2].decode(errors="replace") or DEFAULT_FLEET
    return DEFAULT_FLEET


def playbooks_running(fleet: str, proc: Path = Path("/proc")) -> list[int]:
    """The pids of the ansible-playbook processes working on ``fleet`` (those of this user:
    another user's environment cannot be read, and they cannot use this fleet's state)."""
    found = []
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            # the script itself, or the interpreter running it
            if not any(Path(arg.decode(errors="replace")).name == "ansible-playbook" for arg in argv[:2]):
                continue
            if _fleet_of((entry / "environ").read_bytes()) == fleet:
                found.append(int(entry.name))
        except OSError:
            continue  # gone meanwhile, or another user's
    return sorted(found)
