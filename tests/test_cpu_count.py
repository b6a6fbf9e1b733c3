"""anypool.cpu_count: the CPUs this process may use, honouring affinity and cgroup quotas."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import anypool
from anypool import _cpu


def test_cpu_count_is_at_least_one_and_at_most_the_affinity_mask() -> None:
    count = anypool.cpu_count()
    assert isinstance(count, int)
    assert 1 <= count <= len(os.sched_getaffinity(0))


def test_pool_defaults_to_cpu_count_workers() -> None:
    assert anypool.Pool().max_workers == anypool.cpu_count()


@pytest.mark.parametrize(
    ("quota", "expected"),
    [(0.1, 1), (1.0, 1), (1.5, 2), (1000.0, None)],
    ids=["tenth", "one", "one-and-a-half", "above-affinity"],
)
def test_cpu_count_rounds_a_cgroup_quota_up_and_never_exceeds_affinity(
    monkeypatch: pytest.MonkeyPatch, quota: float, expected: int | None
) -> None:
    affinity = len(os.sched_getaffinity(0))
    monkeypatch.setattr(_cpu, "cgroup_cpu_quota", lambda text, root: quota)
    assert anypool.cpu_count() == min(affinity, expected or affinity)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("max 100000\n", None), ("150000 100000\n", 1.5), ("50000 100000", 0.5), ("", None)],
)
def test_parse_cpu_max(text: str, expected: float | None) -> None:
    assert _cpu.parse_cpu_max(text) == expected


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_cgroup_v2_quota_is_the_tightest_along_the_path(tmp_path: Path) -> None:
    write(tmp_path / "cpu.max", "max 100000\n")
    write(tmp_path / "outer" / "cpu.max", "100000 100000\n")
    write(tmp_path / "outer" / "inner" / "cpu.max", "250000 100000\n")
    assert _cpu.cgroup_cpu_quota("0::/outer/inner\n", tmp_path) == 1.0


def test_cgroup_v2_without_a_limit_has_no_quota(tmp_path: Path) -> None:
    write(tmp_path / "service" / "cpu.max", "max 100000\n")
    assert _cpu.cgroup_cpu_quota("0::/service\n", tmp_path) is None


def test_cgroup_v1_cfs_quota(tmp_path: Path) -> None:
    cgroup = tmp_path / "cpu,cpuacct" / "docker" / "abc"
    write(cgroup / "cpu.cfs_quota_us", "50000\n")
    write(cgroup / "cpu.cfs_period_us", "100000\n")
    text = "12:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n"
    assert _cpu.cgroup_cpu_quota(text, tmp_path) == 0.5


def test_cgroup_v1_unlimited_cfs_quota(tmp_path: Path) -> None:
    cgroup = tmp_path / "cpu,cpuacct" / "docker" / "abc"
    write(cgroup / "cpu.cfs_quota_us", "-1\n")
    write(cgroup / "cpu.cfs_period_us", "100000\n")
    assert _cpu.cgroup_cpu_quota("4:cpu,cpuacct:/docker/abc\n", tmp_path) is None


def test_no_cgroup_information_means_no_quota(tmp_path: Path) -> None:
    assert _cpu.cgroup_cpu_quota("", tmp_path) is None
