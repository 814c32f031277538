"""`onnxfleet orchestrator`: the fleet's front door (one FIFO queue, per-container slots)."""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from onnxfleet.orchestrator.limits import Limits
from onnxfleet.orchestrator.settings import HealthSpec, Settings

if TYPE_CHECKING:
    from onnxfleet.orchestrator.routes import RoutingTable
    from onnxfleet.orchestrator.tokens import Tokens

DEFAULT_BIND = "127.0.0.1:8000"
_HEALTH = HealthSpec()


_Number = TypeVar("_Number", int, float)


def _positive(kind: Callable[[str], _Number]) -> Callable[[str], _Number]:
    """An argparse type: a number > 0."""

    def parse(text: str) -> _Number:
        value = kind(text)
        if not value > 0:
            raise argparse.ArgumentTypeError(f"expected a value > 0, got {value}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its "invalid value" message
    return parse


def _at_least_zero(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a value >= 0, got {value}")
    return value


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--routes", required=True, metavar="FILE", help="routing table (JSON)")
    parser.add_argument(
        "--bind", default=DEFAULT_BIND, metavar="HOST:PORT", help="the API listener (default: %(default)s)"
    )
    parser.add_argument(
        "--admin-bind",
        metavar="HOST:PORT",
        help="a private listener for /admin/*, /status, /metrics and the dashboard "
        "(default: none, they are served on --bind, behind tokens)",
    )
    parser.add_argument(
        "--state-dir",
        metavar="DIR",
        help="drain flags and the dispatch lease, shared by the processes that replace each other "
        "(default: a private directory that lives as long as the command)",
    )
    parser.add_argument(
        "--admin-token-file",
        metavar="FILE",
        help="bearer token for /admin/* (default: $ONNXFLEET_ADMIN_TOKEN; none: admin is open)",
    )
    parser.add_argument(
        "--api-tokens-file",
        metavar="FILE",
        help="client tokens, '<name> sha256:<hex>' per line, re-read by POST /admin/reload "
        "(also: a raw $ONNXFLEET_API_TOKEN; none: the API is open)",
    )
    parser.add_argument(
        "--upstream-timeout",
        type=_positive(float),
        default=Settings.upstream_timeout_s,
        metavar="S",
        help="seconds a container may take to answer before 504 (default: %(default)s)",
    )
    parser.add_argument(
        "--retries",
        type=_at_least_zero,
        default=Settings.retries,
        help="re-sends to another container of a request that got no answer byte (default: %(default)s)",
    )
    parser.add_argument(
        "--job-ttl",
        type=_positive(float),
        default=Settings.job_ttl_s,
        metavar="S",
        help="seconds the results of /jobs are kept (default: %(default)s)",
    )
    parser.add_argument(
        "--max-jobs",
        type=_positive(int),
        default=Settings.max_jobs,
        help="jobs stored at most (default: %(default)s)",
    )
    parser.add_argument(
        "--max-job-bytes",
        type=_positive(int),
        default=Settings.max_job_bytes,
        help="bytes of requests and results the job store holds at most (default: %(default)s)",
    )
    parser.add_argument(
        "--max-body-bytes",
        type=_positive(int),
        default=Settings.max_body_bytes,
        help="request body limit, as the workers' (default: %(default)s)",
    )
    parser.add_argument(
        "--max-queue-bytes",
        type=_positive(int),
        default=Settings.max_queue_bytes,
        help="request bytes the queue holds at most; more: 429 (default: %(default)s)",
    )
    parser.add_argument(
        "--max-connections",
        type=_positive(int),
        default=Limits.max_connections,
        help="open client connections at most (default: %(default)s)",
    )
    parser.add_argument(
        "--max-connection-bytes",
        type=int,
        default=None,
        help="request body bytes all connections hold at once, beyond 64 KiB each (bodies being "
        "read, read ahead, or waiting for their answer); more: 503 busy "
        f"(default: {Limits.max_connection_bytes}, or --max-body-bytes if larger)",
    )
    parser.add_argument(
        "--head-timeout",
        type=_positive(float),
        default=Limits.head_timeout_s,
        metavar="S",
        help="to send a request head (default: %(default)s)",
    )
    parser.add_argument(
        "--body-timeout",
        type=_positive(float),
        default=Limits.body_timeout_s,
        metavar="S",
        help="to send a whole request body, from the end of its head (default: %(default)s)",
    )
    parser.add_argument(
        "--send-timeout",
        type=_positive(float),
        default=Limits.send_timeout_s,
        metavar="S",
        help="a client that leaves more than 64 KiB of answers unread (or unsent at a close) "
        "this long is reset (default: %(default)s)",
    )
    parser.add_argument(
        "--keep-alive",
        type=_positive(float),
        default=Limits.keep_alive_s,
        metavar="S",
        help="idle connection lifetime (default: %(default)s)",
    )
    parser.add_argument(
        "--insecure-open",
        action="store_true",
        help="serve on a non-loopback address without client tokens (or without an admin token "
        "where /admin is served): refused otherwise",
    )
    parser.add_argument(
        "--health-interval",
        type=_positive(float),
        default=_HEALTH.interval_s,
        metavar="S",
        help="default: %(default)s",
    )
    parser.add_argument(
        "--health-timeout",
        type=_positive(float),
        default=_HEALTH.timeout_s,
        metavar="S",
        help="default: %(default)s",
    )
    parser.add_argument(
        "--health-fall",
        type=_positive(int),
        default=_HEALTH.fall,
        help="failed checks to mark down (default: %(default)s)",
    )
    parser.add_argument(
        "--health-rise",
        type=_positive(int),
        default=_HEALTH.rise,
        help="passed checks to mark up (default: %(default)s)",
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


def _loopback(bind: str) -> bool:
    """Whether a gunicorn bind address reaches this host only (unix sockets do)."""
    if bind.startswith(("unix:", "fd://")):
        return True
    host = bind.rpartition(":")[0] if ":" in bind else bind
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def _check_exposure(args: argparse.Namespace, api_tokens: bool, admin_token: bool) -> None:
    """Refuse to serve an open API or admin API on an address others reach."""
    if args.insecure_open:
        return
    listeners = [(args.bind, "the API" + (" and /admin" if args.admin_bind is None else ""))]
    if args.admin_bind is not None:
        listeners.append((args.admin_bind, "/admin"))
    for bind, what in listeners:
        if _loopback(bind):
            continue
        missing = []
        if "API" in what and not api_tokens:
            missing.append("client tokens (--api-tokens-file or $ONNXFLEET_API_TOKEN)")
        if "admin" in what and not admin_token:
            missing.append("an admin token (--admin-token-file or $ONNXFLEET_ADMIN_TOKEN)")
        if missing:
            raise ValueError(
                f"{bind} is not a loopback address and {what} would be open to anyone who reaches "
                f"it: give {' and '.join(missing)}, bind 127.0.0.1, or pass --insecure-open"
            )


class _Files:
    """The routing table and tokens the next worker starts with: read again by the arbiter on SIGHUP."""

    def __init__(self, path: str, health: HealthSpec, table: RoutingTable) -> None:
        self.path, self.health, self.table = path, health, table
        self.tokens: Tokens | None = None
        self.tokens_path: str | None = None

    def reload(self, _arbiter: Any) -> None:
        from onnxfleet.orchestrator.routes import RoutesError, load_table
        from onnxfleet.orchestrator.tokens import Tokens, TokensError, load_tokens

        assert self.tokens is not None
        try:
            table = load_table(self.path, self.health)
            hashed = load_tokens(self.tokens_path) if self.tokens_path else None
        except (RoutesError, TokensError) as exc:
            logging.getLogger("onnxfleet.orchestrator").error(
                "reload refused, the new worker keeps the current routing table and tokens: %s", exc
            )
            return
        self.table, self.tokens = table, Tokens(hashed, self.tokens.raw_token)


def load(args: argparse.Namespace) -> tuple[Settings, Limits, _Files]:
    """What the command line asks for, checked (raises RoutesError, TokensError, ValueError, OSError)."""
    from onnxfleet.orchestrator.routes import load_table
    from onnxfleet.orchestrator.tokens import Tokens, load_tokens

    connection_bytes = args.max_connection_bytes
    if connection_bytes is None:
        connection_bytes = max(Limits.max_connection_bytes, args.max_body_bytes)
    elif connection_bytes < args.max_body_bytes:  # the largest body allowed would never fit
        raise ValueError(
            f"--max-connection-bytes: expected at least --max-body-bytes ({args.max_body_bytes}), "
            f"got {connection_bytes}"
        )
    health = HealthSpec(
        interval_s=args.health_interval,
        timeout_s=args.health_timeout,
        fall=args.health_fall,
        rise=args.health_rise,
    )
    routes_path = str(Path(args.routes).resolve())
    files = _Files(routes_path, health, load_table(routes_path, health))
    api_token = os.environ.get("ONNXFLEET_API_TOKEN") or None
    tokens_path = str(Path(args.api_tokens_file).resolve()) if args.api_tokens_file else None
    files.tokens_path = tokens_path
    files.tokens = Tokens(load_tokens(tokens_path) if tokens_path else None, api_token)
    state_dir = Path(args.state_dir).resolve() if args.state_dir else None
    if state_dir is not None and not state_dir.is_dir():
        raise ValueError(f"--state-dir: {state_dir} is not a directory")
    admin_token = _token(args.admin_token_file, "ONNXFLEET_ADMIN_TOKEN")
    _check_exposure(args, api_token is not None or tokens_path is not None, admin_token is not None)
    settings = Settings(
        routes_path=routes_path,
        admin_token=admin_token,
        api_token=api_token,
        api_tokens_path=tokens_path,
        state_dir=state_dir,
        admin_listener=args.admin_bind is not None,
        upstream_timeout_s=args.upstream_timeout,
        retries=args.retries,
        job_ttl_s=args.job_ttl,
        max_jobs=args.max_jobs,
        max_job_bytes=args.max_job_bytes,
        max_body_bytes=args.max_body_bytes,
        max_queue_bytes=args.max_queue_bytes,
        health_defaults=health,
        access_log=args.access_log,
    )
    limits = Limits(
        max_body_bytes=args.max_body_bytes,
        head_timeout_s=args.head_timeout,
        body_timeout_s=args.body_timeout,
        send_timeout_s=args.send_timeout,
        keep_alive_s=args.keep_alive,
        max_connections=args.max_connections,
        max_connection_bytes=connection_bytes,
    )
    return settings, limits, files


def run(args: argparse.Namespace) -> int:
    from onnxfleet import logs
    from onnxfleet.gunicorn_app import serve
    from onnxfleet.orchestrator.routes import RoutesError

    logs.configure("orchestrator", args.log_level)
    try:
        settings, limits, files = load(args)
    except (RoutesError, ValueError, OSError) as exc:
        print(f"onnxfleet orchestrator: {exc}", file=sys.stderr)
        return 2

    from onnxfleet.orchestrator.service import Service

    arbiter = os.getpid()
    private_state = None
    if settings.state_dir is None:
        # gunicorn replaces its worker on SIGHUP: the two processes still need one lease
        private_state = tempfile.mkdtemp(prefix="onnxfleet-orchestrator-")
        settings = dataclasses.replace(settings, state_dir=Path(private_state))

    if settings.admin_token is None:
        logging.getLogger("onnxfleet.orchestrator").warning(
            "no admin token (--admin-token-file, $ONNXFLEET_ADMIN_TOKEN): /admin/* is open to anyone "
            "who reaches this port"
        )
    try:
        serve(
            lambda: Service(settings, files.table, limits, files.tokens),
            {
                "bind": [args.bind] if args.admin_bind is None else [args.bind, args.admin_bind],
                # One process: the queue and the slot table are in-memory state (see
                # docs/orchestrator.md); several processes would each admit a request to the
                # same container.
                "workers": 1,
                "worker_class": "onnxfleet.orchestrator.worker.OrchestratorWorker",
                "graceful_timeout": 15,
                "timeout": 30,
                "on_reload": files.reload,
            },
        )
    finally:
        # the workers are forks of this process and leave through this frame too
        if private_state is not None and os.getpid() == arbiter:
            shutil.rmtree(private_state, ignore_errors=True)
    return 0
