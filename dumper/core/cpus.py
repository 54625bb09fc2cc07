"""The CPUs this process may use: its affinity, capped by its cgroup's CPU quota (a Kubernetes
CPU limit). How many worker processes a run (dump/cpus.py) or a restore starts follows it."""

from __future__ import annotations

import contextlib
import math
import os
from pathlib import Path


def usable_cpus() -> int:
    """The CPUs this process may run on: its affinity, capped by the CPU quota
    of its cgroup or of any cgroup above it (a Kubernetes CPU limit), rounded
    up; cgroup v2 (cpu.max) or v1 (cpu.cfs_quota_us / cpu.cfs_period_us)."""
    count = len(os.sched_getaffinity(0))
    with contextlib.suppress(OSError, ValueError):
        for quota in _cpu_quotas():
            count = min(count, max(1, math.ceil(quota)))
    return count


def _cpu_quotas() -> list[float]:
    """The CPU quotas (in CPUs) of this process's cgroup and its ancestors, up
    to the root of the hierarchy that is mounted (in a container: its own)."""
    mounts: dict[str, tuple[str, str]] = {}  # "2" (cgroup v2) or "1" (v1 with the cpu controller) -> (root, mount)
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        fstype = fields[fields.index("-") + 1]
        if fstype == "cgroup2":
            mounts.setdefault("2", (fields[3], fields[4]))
        elif fstype == "cgroup" and "cpu" in fields[-1].split(","):
            mounts.setdefault("1", (fields[3], fields[4]))
    quotas = []
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        version = "2" if controllers == "" else "1" if "cpu" in controllers.split(",") else None
        if version is None or version not in mounts:
            continue
        root, mount = mounts[version]
        here = Path(mount) / os.path.relpath(path, root)
        for folder in [here, *here.parents]:
            if version == "2" and (folder / "cpu.max").exists():
                quota, period = (folder / "cpu.max").read_text().split()[:2]
                if quota != "max":
                    quotas.append(int(quota) / int(period))
            elif version == "1" and (folder / "cpu.cfs_quota_us").exists():
                microseconds = int((folder / "cpu.cfs_quota_us").read_text())
                if microseconds > 0:  # -1: no quota
                    quotas.append(microseconds / int((folder / "cpu.cfs_period_us").read_text()))
            if folder == Path(mount):
                break
    return quotas
