"""How many CPUs this process may use."""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path

__all__ = ["cpu_count"]

_CGROUP_ROOT = Path("/sys/fs/cgroup")


def cpu_count() -> int:
    """The number of CPUs this process may use, at least 1.

    Unlike :func:`os.cpu_count`, this honours the CPU affinity mask (``taskset``, container
    cpusets) and a cgroup CPU quota (``docker --cpus``, Kubernetes CPU limits), rounding a
    fractional quota up.
    """
    try:
        count = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - platforms without affinity masks (macOS)
        count = os.cpu_count() or 1
    quota = cgroup_cpu_quota(_read_text("/proc/self/cgroup") or "", _CGROUP_ROOT)
    if quota is not None:
        count = min(count, math.ceil(quota))
    return max(1, count)


def cgroup_cpu_quota(proc_self_cgroup: str, root: Path) -> float | None:
    """The tightest CPU quota, in CPUs, on the cgroup path of this process, else ``None``.

    ``proc_self_cgroup`` is the text of ``/proc/self/cgroup``; ``root`` is where the cgroup
    file systems are mounted.
    """
    quotas: list[float] = []
    for line in proc_self_cgroup.splitlines():
        hierarchy, controllers, path = line.split(":", 2)
        if hierarchy == "0" and controllers == "":
            quotas += _along_path(root, root / path.lstrip("/"), _cpu_max)
        elif "cpu" in controllers.split(","):
            mount = root / controllers
            quotas += _along_path(mount, mount / path.lstrip("/"), _cfs_quota)
    return min(quotas) if quotas else None


def parse_cpu_max(text: str) -> float | None:
    """CPUs allowed by a cgroup v2 ``cpu.max`` ("QUOTA PERIOD", or "max PERIOD" for none)."""
    fields = text.split()
    if len(fields) != 2 or fields[0] == "max":
        return None
    return _ratio(fields[0], fields[1])


def _cpu_max(directory: Path) -> float | None:
    text = _read_text(directory / "cpu.max")
    return parse_cpu_max(text) if text is not None else None


def _cfs_quota(directory: Path) -> float | None:
    quota = _read_text(directory / "cpu.cfs_quota_us")
    period = _read_text(directory / "cpu.cfs_period_us")
    return _ratio(quota, period) if quota is not None and period is not None else None


def _along_path(
    top: Path, directory: Path, read_quota: Callable[[Path], float | None]
) -> list[float]:
    # A limit anywhere between this cgroup and the top of its hierarchy binds this process.
    found = []
    while True:
        quota = read_quota(directory)
        if quota is not None:
            found.append(quota)
        if directory == top or top not in directory.parents:
            return found
        directory = directory.parent


def _ratio(quota: str, period: str) -> float | None:
    try:
        q, p = int(quota), int(period)
    except ValueError:
        return None
    return q / p if q > 0 and p > 0 else None


def _read_text(path: str | Path) -> str | None:
    try:
        return Path(path).read_text()
    except OSError:
        return None


cpu_count.__module__ = "anypool"
