"""The public API's types, as mypy --strict sees a user's code: what ``run`` returns and takes
follows ``fn`` (ParamSpec); ``pool.map``'s items must be what ``fn`` takes and its results are
what ``fn`` returns, awaited for an ``async def``, with ``BaseException`` beside them under
``return_exceptions=True``; the items of ``pool.stream`` are what its generator yields; a
parent's ``Queue[T]`` passes for the ``WorkerQueue[T]`` a worker function takes; a channel's
types follow the worker's end, the other way round.

The programs below are checked, not run, by one mypy run: each line marked ``# error: <text>``
must be reported with ``<text>`` in its message, and nothing else.
"""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

HEADER = """\
from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import anypool


def square(x: int) -> int:
    return x * x


async def double(x: int) -> int:
    return 2 * x


async def numbers() -> AsyncIterator[int]:
    yield 1


async def words() -> AsyncIterator[str]:
    yield "one"
"""

# One program per behaviour; each is HEADER followed by its text.
PROGRAMS = {
    "run_and_stream_follow_fn": """
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
        text: str = await pool.run(square, 3)  # error: No overload variant of "run" of "PoolView"
        await pool.run(square, "three")  # error: argument types "Callable[[int], int]", "str"
        await pool.run(fetch, "https://example.org", tries=1)  # error: argument "tries"
        async with pool.map(square, range(10)) as results:
            batches: AsyncIterator[list[int]] = results.batches()
            async for value in results:
                total: int = value
        async with pool.stream(count_up, 5) as items:
            async for item in items:
                counted: int = item
                label: str = item  # error: (expression has type "int", variable has type "str")
        async for tick in pool.stream(ticks, 5):
            seconds: float = tick
            name: str = tick  # error: (expression has type "float", variable has type "str")
        pool.stream(count_up, "five")  # error: No overload variant of "stream" of "PoolView"
""",
    "map_results_of_an_async_fn_are_awaited": """
async def main(pool: anypool.Pool) -> None:
    async for doubled in pool.map(double, range(3)):
        number: int = doubled
        await doubled  # error: Incompatible types in "await" (actual type "int"
    async with pool.map(double, numbers(), chunksize="auto") as results:
        batches: AsyncIterator[list[int]] = results.batches()
    async for squared in pool.map(lambda x: x * x, range(3)):
        also: int = squared
""",
    "map_items_must_be_what_fn_takes": """
async def main(pool: anypool.Pool) -> None:
    pool.map(square, [1, 2, 3])
    pool.map(square, numbers())
    pool.map(double, range(3))
    pool.map(square, ["a"])  # error: Argument 1 to "map" of "PoolView" has incompatible type
    pool.map(square, words())  # error: Argument 1 to "map" of "PoolView" has incompatible type
    pool.map(double, ["a"])  # error: Argument 1 to "map" of "PoolView" has incompatible type
""",
    "map_return_exceptions_places_exceptions_among_results": """
async def main(pool: anypool.Pool, flag: bool) -> None:
    async for result in pool.map(square, range(3), return_exceptions=True):
        either: int | BaseException = result
        if not isinstance(result, BaseException):
            number: int = result
        bare: int = result  # error: (expression has type "int | BaseException", variable has
    async with pool.map(double, range(3), return_exceptions=True) as results:
        async for batch in results.batches():
            listed: list[int | BaseException] = batch
            wrong: list[int] = batch  # error: (expression has type "list[int | BaseException]"
    async for maybe in pool.map(square, range(3), return_exceptions=flag):
        unsure: int | BaseException = maybe
        sure: int = maybe  # error: (expression has type "int | BaseException", variable has
    async for plain in pool.map(square, range(3), return_exceptions=False):
        value: int = plain
""",
    "a_queue_passes_as_the_worker_queue_a_worker_takes": """
def produce(queue: anypool.WorkerQueue[int], n: int) -> None:
    for item in range(n):
        queue.put(item)


def drain(queue: anypool.WorkerQueue[int]) -> int:
    return sum(queue)


async def main(pool: anypool.Pool) -> None:
    queue: anypool.Queue[int] = anypool.Queue(maxsize=10)
    await pool.run(produce, queue, 3)
    await anypool.run(produce, queue, 3)
    drained: int = await pool.run(drain, queue)
    got: int = await queue.get()
    async for item in queue:
        number: int = item
    names: anypool.Queue[str] = anypool.Queue()
    await pool.run(produce, names, 3)  # error: "Queue[str]", "int"
    queue.put(1)  # error: Value of type "Coroutine[Any, Any, None]" must be used
    for each in queue:  # error: "None" not callable
        pass
""",
    "a_channel_is_typed_by_the_worker_end_the_other_way_round": """
def total(end: anypool.ChannelEnd[int, str], start: int) -> float:
    count = start
    for word in end:
        count += len(word)
        end.send(count)
    end.send("done")  # error: Argument 1 to "send" of "ChannelEnd" has incompatible type "str"
    return count / 2


async def shout(end: anypool.AsyncChannelEnd[str, str]) -> None:
    async for word in end:
        await end.send(word.upper())
    number: int = await end.recv()  # error: (expression has type "str", variable has type "int")


async def main(pool: anypool.Pool) -> None:
    async with pool.open_channel(total, 0) as channel:
        await channel.send("word")
        count: int = await channel.receive()
        async for item in channel:
            counted: int = item
        await channel.send(3)  # error: Argument 1 to "send" of "Channel" has incompatible type
        text: str = await channel.receive()  # error: (expression has type "int", variable has
    async with pool.open_channel(shout) as loud:
        await loud.send("hello")
        reply: str = await loud.receive()
    typed: anypool.Channel[str, int] = pool.open_channel(total, 0)
    backwards: anypool.Channel[int, str] = pool.open_channel(total, 0)  # error: No overload
    pool.open_channel(total, "zero")  # error: "Callable[[ChannelEnd[int, str], int], float]", "str"
""",
    "run_sync_and_the_executor_follow_fn": """
import concurrent.futures


async def main(executor: anypool.Executor) -> None:
    number: int = await anypool.run_sync(square, 3, cancellable=True)
    doubled: int = await anypool.run_sync(double, 3, kill_on_cancel=True)
    text: str = await anypool.run_sync(square, 3)  # error: Argument 1 to "run_sync" has
    await anypool.run_sync(square, "three")  # error: Argument 1 to "run_sync" has incompatible type
    await anypool.run_sync(square, 3, limiter=3)  # error: No overload variant of "run_sync"
    future: concurrent.futures.Future[int] = executor.submit(square, 3)
    executor.submit(square, "three")  # error: Argument 2 to "submit" of "Executor" has incompatible
""",
}

