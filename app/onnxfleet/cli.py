"""`onnxfleet <command>`: the single entry point of every service.

Each command lives in a module exposing ``configure(parser)`` and ``run(args) -> int``.
Those modules keep heavy imports (onnxruntime, aiohttp) inside ``run`` so that
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
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="onnxfleet", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"onnxfleet {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module_name, help_text) in COMMANDS.items():
        module = importlib.import_module(module_name)
        command = sub.add_parser(name, help=help_text, description=help_text)
        module.configure(command)
        command.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args._run(args))


if __name__ == "__main__":
    sys.exit(main())
