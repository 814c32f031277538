"""How many CPUs this process may use, for onnxruntime's thread pool.

onnxruntime sizes its pool to the host's cores, not to the container's share: several
containers per node would oversubscribe the CPU. So count what the cgroup quota
(v1 ``cpu.cfs_quota_us``/``cpu.cfs_period_us``, v2 ``cpu.max``) and the affinity mask allow.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
SELF_CGROUP = Path("/proc/self/cgroup")


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _cgroup_dirs(root: Path, self_cgroup: Path) -> list[Path]:
    """Directories that may hold this process's CPU controller files: the cgroup root (a
    container sees its own cgroup there) and the path /proc/self/cgroup names (a process
    on a host, or a container without a cgroup namespace)."""
    dirs = [root, root / "cpu", root / "cpu,cpuacct"]
    for line in (_read(self_cgroup) or "").splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3 or parts[2] in ("", "/"):
            continue
        _, controllers, path = parts
        relative = path.lstrip("/")
        if controllers == "":  # cgroup v2 unified hierarchy
            dirs.append(root / relative)
        elif "cpu" in controllers.split(","):
            dirs += [root / "cpu" / relative, root / "cpu,cpuacct" / relative, root / controllers / relative]
    return dirs


def cgroup_cpu_limit(root: Path = CGROUP_ROOT, self_cgroup: Path = SELF_CGROUP) -> float | None:
    """The smallest CPU quota (in CPUs) found for this process, or None when unlimited."""
    limits = []
    for directory in _cgroup_dirs(root, self_cgroup):
        v2 = _read(directory / "cpu.max")
        if v2:
            quota, _, period = v2.partition(" ")
            if quota != "max" and quota.isdigit() and period.isdigit() and int(period) > 0:
                limits.append(int(quota) / int(period))
        quota_v1 = _read(directory / "cpu.cfs_quota_us")
        period_v1 = _read(directory / "cpu.cfs_period_us")
        # cfs_quota_us is -1 when unlimited
        if quota_v1 and period_v1 and quota_v1.isdigit() and period_v1.isdigit() and int(period_v1) > 0:
            limits.append(int(quota_v1) / int(period_v1))
    return min(limits) if limits else None


def available_cpus(root: Path = CGROUP_ROOT, self_cgroup: Path = SELF_CGROUP) -> float:
    """CPUs this process may use: the affinity mask, capped by the cgroup quota."""
    try:
        cpus: float = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    limit = cgroup_cpu_limit(root, self_cgroup)
    return min(cpus, limit) if limit is not None else cpus


def default_intra_op_threads(
    containers_per_node: int, root: Path = CGROUP_ROOT, self_cgroup: Path = SELF_CGROUP
) -> int:
    """The CPUs this process may use ÷ the containers sharing the node, rounded down, at least 1."""
    return max(1, math.floor(available_cpus(root, self_cgroup) / max(1, containers_per_node)))
