"""`onnxfleet healthcheck`: the image's HEALTHCHECK (the image has no curl)."""

from __future__ import annotations

import argparse
import os
import urllib.error
import urllib.request

DEFAULT_URL = "http://127.0.0.1:5000/readyz"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--url",
        default=os.environ.get("ONNXFLEET_HEALTH_URL", DEFAULT_URL),
        help="readiness URL (default: $ONNXFLEET_HEALTH_URL or %(default)s)",
    )
    parser.add_argument("--timeout", type=float, default=2.0, help="seconds (default: %(default)s)")


def run(args: argparse.Namespace) -> int:
    try:
        with urllib.request.urlopen(args.url, timeout=args.timeout) as response:
            return 0 if response.status == 200 else 1
    except (urllib.error.URLError, OSError, ValueError):
        return 1
