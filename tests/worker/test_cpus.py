"""The default onnxruntime thread count, from fake cgroup v1/v2 files and affinity."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from onnxfleet.worker import cpus

SetCpus = Callable[[int], None]


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")


@pytest.fixture
def affinity(monkeypatch: pytest.MonkeyPatch) -> SetCpus:
    """Pretend the process may run on 8 CPUs."""

    def set_cpus(count: int) -> None:
        monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: set(range(count)))

    set_cpus(8)
    return set_cpus


@pytest.fixture
def no_self_cgroup(tmp_path: Path) -> Path:
    path = tmp_path / "self-cgroup"
    path.write_text("")
    return path


def test_no_cgroup_limit_uses_affinity(tmp_path: Path, no_self_cgroup: Path, affinity: SetCpus) -> None:
    root = tmp_path / "cgroup"
    root.mkdir()
    assert cpus.cgroup_cpu_limit(root, no_self_cgroup) is None
    assert cpus.available_cpus(root, no_self_cgroup) == 8
    assert cpus.default_intra_op_threads(1, root, no_self_cgroup) == 8
    assert cpus.default_intra_op_threads(2, root, no_self_cgroup) == 4
    assert cpus.default_intra_op_threads(3, root, no_self_cgroup) == 2  # rounded down


def test_affinity_smaller_than_quota(tmp_path: Path, no_self_cgroup: Path, affinity: SetCpus) -> None:
    affinity(2)  # e.g. docker run --cpuset-cpus 0,1 --cpus 4
    write(tmp_path / "cpu.max", "400000 100000")
    assert cpus.available_cpus(tmp_path, no_self_cgroup) == 2
    assert cpus.default_intra_op_threads(2, tmp_path, no_self_cgroup) == 1


@pytest.mark.parametrize(
    "case",
    [
        ("200000 100000", 1, 2),  # --cpus 2
        ("200000 100000", 2, 1),
        ("150000 100000", 1, 1),  # --cpus 1.5: rounded down
        ("50000 100000", 1, 1),  # --cpus 0.5: at least 1
        ("400000 100000", 2, 2),
        ("max 100000", 2, 4),  # unlimited: affinity (8) / 2
    ],
)
def test_cgroup_v2_cpu_max(
    tmp_path: Path, no_self_cgroup: Path, affinity: SetCpus, case: tuple[str, int, int]
) -> None:
    cpu_max, per_node, threads = case
    write(tmp_path / "cpu.max", cpu_max)
    assert cpus.default_intra_op_threads(per_node, tmp_path, no_self_cgroup) == threads


@pytest.mark.parametrize("controller_dir", ["cpu", "cpu,cpuacct"])
def test_cgroup_v1_quota(
    tmp_path: Path, no_self_cgroup: Path, affinity: SetCpus, controller_dir: str
) -> None:
    write(tmp_path / controller_dir / "cpu.cfs_quota_us", "300000")
    write(tmp_path / controller_dir / "cpu.cfs_period_us", "100000")
    assert cpus.cgroup_cpu_limit(tmp_path, no_self_cgroup) == 3
    assert cpus.default_intra_op_threads(1, tmp_path, no_self_cgroup) == 3


def test_cgroup_v1_unlimited(tmp_path: Path, no_self_cgroup: Path, affinity: SetCpus) -> None:
    write(tmp_path / "cpu" / "cpu.cfs_quota_us", "-1")
    write(tmp_path / "cpu" / "cpu.cfs_period_us", "100000")
    assert cpus.cgroup_cpu_limit(tmp_path, no_self_cgroup) is None
    assert cpus.default_intra_op_threads(4, tmp_path, no_self_cgroup) == 2


def test_cgroup_path_from_proc_self_cgroup(tmp_path: Path, affinity: SetCpus) -> None:
    """Without a cgroup namespace the process's own cgroup is a sub-directory, named in
    /proc/self/cgroup (v1: by controller; v2: the "0::" line)."""
    self_cgroup = tmp_path / "self-cgroup"
    self_cgroup.write_text("12:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n0::/system.slice/x.service\n")
    write(tmp_path / "cpu,cpuacct" / "docker" / "abc" / "cpu.cfs_quota_us", "100000")
    write(tmp_path / "cpu,cpuacct" / "docker" / "abc" / "cpu.cfs_period_us", "100000")
    assert cpus.cgroup_cpu_limit(tmp_path, self_cgroup) == 1
    write(tmp_path / "system.slice" / "x.service" / "cpu.max", "50000 100000")
    assert cpus.cgroup_cpu_limit(tmp_path, self_cgroup) == 0.5  # the smallest limit wins


def test_garbage_files_are_ignored(tmp_path: Path, no_self_cgroup: Path, affinity: SetCpus) -> None:
    write(tmp_path / "cpu.max", "lots please")
    write(tmp_path / "cpu" / "cpu.cfs_quota_us", "abc")
    write(tmp_path / "cpu" / "cpu.cfs_period_us", "0")
    assert cpus.cgroup_cpu_limit(tmp_path, no_self_cgroup) is None


def test_this_machine() -> None:
    """On the real files: a positive count no larger than the affinity mask."""
    threads = cpus.default_intra_op_threads(1)
    assert 1 <= threads <= len(os.sched_getaffinity(0))
