"""`onnxfleet load`: send requests with K concurrent workers, then summarise what came back.

Exit status: 0 when every request got a 2xx answer (and a --rate was held), 1 when one did
not, 2 on bad usage, 3 when every request succeeded but the --rate was not held, 130 when
interrupted (Ctrl-C: in-flight requests finish and the summary is printed).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from onnxfleet.load.sample import DEFAULT_PATH

if TYPE_CHECKING:
    from onnxfleet.load.bodies import Body
    from onnxfleet.load.runner import LoadPlan

TOKEN_ENV = "ONNXFLEET_TOKEN"
RATE_NOT_HELD = 3
EXAMPLES = """\
examples:
  onnxfleet load --url http://127.0.0.1:8080 -n 100 -c 5      the seeds' experiment
  onnxfleet load --url http://orchestrator -n 0 --duration 60 -c 16 --json out.json
  onnxfleet load --url http://10.0.1.11:5000/run_model --rate 50 --duration 30 -c 8
  onnxfleet load --url http://127.0.0.1:8080/v2/models/digits/infer --data-dir bodies/ -n 100
  onnxfleet load --url http://127.0.0.1:8080/healthz -X GET -n 100
  onnxfleet load --url https://127.0.0.1:8443 --cacert ca.pem --token-file token -n 100 -c 5

exit status: 0 all succeeded, 1 a request failed, 2 bad usage, 3 --rate not held, 130 interrupted
"""


class UsageError(Exception):
    pass


def configure(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EXAMPLES
    parser.add_argument(
        "--url",
        required=True,
        help=f"the orchestrator's base URL ({DEFAULT_PATH} is appended) or a full URL with a path",
    )
    parser.add_argument(
        "-n",
        "--requests",
        type=int,
        metavar="N",
        help="requests in total; 0 = unlimited (needs --duration) (default: 100, or 0 with --duration)",
    )
    parser.add_argument(
        "-c", "--concurrency", type=int, default=1, metavar="K", help="concurrent workers (default: 1)"
    )
    parser.add_argument("--duration", type=float, metavar="S", help="stop starting requests after S seconds")
    parser.add_argument(
        "--rate",
        type=float,
        metavar="R",
        help="open loop: request i is due at i/R s (still at most K in flight), its latency counted"
        " from then; exit 3 when the rate is not held",
    )
    parser.add_argument(
        "--timeout", type=float, default=30.0, metavar="S", help="per request, seconds (default: 30)"
    )
    parser.add_argument(
        "-X",
        "--method",
        default="POST",
        help="HTTP method (default: POST; other methods send no default body)",
    )
    bodies = parser.add_mutually_exclusive_group()
    bodies.add_argument(
        "--data",
        metavar="JSON|@FILE",
        help="request body: JSON text, @FILE or @- (stdin) (default: one 8x8 digits sample with POST)",
    )
    bodies.add_argument(
        "--data-lines",
        metavar="FILE",
        help="request bodies, one JSON document per line of FILE (- for stdin), cycled",
    )
    bodies.add_argument(
        "--data-dir",
        metavar="DIR",
        help="request bodies, the .json and .bin (OIP binary) files of DIR in name order, cycled",
    )
    parser.add_argument(
        "-H", "--header", action="append", default=[], metavar="NAME:VALUE", help="extra header (repeatable)"
    )
    token = parser.add_mutually_exclusive_group()
    token.add_argument("--token", help=f"bearer token (visible in `ps`; prefer --token-file or ${TOKEN_ENV})")
    token.add_argument(
        "--token-file",
        type=Path,
        metavar="FILE",
        help=f"read the bearer token from FILE (default: ${TOKEN_ENV})",
    )
    parser.add_argument(
        "--cacert",
        metavar="FILE",
        help="verify the https:// server against the CA certificate(s) in FILE (PEM) instead of the system's",
    )
    parser.add_argument("--json", metavar="FILE", help="write the results as JSON to FILE (- for stdout)")
    parser.add_argument(
        "--json-requests",
        action="store_true",
        help="with --json: include every request, not only the summary",
    )
    parser.add_argument(
        "--histogram",
        metavar="FILE.png",
        help="draw a latency histogram (needs the 'plot' extra: matplotlib)",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")


def _bodies(args: argparse.Namespace) -> tuple[Body, ...] | None:
    """The bodies the options name; None: the plan's default."""
    from onnxfleet.load import bodies

    try:
        if args.data is not None:
            return (bodies.read_data(args.data),)
        if args.data_lines is not None:
            return bodies.read_json_lines(args.data_lines)
        if args.data_dir is not None:
            return bodies.read_body_dir(args.data_dir)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    return None


