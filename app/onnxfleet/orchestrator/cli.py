"""`onnxfleet orchestrator`: the fleet's front door (one FIFO queue, per-container slots)."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

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


def run(args: argparse.Namespace) -> int:
    from onnxfleet import logs
    from onnxfleet.gunicorn_app import serve
    from onnxfleet.orchestrator.routes import HealthSpec, RoutesError, load_table

    logs.configure("orchestrator", args.log_level)
    try:
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
        table = load_table(args.routes, health)
        admin_token = _token(args.admin_token_file, "ONNXFLEET_ADMIN_TOKEN")
        api_token = _token(args.api_token_file, "ONNXFLEET_API_TOKEN")
    except (RoutesError, ValueError, OSError) as exc:
        print(f"onnxfleet orchestrator: {exc}", file=sys.stderr)
        return 2

    from onnxfleet.orchestrator.app import Settings, build_app

    if admin_token is None:
        logging.getLogger("onnxfleet.orchestrator").warning(
            "no admin token (--admin-token-file, $ONNXFLEET_ADMIN_TOKEN): /admin/* is open to anyone "
            "who reaches this port"
        )

    settings = Settings(
        routes_path=str(Path(args.routes).resolve()),
        admin_token=admin_token,
        api_token=api_token,
        upstream_timeout_s=args.upstream_timeout,
        retries=args.retries,
        job_ttl_s=args.job_ttl,
        max_jobs=args.max_jobs,
        max_body_bytes=args.max_body_bytes,
        health_defaults=health,
        access_log=args.access_log,
    )

    serve(
        lambda: build_app(settings, table),
        {
            "bind": args.bind,
            # One process: the queue and the slot table are in-memory state (see
            # docs/orchestrator.md); several processes would each admit a request to the
            # same container.
            "workers": 1,
            "worker_class": "onnxfleet.orchestrator.worker.OrchestratorWorker",
            "graceful_timeout": 15,
            "timeout": 30,
            "when_ready": _forward_hup,
        },
    )
    return 0


def _forward_hup(server: Any) -> None:
    """Make the gunicorn arbiter pass SIGHUP to the worker instead of replacing it.

    gunicorn's own SIGHUP starts a new worker and retires the old one: two processes
    would then admit requests to the same containers, and the queue would be split.
    The worker re-reads the routing table itself, keeping its queue and slots.
    """
    server.handle_hup = lambda: server.kill_workers(signal.SIGHUP)
