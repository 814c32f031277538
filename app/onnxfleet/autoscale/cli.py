"""`onnxfleet autoscale`: every --interval seconds, read the orchestrator's /status, decide
the worker node count (policy.py), and carry it out through site.yml (actuator.py), unless
another change of the fleet is in progress (guard.py). Each decision is a log line and is
reported to the orchestrator (/status, /metrics, the dashboard)."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from onnxfleet.autoscale.actuator import Actuator
    from onnxfleet.autoscale.client import Orchestrator
    from onnxfleet.autoscale.policy import Settings

log = logging.getLogger("onnxfleet.autoscale")


def configure(parser: argparse.ArgumentParser) -> None:
    fleet = os.environ.get("ONNXFLEET_FLEET") or "onnxfleet"
    parser.add_argument(
        "--fleet", default=fleet, help="the fleet's name (default $ONNXFLEET_FLEET or onnxfleet)"
    )
    parser.add_argument(
        "--url", default="http://127.0.0.1:9000",
        help="the orchestrator's admin listener (default: an SSH tunnel's end, docs/operations.md)",
    )  # fmt: skip
    parser.add_argument(
        "--token-file", type=Path, help="the token sent to the orchestrator (its admin token)"
    )
    parser.add_argument("--cacert", help="CA bundle for an https --url")
    parser.add_argument("--state-dir", type=Path, help="default ~/.local/state/onnxfleet/<fleet>")
    parser.add_argument(
        "--settings", type=Path, help="a JSON file with fleet_autoscaling (default: the inventory's)"
    )
    parser.add_argument("--project-dir", type=Path, default=Path.cwd(), help="where playbooks/site.yml is")
    parser.add_argument(
        "--ansible-playbook", default="ansible-playbook", help="the command site.yml runs with"
    )
    parser.add_argument(
        "--playbook-arg", action="append", default=[], metavar="ARG",
        help="an argument for ansible and ansible-playbook (repeat): -i inventory/aws_ec2.yml, -e @vars.yml",
    )  # fmt: skip
    parser.add_argument("--interval", type=float, default=15.0, help="seconds between decisions (default 15)")
    parser.add_argument("--once", action="store_true", help="decide (and act) once, then exit")
    parser.add_argument("--dry-run", action="store_true", help="say what it would do; change nothing")
    parser.add_argument("--log-level", default="INFO")


def run(args: argparse.Namespace) -> int:
    from onnxfleet import logs
    from onnxfleet.autoscale import settings as settings_source
    from onnxfleet.autoscale.actuator import Actuator
    from onnxfleet.autoscale.client import Orchestrator
    from onnxfleet.autoscale.state import default_state_dir

    logs.configure("autoscaler", args.log_level)
    if args.interval <= 0:
        log.error("--interval: expected a positive number of seconds")
        return 2
    try:
        settings = (
            settings_source.from_file(args.settings)
            if args.settings
            else settings_source.from_inventory(args.project_dir, args.playbook_arg)
        )
        token = args.token_file.read_text().strip() if args.token_file else None
    except (ValueError, OSError) as exc:
        log.error("%s", exc)
        return 2
    tick = Tick(
        settings=settings,
        fleet=args.fleet,
        state_dir=args.state_dir or default_state_dir(args.fleet),
        orchestrator=Orchestrator(args.url, token, args.cacert),
        actuator=Actuator(args.ansible_playbook, args.project_dir, tuple(args.playbook_arg)),
        dry_run=args.dry_run,
    )
    if args.once:
        return tick.run()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_signal: stop.set())
    log.info("autoscaling fleet %s every %gs", args.fleet, args.interval, extra={"settings": vars(settings)})
    while not stop.is_set():
        tick.run()
        stop.wait(args.interval)
    return 0


@dataclass(frozen=True)
class Tick:
    """One decision: read, decide, act (or say it would), record."""

    settings: Settings
    fleet: str
    state_dir: Path
    orchestrator: Orchestrator
    actuator: Actuator
    dry_run: bool

    def run(self) -> int:
        """0 when it decided (a hold included), 1 when it could not read the fleet or act."""
        from onnxfleet.autoscale import guard

        try:
            with guard.exclusive(self.state_dir):
                return self._locked()
        except guard.Busy as exc:
            log.info("autoscaler: hold: %s", exc)
            return 0

    def _locked(self) -> int:
        from onnxfleet.autoscale import guard, state
        from onnxfleet.autoscale.client import Unreachable
        from onnxfleet.autoscale.policy import Decision, Sample, State, decide, desired_workers

        path = self.state_dir / "autoscaler.json"
        before = state.load(path)
        try:
            sample = Sample.from_status(self.orchestrator.status())
        except (Unreachable, ValueError) as exc:
            log.error("autoscaler: cannot read the fleet: %s", exc)
            return 1
        running = guard.playbooks_running(self.fleet)
        if running:
            # the fleet is being changed: what /status says now is a passing state, so the
            # window starts over once the playbook is done
            reason = f"ansible-playbook running on fleet {self.fleet} (pid {running})"
            wanted = desired_workers(self.settings, sample)
            decision = Decision("hold", sample.nodes, wanted, sample.nodes, reason, None)
            after = State(window=None, last_action_at=before.last_action_at)
        else:
            decision, after = decide(self.settings, before, sample, time.time())
        record = {**decision.as_dict(), "dry_run": self.dry_run}
        arrow = f"{decision.current} → {decision.target}"
        ok = True
        if decision.action == "hold":
            log.info(
                "autoscaler: hold at %d: %s", decision.current, decision.reason, extra={"decision": record}
            )
        elif self.dry_run:
            log.info(
                "autoscaler: would scale %s because %s (dry run)",
                arrow,
                decision.reason,
                extra={"decision": record},
            )
            # nothing was done: the window goes on, so the next tick says it again
            after = State(window=before.window, last_action_at=before.last_action_at, last_decision=record)
        else:
            log.info("autoscaler: scaling %s because %s", arrow, decision.reason, extra={"decision": record})
            ok = self.actuator.scale(decision.target)
            record["succeeded"] = ok
        state.save(path, replace(after, last_decision=record))
        try:
            self.orchestrator.report({k: v for k, v in record.items() if k in _REPORTED})
        except Unreachable as exc:
            log.warning("autoscaler: the decision could not be reported to the orchestrator: %s", exc)
        return 0 if ok else 1


_REPORTED = ("action", "current", "desired", "target", "reason", "dry_run")
