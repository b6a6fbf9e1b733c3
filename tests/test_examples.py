"""The examples, and the programs in README.md and docs/, run and print what they promise.

Each runs as a script in its own interpreter, the way a reader would run it. A ```python block in
the Markdown files counts as a complete program when it calls anyio.run, asyncio.run or trio.run;
other blocks are fragments and are not run.
"""

from __future__ import annotations

import functools
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
README = ROOT / "README.md"
GUIDE = ROOT / "docs" / "index.md"

PYTHON_BLOCK = re.compile(r"^```python[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)
ENTRY_POINTS = ("anyio.run(", "asyncio.run(", "trio.run(")


def programs_in(markdown: Path) -> list[str]:
    blocks = PYTHON_BLOCK.findall(markdown.read_text())
    return [block for block in blocks if any(call in block for call in ENTRY_POINTS)]


def program_params(markdown: Path) -> list[object]:
    text = markdown.read_text()
    params: list[object] = []
    for code in programs_in(markdown):
        line = text[: text.index(code)].count("\n") + 1
        params.append(pytest.param(code, id=f"{markdown.name}:{line}"))
    return params


def run_python(script: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run `script` with this interpreter, importing anypool from this checkout; expect exit 0."""
    paths = [str(ROOT / "src"), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    process = subprocess.run(
        [sys.executable, str(script)],
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(paths)},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert process.returncode == 0, (
        f"{script.name} exited with {process.returncode}\n"
        f"--- stdout\n{process.stdout}\n--- stderr\n{process.stderr}"
    )
    return process


@functools.cache
def run_example(script: Path) -> subprocess.CompletedProcess[str]:
    """Run an example file from the checkout's root, once per test session: every test of an
    example checks the same run (exit status 0, and what it printed). A run that fails is not
    kept, so each test of that example runs it again and fails on its own."""
    return run_python(script, cwd=ROOT)


def run_program(code: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "program.py"
    script.write_text(code)
    return run_python(script, cwd=tmp_path)


@pytest.mark.parametrize(
    "script",
    # (The Ray and Dask examples need Ray, Dask: the tests of each, marked ray, dask. The
    # FastAPI service serves until it is stopped: tests/test_fastapi_service.py runs it.)
    sorted(
        path
        for path in EXAMPLES.glob("*.py")
        if not path.name.startswith(("ray_", "dask_", "fastapi_"))
    ),
    ids=lambda path: path.name,
)
def test_example_runs(script: Path) -> None:
    run_example(script)


@pytest.mark.ray
def test_ray_cluster_example_runs_the_same_code_on_ray_and_kills_the_cancelled_call() -> None:
    # It starts a Ray of its own, in its own process, and stops it.
    process = run_example(EXAMPLES / "ray_cluster.py")
    assert "primes below 50 000: 5133" in process.stdout
    assert "primes below [10000, 20000, 30000, 40000] : [1229, 2262, 3245, 4203]" in process.stdout
    assert "cancelled the slow call: True" in process.stdout
    assert "and the pool goes on: 25" in process.stdout


@pytest.mark.dask
def test_dask_cluster_example_runs_the_same_code_on_dask_and_stops_the_cancelled_call() -> None:
    # It starts a Dask cluster of its own, in its own process, and closes it.
    process = run_example(EXAMPLES / "dask_cluster.py")
    assert "primes below 50 000: 5133" in process.stdout
    assert "primes below [10000, 20000, 30000, 40000] : [1229, 2262, 3245, 4203]" in process.stdout
    assert "primes below each thousand: [168, 303, 430, 550, 669]" in process.stdout
    assert "cancelled the slow call: True" in process.stdout
    assert "and the pool goes on: 25" in process.stdout


def test_quickstart_asyncio_prints_the_prime_counts() -> None:
    output = run_example(EXAMPLES / "quickstart_asyncio.py").stdout
    assert "[5133, 9592]" in output


def test_quickstart_trio_gives_up_and_goes_on() -> None:
    output = run_example(EXAMPLES / "quickstart_trio.py").stdout
    assert "primes below 100_000: 9592" in output
    assert "the pool is still usable: 6" in output


def test_demo_shows_a_result_a_remote_traceback_and_a_killed_worker() -> None:
    output = run_example(EXAMPLES / "demo.py").stdout
    for backend in ("asyncio", "trio"):
        assert f"===== {backend} =====" in output
    sections = output.split("===== trio =====")
    for section in sections:
        assert "primes below 100_000: 9592" in section
        assert "caught ValueError:" in section
        assert "its __cause__ is anypool.RemoteTraceback" in section
        assert "Traceback (most recent call last):" in section
        assert re.search(r"line \d+, in parse_setting\n", section), section
        assert re.search(r"worker \d+ was killed", section), section
        assert "the next call ran on a new worker" in section


def test_stream_progress_shows_partial_results_and_stops_the_generator_early() -> None:
    process = run_example(EXAMPLES / "stream_progress.py")
    assert "round 10: 200,000 samples, pi ~ 3.1" in process.stdout
    assert "round 11" not in process.stdout
    assert "the pool is free again: True" in process.stdout


def test_map_pipeline_consumes_the_async_source_and_shows_progress() -> None:
    process = run_example(EXAMPLES / "map_pipeline.py")
    assert re.search(r"smallest digest: item \d+ -> [0-9a-f]{12}", process.stdout)
    assert "2000it" in process.stderr  # the tqdm bar counted every result


def test_channel_compress_round_trips_through_the_worker() -> None:
    output = run_example(EXAMPLES / "channel_compress.py").stdout
    assert "summary from the worker: {'bytes in': 13107200, 'bytes out': " in output
    assert "round trip intact: " in output


def test_queue_fan_in_gets_every_report_then_ends() -> None:
    output = run_example(EXAMPLES / "queue_fan_in.py").stdout
    assert "the search from 100,000 found " in output
    # 5133 + 4459 + 4256 primes in the three ranges: a report per hundred in each.
    assert "reports received: 137" in output
    assert "primes below 150,000: 13848" in output


@pytest.mark.parametrize("code", program_params(README))
def test_readme_program_runs(code: str, tmp_path: Path) -> None:
    run_program(code, tmp_path)


@pytest.mark.parametrize("name", ["quickstart_asyncio.py", "quickstart_trio.py"])
def test_readme_quick_starts_are_the_example_files(name: str) -> None:
    assert (EXAMPLES / name).read_text() in programs_in(README)


@pytest.mark.parametrize("code", program_params(GUIDE))
def test_user_guide_program_runs(code: str, tmp_path: Path) -> None:
    run_program(code, tmp_path)
