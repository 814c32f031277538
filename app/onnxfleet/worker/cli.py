"""`onnxfleet worker --model PATH --bind HOST:PORT`: serve one ONNX model over HTTP."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

DEFAULT_MAX_BODY_BYTES = 1 << 20
# Threads beyond the inference slots and their waiting line: they keep health checks and
# /metrics answering while every admitted request is busy.
SPARE_THREADS = 4


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, type=Path, metavar="PATH", help="the ONNX model file")
    parser.add_argument("--bind", required=True, metavar="HOST:PORT", help="address to listen on")
    parser.add_argument(
        "--max-concurrency",
        type=_positive,
        default=1,
        metavar="N",
        help="inferences run at the same time (default: %(default)s)",
    )
    parser.add_argument(
        "--max-waiting",
        type=_non_negative,
        default=16,
        metavar="N",
        help="inference requests that may wait for a slot; more get 429 (default: %(default)s)",
    )
    parser.add_argument(
        "--intra-op-threads",
        type=_positive,
        metavar="N",
        help="onnxruntime threads per inference (default: the CPUs this process may use, "
        "from the cgroup quota and affinity, ÷ --containers-per-node, at least 1)",
    )
    parser.add_argument(
        "--containers-per-node",
        type=_positive,
        default=1,
        metavar="N",
        help="worker containers sharing this node's CPUs (default: %(default)s)",
    )
    parser.add_argument(
        "--model-name", metavar="NAME", help="default: the model card's name, else the file stem"
    )
    parser.add_argument(
        "--model-version",
        metavar="V",
        help="default: the model card's version, else the first 12 hex of the file's sha256",
    )
    parser.add_argument(
        "--container-name",
        metavar="NAME",
        help="name in answers and logs (default: $ONNXFLEET_CONTAINER_NAME, else the hostname)",
    )
    parser.add_argument(
        "--max-body-bytes",
        type=_positive,
        default=DEFAULT_MAX_BODY_BYTES,
        metavar="N",
        help="larger request bodies get 413 (default: %(default)s)",
    )
    parser.add_argument(
        "--read-timeout",
        type=float,
        default=30.0,
        metavar="S",
        help="a request body that stalls this long gets 408 (default: %(default)s)",
    )
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])


def run(args: argparse.Namespace) -> int:
    from onnxfleet import logs
    from onnxfleet.gunicorn_app import serve
    from onnxfleet.worker.cpus import default_intra_op_threads
    from onnxfleet.worker.settings import (
        SettingsError,
        WorkerSettings,
        card_batch,
        default_container_name,
        model_identity,
    )

    logs.configure("worker", args.log_level)
    log = logging.getLogger("onnxfleet.worker")
    try:
        name, version, sha256 = model_identity(args.model, args.model_name, args.model_version)
        batch = card_batch(args.model)
    except SettingsError as exc:
        log.error("cannot start: %s", exc)
        return 2
    settings = WorkerSettings(
        model_path=args.model.resolve(),
        model_name=name,
        model_version=version,
        model_sha256=sha256,
        container=args.container_name or default_container_name(),
        intra_op_threads=args.intra_op_threads or default_intra_op_threads(args.containers_per_node),
        max_concurrency=args.max_concurrency,
        max_waiting=args.max_waiting,
        max_body_bytes=args.max_body_bytes,
        read_timeout=args.read_timeout,
        batch=batch,
    )
    threads = settings.max_concurrency + settings.max_waiting + SPARE_THREADS
    log.info("starting worker", extra={"settings": vars(settings), "bind": args.bind, "threads": threads})

    def factory() -> object:
        from onnxfleet.worker.app import create_app

        return create_app(settings)

    serve(
        factory,
        {
            "bind": args.bind,
            "workers": 1,
            "worker_class": "onnxfleet.worker.server.Worker",
            "logger_class": "onnxfleet.worker.server.QuietAccessLogger",
            "threads": threads,
            # Longer than the idle time of clients' keep-alive pools (aiohttp: 15 s), so
            # the worker never closes a connection a client is about to reuse.
            "keepalive": 75,
            "graceful_timeout": 30,
            "proc_name": f"onnxfleet-worker-{settings.container}",
            "loglevel": args.log_level,
        },
    )
    return 0
