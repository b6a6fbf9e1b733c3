"""The benchmarks run (in their quick mode), so they never rot. No timing is asserted."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_map_throughput_benchmark_runs_and_reports_every_contender() -> None:
    process = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "map_throughput.py"), "--quick"],
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert process.returncode == 0, process.stderr
    for contender in ("anypool (asyncio)", "anypool (trio)", "multiprocessing.Pool.imap"):
        assert contender in process.stdout
