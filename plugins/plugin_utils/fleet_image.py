# Copyright: onnxfleet contributors
# Apache-2.0
"""Build an image once per content, on the controller, and save it as an archive to ship.

Used by the ``onnxfleet.serving.fleet_image`` action (which runs on the controller) and
by ``scripts/image.py`` (make image, the tests). Pure Python plus the ``docker`` CLI: no
Docker SDK needed.

The tag is a hash of the build context (minus derived files such as the wheelhouse)
and of the base image's ID, so a changed source, lock file, model or base gives a new
tag and an unchanged one is never rebuilt. The engine builds for its own architecture
only (Debian's docker.io has no buildx to cross-build): asked for another, it refuses.
"""

from __future__ import annotations

import fnmatch
import gzip
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile

DEFAULT_EXCLUDES = (".wheelhouse", "__pycache__", "*.pyc", "*.egg-info", "build", ".*cache")

# Docker's, EC2's and the kernel's names for the same architectures.
ARCHITECTURES = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}


class ImageError(Exception):
    """A build step failed; the message says which and why."""


def _docker(*args, check=True, capture=True, stdin=None, env=None):
    try:
        proc = subprocess.run(
            ["docker", *args],
            check=False,
            stdin=stdin,
            stdout=subprocess.PIPE if capture else None,
            stderr=subprocess.PIPE,
            env=env,
        )
    except FileNotFoundError as exc:
        raise ImageError("the docker CLI is not installed on the controller") from exc
    if check and proc.returncode != 0:
        err = proc.stderr.decode(errors="replace").strip().splitlines()
        raise ImageError("docker %s failed: %s" % (args[0], "; ".join(err[-5:])))
    return proc


def image_id(name):
    """The local image ID of ``name``, or None when the engine does not have it."""
    proc = _docker("image", "inspect", "--format", "{{.Id}}", name, check=False)
    if proc.returncode != 0:
        return None
    return proc.stdout.decode().strip()


def engine_architecture():
    """The architecture the local engine builds for (amd64, arm64, ...)."""
    found = _docker("info", "--format", "{{.Architecture}}").stdout.decode().strip()
    return ARCHITECTURES.get(found, found)


def check_architecture(wanted):
    """The architecture to build for: ``wanted`` (any of its names; empty: the engine's),
    which must be the engine's own."""
    engine = engine_architecture()
    wanted = ARCHITECTURES.get(wanted, wanted) if wanted else engine
    if wanted != engine:
        raise ImageError(
            "the nodes run %s, but this controller's Docker engine builds %s images and cannot "
            "cross-build: build on a %s machine and push to a registry the nodes can pull "
            "(then name that image in fleet_image)" % (wanted, engine, wanted)
        )
    return engine


def _excluded(rel, excludes):
    parts = rel.split(os.sep)
    return any(fnmatch.fnmatch(part, pat) for part in parts for pat in excludes)


def context_files(context, excludes=DEFAULT_EXCLUDES):
    """Files of a build context that decide the image, relative and sorted."""
    found = []
    for top, dirs, files in os.walk(context):
        rel_top = os.path.relpath(top, context)
        dirs[:] = sorted(
            d for d in dirs if not _excluded(os.path.normpath(os.path.join(rel_top, d)), excludes)
        )
        for name in files:
            rel = os.path.normpath(os.path.join(rel_top, name))
            if not _excluded(rel, excludes):
                found.append(rel)
    return sorted(found)


def content_hash(context, base_id, build_args=None, excludes=DEFAULT_EXCLUDES):
    digest = hashlib.sha256()
    digest.update(base_id.encode())
    digest.update(json.dumps(build_args or {}, sort_keys=True).encode())
    for rel in context_files(context, excludes):
        digest.update(rel.encode() + b"\0")
        with open(os.path.join(context, rel), "rb") as handle:
            digest.update(hashlib.sha256(handle.read()).digest())
    return digest.hexdigest()[:12]


