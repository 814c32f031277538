#!/usr/bin/env python
"""Build the collection, install the artifact, and run `ansible-test sanity` on it, the
way Galaxy and Automation Hub check a collection.

    python scripts/collection_sanity.py [--keep DIR] [ansible-test sanity options...]

ansible-test bootstraps pip in each of its virtual environments with a get-pip script it
downloads from ci-files.testing.ansible.com, which is not reachable from here. It takes
a cached copy from ~/.ansible/test/cache/get_pip_<version>.py when there is one, so this
script puts one there that does the same with the standard library: `ensurepip`, then
`pip install` with the arguments given (the pinned pip version). Everything else
ansible-test installs comes from PyPI as usual.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent

GET_PIP = '''"""Stand-in for get-pip.py (scripts/collection_sanity.py): ensurepip, then pip install."""
import subprocess
import sys

ARGS = [a for a in sys.argv[1:] if a not in ("--no-setuptools", "--no-wheel")]
subprocess.check_call([sys.executable, "-m", "ensurepip", "--default-pip"])
subprocess.check_call([sys.executable, "-m", "pip", "install", *ARGS])
'''


def bootstrap_script() -> Path:
    """The cached get-pip stand-in for the pip version this ansible-test pins."""
    from ansible_test._internal.python_requirements import get_venv_packages

    version = sys.version_info
    pip = get_venv_packages(types.SimpleNamespace(version=f"{version.major}.{version.minor}"))["pip"]  # type: ignore[arg-type]
    path = Path.home() / ".ansible" / "test" / "cache" / f"get_pip_{pip.replace('.', '_')}.py"
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.is_file() or path.read_text() != GET_PIP:
        path.write_text(GET_PIP)
    return path


def build_and_install(workdir: Path) -> Path:
    """The collection as `ansible-galaxy collection build` makes it, installed under
    ``workdir``; returns the installed collection's directory."""
    galaxy = str(BIN / "ansible-galaxy")
    subprocess.run([galaxy, "collection", "build", str(ROOT), "--output-path", str(workdir), "--force"],
                   check=True, capture_output=True)  # fmt: skip
    (artifact,) = workdir.glob("onnxfleet-serving-*.tar.gz")
    subprocess.run([galaxy, "collection", "install", str(artifact), "-p", str(workdir / "collections"),
                    "--no-deps", "--force"], check=True, capture_output=True)  # fmt: skip
    # the collections it depends on, next to it, as ansible-test wants them (amazon.aws's
    # doc fragments and module_utils: from the ansible package the controller venv holds)
    import ansible_collections.amazon.aws as amazon_aws

    amazon = workdir / "collections" / "ansible_collections" / "amazon"
    amazon.mkdir(exist_ok=True)
    if not (amazon / "aws").exists():
        (amazon / "aws").symlink_to(Path(amazon_aws.__path__[0]), target_is_directory=True)
    return workdir / "collections" / "ansible_collections" / "onnxfleet" / "serving"


def sanity(collection: Path, extra: list[str]) -> int:
    bootstrap_script()
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    command = [str(BIN / "ansible-test"), "sanity", "--venv", "--python", version, "--color", "no", *extra]
    env = {"PATH": f"{BIN}:/usr/local/bin:/usr/bin:/bin", "HOME": str(Path.home())}
    return subprocess.run(command, cwd=collection, env=env, check=False).returncode


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--keep", type=Path, help="build and install here, and keep it (default: a temp dir)")
    args, extra = parser.parse_known_args()
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
        return sanity(build_and_install(args.keep), extra)
    with tempfile.TemporaryDirectory(prefix="onnxfleet-sanity-") as tmp:
        return sanity(build_and_install(Path(tmp)), extra)


if __name__ == "__main__":
    sys.exit(main())
