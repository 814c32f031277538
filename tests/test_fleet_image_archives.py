"""The image archives on the controller: a new build's archive replaces the earlier
builds' of the same repository (180 MB each), and nothing else; each carries its
sha256; an image is built only for the engine's own architecture."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import pytest
from ansible_collections.onnxfleet.serving.plugins.plugin_utils import fleet_image


def test_a_new_archive_replaces_the_earlier_ones_of_its_repository_only(tmp_path: Path) -> None:
    names = [
        "onnxfleet-0123456789ab.tar.gz",
        "onnxfleet-ba9876543210.tar.gz",
        "onnxfleet-node-0123456789ab.tar.gz",
        "onnxfleet-0123456789ab.tar.gz.part",
        "notes.txt",
    ]
    for name in names:
        (tmp_path / name).write_bytes(b"x")
    fleet_image._remove_older_archives(str(tmp_path / "onnxfleet-ba9876543210.tar.gz"))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names[1:])


def test_the_archive_sha256_is_computed_once_and_kept_next_to_it(tmp_path: Path) -> None:
    archive = tmp_path / "onnxfleet-0123456789ab.tar.gz"
    archive.write_bytes(b"layers")
    expected = hashlib.sha256(b"layers").hexdigest()
    assert fleet_image.archive_sha256(str(archive)) == expected
    assert (tmp_path / "onnxfleet-0123456789ab.tar.gz.sha256").read_text().strip() == expected
    # an archive written again after its sidecar gets a new sum
    os.utime(archive, (time.time() + 5, time.time() + 5))
    archive.write_bytes(b"other layers")
    os.utime(archive, (time.time() + 5, time.time() + 5))
    assert fleet_image.archive_sha256(str(archive)) == hashlib.sha256(b"other layers").hexdigest()


def test_an_image_for_another_architecture_is_refused_with_advice() -> None:
    engine = fleet_image.engine_architecture()
    other = "arm64" if engine == "amd64" else "amd64"
    assert fleet_image.check_architecture("") == engine
    assert fleet_image.check_architecture({"amd64": "x86_64", "arm64": "aarch64"}[engine]) == engine
    with pytest.raises(fleet_image.ImageError, match=f"the nodes run {other}.*fleet_image"):
        fleet_image.check_architecture(other)