def resolve_base(preferred, fallback, pull=True):
    """(name, id) of the base image: ``preferred`` if the engine has it or can pull it,
    else ``fallback`` (built offline by scripts/base-image.sh)."""
    for candidate, may_pull in ((preferred, pull), (fallback, False)):
        if not candidate:
            continue
        found = image_id(candidate)
        if found is None and may_pull and _docker("pull", "-q", candidate, check=False).returncode == 0:
            found = image_id(candidate)
        if found:
            return candidate, found
    raise ImageError(
        "no base image: %s is not available (no registry answers?) and the offline "
        "fallback %s has not been built; run `make setup` (scripts/base-image.sh)"
        % (preferred, fallback or "(none)")
    )


def ensure_image(
    *,
    context,
    repository,
    preferred_base,
    fallback_base=None,
    archive_dir=None,
    build_args=None,
    excludes=DEFAULT_EXCLUDES,
    pull=True,
    architecture="",
    check_mode=False,
):
    """Make sure ``repository:<content hash>`` exists locally (and, with ``archive_dir``,
    as a gzipped ``docker save`` archive there, with its sha256). Returns what it did."""
    context = os.path.abspath(context)
    if not os.path.isfile(os.path.join(context, "Dockerfile")):
        raise ImageError("no Dockerfile in %s" % context)
    architecture = check_architecture(architecture)
    base, base_id = resolve_base(preferred_base, fallback_base, pull=pull and not check_mode)
    args = dict(build_args or {})
    args["BASE_IMAGE"] = base
    tag = content_hash(context, base_id, args, excludes)
    image = "%s:%s" % (repository, tag)
    result = {
        "changed": False,
        "image": image,
        "tag": tag,
        "base_image": base,
        "architecture": architecture,
        "built": False,
    }

    if image_id(image) is None:
        result.update(changed=True, built=True)
        if not check_mode:
            cmd = ["build", "--quiet", "--tag", image, "--label", "onnxfleet.content=" + tag]
            for key, value in sorted(args.items()):
                cmd += ["--build-arg", "%s=%s" % (key, value)]
            # The legacy builder talks to any engine (Debian's docker.io has no buildx).
            _docker(*cmd, context, env=dict(os.environ, DOCKER_BUILDKIT="0"))

    if archive_dir:
        archive = os.path.join(
            os.path.abspath(archive_dir), "%s-%s.tar.gz" % (repository.replace("/", "_"), tag)
        )
        result["archive"] = archive
        if not os.path.exists(archive):
            result["changed"] = True
            if not check_mode:
                _save(image, archive)
                _remove_older_archives(archive)
        if os.path.exists(archive):
            result["archive_sha256"] = archive_sha256(archive)
    return result


def archive_sha256(archive):
    """The archive's sha256, kept next to it (``<archive>.sha256``) once computed."""
    sidecar = archive + ".sha256"
    if os.path.exists(sidecar) and os.path.getmtime(sidecar) >= os.path.getmtime(archive):
        with open(sidecar, encoding="ascii") as handle:
            return handle.read().strip()
    digest = hashlib.sha256()
    with open(archive, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    with open(sidecar, "w", encoding="ascii") as handle:
        handle.write(digest.hexdigest() + "\n")
    return digest.hexdigest()


def _remove_older_archives(archive):
    """Archives of earlier builds of the repository are 180 MB each: keep the newest."""
    prefix = os.path.basename(archive).rsplit("-", 1)[0]
    same_repository = re.compile(re.escape(prefix) + r"-[0-9a-f]+\.tar\.gz(\.sha256)?")
    directory = os.path.dirname(archive)
    for name in os.listdir(directory):
        path = os.path.join(directory, name)
        if same_repository.fullmatch(name) and path not in (archive, archive + ".sha256"):
            os.unlink(path)


def _save(image, archive):
    os.makedirs(os.path.dirname(archive), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(archive), suffix=".part")
    try:
        proc = subprocess.Popen(["docker", "save", image], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        with (
            os.fdopen(fd, "wb") as raw,
            gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=1, mtime=0) as out,
        ):
            shutil.copyfileobj(proc.stdout, out, 1 << 20)
        if proc.wait() != 0:
            raise ImageError(
                "docker save %s failed: %s" % (image, proc.stderr.read().decode(errors="replace"))
            )
        os.replace(tmp, archive)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