MARK = re.compile(r"# error: (.+)$")


@pytest.fixture(scope="module")
def mypy_errors(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[int, list[str]]]:
    """Each program's errors, by line: one mypy run over all of them (each run loads anypool's
    and anyio's types again, some seconds)."""
    directory = tmp_path_factory.mktemp("typing")
    for name, text in PROGRAMS.items():
        (directory / f"{name}.py").write_text(HEADER + text)
    checked = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--no-incremental",
            "--cache-dir",
            str(directory / "cache"),
            "--config-file",
            "",
            *(f"{name}.py" for name in PROGRAMS),
        ],
        capture_output=True,
        text=True,
        cwd=directory,
    )
    # (A summary line says that mypy checked the programs, rather than failing to start.)
    assert re.search(r"^(Found \d+ errors? in|Success:)", checked.stdout, re.M), checked
    errors: dict[str, dict[int, list[str]]] = {name: {} for name in PROGRAMS}
    for path, line, message in re.findall(r"^(.+?):(\d+): error: (.*)$", checked.stdout, re.M):
        errors[path.removesuffix(".py")].setdefault(int(line), []).append(message)
    return errors


@pytest.mark.timeout(300)
@pytest.mark.parametrize("name", PROGRAMS)
def test_mypy_reports_exactly_the_lines_marked_error(
    name: str, mypy_errors: dict[str, dict[int, list[str]]]
) -> None:
    lines = (HEADER + PROGRAMS[name]).splitlines()
    marked = {n: mark.group(1) for n, line in enumerate(lines, 1) if (mark := MARK.search(line))}
    reported = mypy_errors[name]
    assert sorted(reported) == sorted(marked), reported
    for line, text in marked.items():
        assert any(text in message for message in reported[line]), (line, text, reported[line])
