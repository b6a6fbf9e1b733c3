"""The benchmark runs end to end in its quick mode, so that it never rots. No timing is asserted:
speed is judged by the full benchmark's ratios (``make bench``), never by a unit test."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from benchmarks import contenders, on_dask, on_ray, report, scenarios

ROOT = Path(__file__).resolve().parent.parent


def run_benchmark(*arguments: str, timeout: float) -> subprocess.CompletedProcess[str]:
    """Run ``python -m benchmarks arguments``. Past ``timeout`` seconds the test fails with what
    the benchmark printed so far (which contender it was measuring), after its whole process
    group is killed: the benchmark, each contender's runner and the workers of the pool that
    runner measures (killing only the benchmark would leave those running)."""
    with subprocess.Popen(
        [sys.executable, "-m", "benchmarks", *arguments],
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    ) as process:
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            stdout, stderr = process.communicate()
            pytest.fail(f"the benchmark ran over {timeout} s; its output:\n{stdout}\n{stderr}")
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


# Under coverage, on a busy machine, the quick run takes over a minute (every interpreter it
# starts measures itself); the test's own bound sits above the benchmark's, so that a slow run
# fails with the benchmark's output, not pytest-timeout's traceback.
@pytest.mark.timeout(300)
def test_quick_benchmark_measures_every_scenario_and_writes_the_report(tmp_path: Path) -> None:
    process = run_benchmark("--quick", "--output", str(tmp_path), timeout=240)
    assert process.returncode == 0, process.stderr
    summary = process.stdout
    page = (tmp_path / "benchmarks.md").read_text()
    for scenario in scenarios.SCENARIOS:
        assert f"## {scenario.title}" in page
        assert (tmp_path / "benchmarks" / f"{scenario.key}.png").stat().st_size > 0
        for backend in ("asyncio", "trio"):
            # anypool was measured on both event loops (a number, not an error), and the
            # summary compares it with a peer wherever one ran the scenario.
            assert f"{scenario.key}: {scenario.metrics[0].label}" in summary
            assert any(
                line.split()[0].startswith(scenario.key) and backend in line.split()
                for line in summary.splitlines()
            )
    for contender in contenders.CONTENDERS:
        # Every peer the test environment installs took part without an error.
        assert contender.name in page
    assert "error:" not in page, page
    assert (tmp_path / "benchmarks" / "scaling.png").stat().st_size > 0
    assert "Floor: a raw pipe round trip takes" in page


@pytest.mark.ray
@pytest.mark.timeout(300)
def test_the_ray_section_compares_anypool_on_ray_with_rays_own_api(tmp_path: Path) -> None:
    # Its own local Ray, in the benchmark's processes (not the session's): each contender's
    # process checks that none of that Ray's processes outlives ray.shutdown().
    process = run_benchmark("--quick", "--only", "ray", "--output", str(tmp_path), timeout=240)
    assert process.returncode == 0, process.stderr
    page = (tmp_path / "benchmarks.md").read_text()
    assert report.RAY_HEADING in page
    assert "error:" not in page, page
    # No other section: --quick leaves the peers out once --only names the Ray section.
    assert "## anypool against the best peer" not in page
    number = r"[\d,]+(\.\d+)? (ms|items/s)"
    for scenario in on_ray.SCENARIOS:
        for metric in scenario.metrics:
            for backend in ("asyncio", "trio"):
                # anypool ran on both event loops; Ray's own API on asyncio, which its trio row
                # is compared with.
                native = " (asyncio)" if backend == "trio" else ""
                row = rf"\| {re.escape(scenario.title)}: {re.escape(metric.label)} \| {backend} \| "
                row += rf"{number} \| {number}{re.escape(native)} \| \d+\.\d\dx \|"
                assert re.search(row, page), (row, page)
                assert re.search(rf"^{scenario.key}: .* {backend} ", process.stdout, re.MULTILINE)


@pytest.mark.dask
@pytest.mark.timeout(300)
def test_the_dask_section_compares_anypool_on_dask_with_dasks_own_api(tmp_path: Path) -> None:
    # Its own LocalCluster, in the benchmark's processes (not the session's): each contender's
    # process checks that none of that cluster's processes outlives its close.
    process = run_benchmark("--quick", "--only", "dask", "--output", str(tmp_path), timeout=240)
    assert process.returncode == 0, process.stderr
    page = (tmp_path / "benchmarks.md").read_text()
    assert report.DASK_HEADING in page
    assert report.RAY_HEADING not in page
    assert "error:" not in page, page
    # No other section: --quick leaves the peers out once --only names the Dask section.
    assert "## anypool against the best peer" not in page
    number = r"[\d,]+(\.\d+)? (ms|items/s)"
    native = on_dask.by_name(on_dask.NATIVE)
    for scenario in on_dask.SCENARIOS:
        for metric in scenario.metrics:
            for backend in ("asyncio", "trio"):
                # anypool ran on both event loops; Dask's own API on asyncio, which its trio row
                # is compared with, in every scenario it has a way to run (not a generator's).
                row = rf"\| {re.escape(scenario.title)}: {re.escape(metric.label)} \| {backend} \| "
                if scenario.applies(native):
                    suffix = " (asyncio)" if backend == "trio" else ""
                    row += rf"{number} \| {number}{re.escape(suffix)} \| \d+\.\d\dx \|"
                else:
                    row += rf"{number} \| - \| - \|"
                assert re.search(row, page), (row, page)
                assert re.search(rf"^{scenario.key}: .* {backend} ", process.stdout, re.MULTILINE)
