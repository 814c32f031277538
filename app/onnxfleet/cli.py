"""`onnxfleet <command>`: the single entry point of every service.

Each command lives in a module exposing ``configure(parser)`` and ``run(args) -> int``.
Those modules keep heavy imports (onnxruntime, gunicorn, aiohttp) inside ``run`` so that
``onnxfleet --help`` and the container health check stay fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from onnxfleet import __version__

COMMANDS: dict[str, tuple[str, str]] = {
    "healthcheck": ("onnxfleet.healthcheck", "exit 0 when a service answers ready (Docker HEALTHCHECK)"),
    "worker": ("onnxfleet.worker.cli", "serve one ONNX model over HTTP (Flask, gunicorn, onnxruntime)"),
    "orchestrator": ("onnxfleet.orchestrator.cli", "the fleet's queueing front door (one gunicorn worker)"),
    "load": ("onnxfleet.load.cli", "send requests with K concurrent workers; summarise latency, errors"),
    "autoscale": ("onnxfleet.autoscale.cli", "scale the worker nodes from the queue, through site.yml"),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; only ``command``'s module is imported (and configured), so one
    command's import cost or breakage never reaches the others (the health check)."""
    parser = argparse.ArgumentParser(prog="onnxfleet", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"onnxfleet {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module_name, help_text) in COMMANDS.items():
        command_parser = sub.add_parser(name, help=help_text, description=help_text)
        if name == command:
            module = importlib.import_module(module_name)
            module.configure(command_parser)
            command_parser.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # The top-level options take no value, so the first positional word is the command.
    command = next((arg for arg in argv if not arg.startswith("-")), None)
    args = build_parser(command).parse_args(argv)
    return int(args._run(args))


if __name__ == "__main__":
    sys.exit(main())
