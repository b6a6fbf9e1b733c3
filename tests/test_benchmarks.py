"""The benchmarks run (in their quick mode), so they never rot. No timing is asserted."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_quick(script: str) -> str:
    process = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), "--quick"],
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert process.returncode == 0, process.stderr
    return process.stdout


def test_map_throughput_benchmark_runs_and_reports_every_contender() -> None:
    report = run_quick("map_throughput.py")
    for contender in ("anypool (asyncio)", "anypool (trio)", "multiprocessing.Pool.imap"):
        assert contender in report


def test_stream_throughput_benchmark_runs_on_both_event_loops() -> None:
    report = run_quick("stream_throughput.py")
    assert "anypool (stream, asyncio)" in report
    assert "anypool (stream, trio)" in report
