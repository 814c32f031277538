"""Carry a decision out the way an operator would: ``ansible-playbook playbooks/site.yml
-e fleet_worker_count=N``. Scale-out is then site.yml's own node creation; scale-in is
its retire play, which drains the leaving nodes in the orchestrator before removing them."""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("onnxfleet.autoscale")


@dataclass(frozen=True)
class Actuator:
    ansible_playbook: str  # the command (a recording script in tests)
    project_dir: Path  # where playbooks/site.yml is
    playbook_args: Sequence[str] = ()  # e.g. -i inventory/aws_ec2.yml -e @vars.yml
    timeout_s: float = 3600.0

    def command(self, workers: int) -> list[str]:
        # -e fleet_worker_count last: extra vars given later win
        return [
            self.ansible_playbook,
            *self.playbook_args,
            "playbooks/site.yml",
            "-e",
            f"fleet_worker_count={workers}",
        ]

    def scale(self, workers: int) -> bool:
        """True when site.yml succeeded. Its output goes to this process's stdout and stderr
        as it comes (the autoscaler's own log lines are JSON on stderr), so an operator or a
        journal sees the run as if they had started it."""
        command = self.command(workers)
        log.info("running %s", " ".join(command))
        try:
            proc = subprocess.run(command, cwd=self.project_dir, timeout=self.timeout_s, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            log.error("site.yml could not be run to completion: %s", exc)
            return False
        if proc.returncode != 0:
            log.error("site.yml failed (exit %d): its output is above", proc.returncode)
            return False
        return True