def _headers(values: list[str]) -> dict[str, str]:
    from onnxfleet.load.runner import TOKEN

    headers = {}
    for value in values:
        name, sep, content = value.partition(":")
        name, content = name.strip(), content.strip()
        if not sep or not TOKEN.match(name) or any(c in content for c in "\r\n"):
            raise UsageError(f"--header expects NAME:VALUE (a token name, one line), got {value!r}")
        headers[name] = content
    return headers


def _token(args: argparse.Namespace) -> str | None:
    if args.token_file is None:
        return args.token or os.environ.get(TOKEN_ENV) or None
    try:
        return args.token_file.read_text().strip() or None
    except OSError as exc:
        raise UsageError(f"cannot read --token-file {str(args.token_file)!r}: {exc.strerror}") from None


def _writable(path: str | None, option: str) -> None:
    if path not in (None, "-") and not Path(path).resolve().parent.is_dir():
        raise UsageError(f"{option}: no directory for {path!r}")


def plan_from_args(args: argparse.Namespace) -> LoadPlan:
    """The plan the options describe; UsageError (a message for the user) when they don't fit."""
    from onnxfleet.load.runner import LoadPlan

    n = args.requests if args.requests is not None else (0 if args.duration else 100)
    if n == 0 and not args.duration:
        raise UsageError("-n 0 (unlimited) needs --duration")
    if args.json_requests and not args.json:
        raise UsageError("--json-requests needs --json FILE")
    _writable(args.json, "--json")
    _writable(args.histogram, "--histogram")
    bodies = _bodies(args)
    try:
        return LoadPlan(
            url=args.url,
            n=n,
            concurrency=args.concurrency,
            duration=args.duration,
            bodies=bodies,
            method=args.method,
            headers=_headers(args.header),
            token=_token(args),
            timeout=args.timeout,
            rate=args.rate,
            cacert=args.cacert,
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def run(args: argparse.Namespace) -> int:
    from onnxfleet.load import report
    from onnxfleet.load.progress import ProgressPrinter
    from onnxfleet.load.runner import run_load

    try:
        plan = plan_from_args(args)
        if args.histogram:
            report.require_matplotlib()
    except (UsageError, RuntimeError) as exc:
        print(f"onnxfleet load: error: {exc}", file=sys.stderr)
        return 2

    stop = threading.Event()

    def interrupt(signum: int, frame: FrameType | None) -> None:
        stop.set()
        signal.signal(signal.SIGINT, signal.default_int_handler)  # a second Ctrl-C aborts

    previous = signal.signal(signal.SIGINT, interrupt)
    printer = None if args.quiet else ProgressPrinter(sys.stderr, sys.stderr.isatty())
    try:
        results = run_load(plan, stop=stop, on_progress=printer)
    except KeyboardInterrupt:
        print("\nonnxfleet load: aborted", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGINT, previous)
        if printer is not None:
            printer.close()

    summary = report.summarize(results)
    # with --json -, stdout carries only the JSON document
    (sys.stderr if args.json == "-" else sys.stdout).write(report.format_summary(summary))
    warning = report.rate_warning(summary)
    if warning:
        sys.stderr.write(warning)
    try:
        if args.json:
            report.write_json(results, summary, args.json, args.json_requests)
        if args.histogram:
            report.write_histogram(results, summary, args.histogram)
    except OSError as exc:
        print(f"onnxfleet load: error: cannot write {exc.filename!r}: {exc.strerror}", file=sys.stderr)
        return 2
    if results.interrupted:
        return 130
    if not results.records or results.failed:
        return 1
    return RATE_NOT_HELD if warning else 0
