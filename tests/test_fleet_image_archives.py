"""The image archives on the controller: a new build's archive replaces the earlier
builds' of the same repository (180 MB each), and nothing else."""

from __future__ import annotations

from pathlib import Path

from ansible_collections.onnxfleet.serving.plugins.module_utils import fleet_image


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
