"""The public API's types, as mypy --strict sees a user's code: what ``run`` returns and takes
follows ``fn`` (ParamSpec), ``async with pool.map(...)`` binds a MapResults, batches() and all,
and the items of ``pool.stream`` are what its generator yields.

The program below is checked, not run: each line marked ``# error`` must be reported, and
nothing else.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

PROGRAM = """
from collections.abc import AsyncIterator, Iterator

import anypool


def square(x: int) -> int:
    return x * x


async def fetch(url: str, *, retries: int = 3) -> bytes:
    return url.encode()


def count_up(n: int) -> Iterator[int]:
    yield from range(n)


async def ticks(n: int) -> AsyncIterator[float]:
    for tick in range(n):
        yield tick / 10


async def main() -> None:
    async with anypool.Pool(2) as pool:
        number: int = await pool.run(square, 3)
        data: bytes = await pool.run(fetch, "https://example.org", retries=1)
        text: str = await pool.run(square, 3)  # error
        await pool.run(square, "three")  # error
        await pool.run(fetch, "https://example.org", tries=1)  # error
        async with pool.map(square, range(10)) as results:
            batches: AsyncIterator[list[int]] = results.batches()
            async for value in results:
                total: int = value
        async with pool.stream(count_up, 5) as items:
            async for item in items:
                counted: int = item
                label: str = item  # error
        async for tick in pool.stream(ticks, 5):
            seconds: float = tick
            name: str = tick  # error
        pool.stream(count_up, "five")  # error
"""


@pytest.mark.timeout(300)
def test_mypy_reports_exactly_the_lines_marked_error(tmp_path: Path) -> None:
    program = tmp_path / "program.py"
    program.write_text(PROGRAM)
    checked = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--no-incremental",
            "--cache-dir",
            str(tmp_path / "cache"),
            "--config-file",
            "",
            str(program),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    reported = sorted(
        {int(line) for line in re.findall(r"^program\.py:(\d+): error", checked.stdout, re.M)}
    )
    marked = [n for n, line in enumerate(PROGRAM.splitlines(), 1) if line.endswith("# error")]
    assert reported == marked, checked.stdout
