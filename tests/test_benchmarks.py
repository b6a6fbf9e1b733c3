"""The benchmark runs end to end in its quick mode, so that it never rots. No timing is asserted:
speed is judged by the full benchmark's ratios (``make bench``), never by a unit test."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from benchmarks import contenders, scenarios

ROOT = Path(__file__).resolve().parent.parent


def test_quick_benchmark_measures_every_scenario_and_writes_the_report(tmp_path: Path) -> None:
    process = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--output", str(tmp_path)],
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
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
