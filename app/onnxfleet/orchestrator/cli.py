"""`onnxfleet orchestrator`: the fleet's front door (one FIFO queue, per-container slots)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from onnxfleet.orchestrator.app import Settings
    from onnxfleet.orchestrator.routes import HealthSpec, RoutingTable
    from onnxfleet.orchestrator.server import Limits

DEFAULT_BIND = "0.0.0.0:8000"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--routes", required=True, metavar="FILE", help="routing table (JSON)")
    parser.add_argument("--bind", default=DEFAULT_BIND, metavar="HOST:PORT", help="default: %(default)s")
    parser.add_argument(
        "--admin-token-file",
        metavar="FILE",
        help="bearer token for /admin/* (default: $ONNXFLEET_ADMIN_TOKEN; none: admin is open)",
    )
    parser.add_argument(
        "--api-token-file",
        metavar="FILE",
        help="bearer token for inference and /jobs (default: $ONNXFLEET_API_TOKEN; none: open)",
    )
    parser.add_argument(
        "--upstream-timeout",
        type=float,
        default=60.0,
        metavar="S",
        help="seconds a container may take to answer before 504 (default: %(default)s)",
    )
    parser.add_argument(
        "--retries",
        type=int,
        default=2,
        help="re-sends to another container of a request that got no answer byte (default: %(default)s)",
    )
    parser.add_argument(
        "--job-ttl",
        type=float,
        default=300.0,
        metavar="S",
        help="seconds the results of /jobs are kept (default: %(default)s)",
    )
    parser.add_argument(
        "--max-jobs", type=int, default=1000, help="jobs stored at most (default: %(default)s)"
    )
    parser.add_argument(
        "--max-body-bytes",
        type=int,
        default=8 * 1024 * 1024,
        help="request body limit (default: %(default)s)",
    )
    parser.add_argument(
        "--health-interval", type=float, default=1.0, metavar="S", help="default: %(default)s"
    )
    parser.add_argument("--health-timeout", type=float, default=1.0, metavar="S", help="default: %(default)s")
    parser.add_argument(
        "--health-fall", type=int, default=2, help="failed checks to mark down (default: %(default)s)"
    )
    parser.add_argument(
        "--health-rise", type=int, default=2, help="passed checks to mark up (default: %(default)s)"
    )
    parser.add_argument(
        "--no-access-log", dest="access_log", action="store_false", help="no JSON line per request"
    )
    parser.add_argument("--log-level", default="info", help="default: %(default)s")


def _token(path: str | None, env: str) -> str | None:
    if path:
        token = Path(path).read_text(encoding="utf-8").strip()
        if not token:
            raise ValueError(f"{path}: the token file is empty")
        return token
    return os.environ.get(env) or None


def _positive(name: str, value: float) -> None:
    if not value > 0:
        raise ValueError(f"{name}: expected a value > 0, got {value}")


class _Table:
    """The routing table the next worker starts with: read again by the arbiter on SIGHUP."""

    def __init__(self, path: str, health: HealthSpec, table: RoutingTable) -> None:
        self.path, self.health, self.table = path, health, table

    def reload(self, _arbiter: Any) -> None:
        from onnxfleet.orchestrator.routes import RoutesError, load_table

        try:
            self.table = load_table(self.path, self.health)
        except RoutesError as exc:
            logging.getLogger("onnxfleet.orchestrator").error(
                "reload refused, the new worker keeps the current routing table: %s", exc
            )


def load(args: argparse.Namespace) -> tuple[Settings, Limits, _Table]:
    """What the command line asks for, checked (raises RoutesError, ValueError, OSError)."""
    from onnxfleet.orchestrator.app import Settings
    from onnxfleet.orchestrator.routes import HealthSpec, load_table
    from onnxfleet.orchestrator.server import Limits

    for name in ("--upstream-timeout", "--job-ttl", "--health-interval", "--health-timeout"):
        _positive(name, getattr(args, name[2:].replace("-", "_")))
    for name in ("--max-jobs", "--max-body-bytes", "--health-fall", "--health-rise"):
        _positive(name, getattr(args, name[2:].replace("-", "_")))
    if args.retries < 0:
        raise ValueError(f"--retries: expected a value >= 0, got {args.retries}")
    health = HealthSpec(
        interval_s=args.health_interval,
        timeout_s=args.health_timeout,
        fall=args.health_fall,
        rise=args.health_rise,
    )
    routes_path = str(Path(args.routes).resolve())
    table = _Table(routes_path, health, load_table(routes_path, health))
    settings = Settings(
        routes_path=routes_path,
        admin_token=_token(args.admin_token_file, "ONNXFLEET_ADMIN_TOKEN"),
        api_token=_token(args.api_token_file, "ONNXFLEET_API_TOKEN"),
        upstream_timeout_s=args.upstream_timeout,
        retries=args.retries,
        job_ttl_s=args.job_ttl,
        max_jobs=args.max_jobs,
        max_body_bytes=args.max_body_bytes,
        health_defaults=health,
        access_log=args.access_log,
    )
    return settings, Limits(max_body_bytes=args.max_body_bytes), table


def run(args: argparse.Namespace) -> int:
    from onnxfleet import logs
    from onnxfleet.gunicorn_app import serve
    from onnxfleet.orchestrator.routes import RoutesError

    logs.configure("orchestrator", args.log_level)
    try:
        settings, limits, table = load(args)
    except (RoutesError, ValueError, OSError) as exc:
        print(f"onnxfleet orchestrator: {exc}", file=sys.stderr)
        return 2

    from onnxfleet.orchestrator.service import Service

    if settings.admin_token is None:
        logging.getLogger("onnxfleet.orchestrator").warning(
            "no admin token (--admin-token-file, $ONNXFLEET_ADMIN_TOKEN): /admin/* is open to anyone "
            "who reaches this port"
        )
    serve(
        lambda: Service(settings, table.table, limits),
        {
            "bind": args.bind,
            # One process: the queue and the slot table are in-memory state (see
            # docs/orchestrator.md); several processes would each admit a request to the
            # same container.
            "workers": 1,
            "worker_class": "onnxfleet.orchestrator.worker.OrchestratorWorker",
            "graceful_timeout": 15,
            "timeout": 30,
            "on_reload": table.reload,
        },
    )
    return 0
