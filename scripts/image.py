#!/usr/bin/env python3
"""Build (once per content hash) the onnxfleet image and print it as JSON.

    scripts/image.py [--archive-dir DIR]

The same code as the onnxfleet.serving.fleet_image action (plugins/plugin_utils).
"""

import argparse
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "plugins", "plugin_utils"))

from fleet_image import ImageError, ensure_image  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--context", default=os.path.join(ROOT, "app"))
    parser.add_argument("--repository", default="onnxfleet")
    parser.add_argument(
        "--base-image", default=os.environ.get("ONNXFLEET_BASE_IMAGE", "python:3.11-slim-bookworm")
    )
    parser.add_argument("--fallback-base-image", default="onnxfleet/base:bookworm")
    parser.add_argument("--archive-dir")
    args = parser.parse_args()
    try:
        result = ensure_image(
            context=args.context,
            repository=args.repository,
            preferred_base=args.base_image,
            fallback_base=args.fallback_base_image,
            archive_dir=args.archive_dir,
        )
    except ImageError as exc:
        print(f"image: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
