"""pool.stream: a generator running in a worker hands its items to the caller as it yields them,
never more than ``buffer`` items ahead of the consumer; a consumer that stops early closes the
generator in its worker (its ``finally:`` runs, the worker is kept) or, if the generator does not
respond within kill_grace, kills the worker; errors come after the items yielded before them.

On Ray (docs/distributed.md) a consumer that stops early kills the process running the generator
instead (``closes_generators``: its ``finally:`` does not run), Ray's worker processes are not the
pool's (``owns_workers``: no worker counts, no "same worker" for the next call), and
``BrokenWorkerError`` does not say which process died, nor how (``reports_exits``): those
assertions are the local pool's; on Ray the tests check what Ray promises instead.

Files, not timing, prove the order: a generator that must not be running ahead waits for a file
the test creates, or logs each item it produces to a file the test reads.
"""

from __future__ import annotations

import asyncio
import gc
import re
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
import sniffio
import trio

import anypool
import workers
from anypool.backends import Feature
from support import (
    ASYNCIO_BACKEND_IDS,
    ASYNCIO_BACKENDS,
    assert_items_before_a_crash,
    assert_pool_serves,
    contract,
    contract_pool,
    gone,
    killed,
    stays_true,
    wait_until_async,
)

pytestmark = [
    pytest.mark.usefixtures("contract_backend"),
    pytest.mark.needs(Feature.STREAM),
    pytest.mark.anyio,
    # A stream that hangs fails in seconds rather than after the suite's default timeout.
    pytest.mark.timeout(30),
]

# STREAM.md: buffer defaults to 16.
DEFAULT_BUFFER = 64  # documented in README.md and docs/index.md
KILL_GRACE = 0.5
# How long a generator's log must stay the same length to count as no longer growing.
STABLE_PERIOD = 0.3

KINDS = ["sync", "async"]


# --- helpers ---------------------------------------------------------------------------------


def generator(name: str, kind: str) -> Callable[..., Any]:
    """The worker generator function ``name`` (``kind == "sync"``) or its async twin."""
    return getattr(workers, name if kind == "sync" else f"async_{name}")


def buffered(pool: anypool.Pool, buffer: int | None) -> anypool.Pool:
    """``pool`` itself for the default buffer, else a view with that buffer."""
    return pool if buffer is None else pool.with_options(buffer=buffer)


async def collect_into(received: list[object], items: anypool.StreamResults) -> None:
    """Append each item to ``received``, so that what came before an exception stays seen."""
    async for item in items:
        received.append(item)


def text_of(path: Path) -> str:
    return path.read_text() if path.exists() else ""


def lines_in(log: Path) -> int:
    return text_of(log).count("\n")


async def settled_line_count(log: Path, timeout: float = 5.0) -> int:
    """The number of lines in ``log`` once it has stopped growing for STABLE_PERIOD seconds
    (or after ``timeout`` seconds, if it never does)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        count = lines_in(log)
        if await stays_true(lambda count=count: lines_in(log) == count, STABLE_PERIOD):
            return count
    return lines_in(log)


class ConsumerError(Exception):
    """Raised by the test's own loop body, not by a worker."""


# --- ways to stop early ----------------------------------------------------------------------
#
# Each takes ``count`` items (pids) from the stream that ``open_stream`` makes, then stops
# consuming in its own way; it returns the pid and how many seconds stopping took.

OpenStream = Callable[[], anypool.StreamResults]
TAKEN = 3


async def break_out_of_async_with(open_stream: OpenStream) -> tuple[int, float]:
    taken: list[int] = []
    async with open_stream() as items:
        async for pid in items:
            taken.append(pid)
            if len(taken) == TAKEN:
                started = time.monotonic()
                break
    return taken[0], time.monotonic() - started


async def raise_out_of_async_with(open_stream: OpenStream) -> tuple[int, float]:
    taken: list[int] = []
    started: list[float] = []

    async def consume_then_fail() -> None:
        async with open_stream() as items:
            async for pid in items:
                taken.append(pid)
                if len(taken) == TAKEN:
                    started.append(time.monotonic())
                    raise ConsumerError

    with pytest.raises(ConsumerError):
        await consume_then_fail()
    return taken[0], time.monotonic() - started[0]


async def aclose_after_a_bare_async_for(open_stream: OpenStream) -> tuple[int, float]:
    taken: list[int] = []
    items = open_stream()
    async for pid in items:
        taken.append(pid)
        if len(taken) == TAKEN:
            break
    started = time.monotonic()
    await items.aclose()
    return taken[0], time.monotonic() - started


async def drop_after_a_bare_async_for(open_stream: OpenStream) -> tuple[int, float]:
    taken: list[int] = []
    items = open_stream()
    async for pid in items:
        taken.append(pid)
        if len(taken) == TAKEN:
            break
    started = time.monotonic()
    del items
    gc.collect()
    return taken[0], time.monotonic() - started


async def anyio_move_on_after(open_stream: OpenStream) -> tuple[int, float]:
    taken: list[int] = []
    with anyio.move_on_after(60) as scope:
        async with open_stream() as items:
            async for pid in items:
                taken.append(pid)
                if len(taken) == TAKEN:
                    started = time.monotonic()
                    scope.deadline = anyio.current_time()
                    await anyio.sleep_forever()
    assert scope.cancelled_caught
    return taken[0], time.monotonic() - started


async def trio_move_on_after(open_stream: OpenStream) -> tuple[int, float]:
    taken: list[int] = []
    with trio.move_on_after(60) as scope:
        async with open_stream() as items:
            async for pid in items:
                taken.append(pid)
                if len(taken) == TAKEN:
                    started = time.monotonic()
                    scope.deadline = trio.current_time()
                    await trio.sleep_forever()
    assert scope.cancelled_caught
    return taken[0], time.monotonic() - started


async def asyncio_task_cancel(open_stream: OpenStream) -> tuple[int, float]:
    taken: list[int] = []

    async def consume() -> None:
        async with open_stream() as items:
            async for pid in items:
                taken.append(pid)
                if len(taken) == TAKEN:
                    await asyncio.Event().wait()

    task = asyncio.create_task(consume())
    assert await wait_until_async(lambda: len(taken) == TAKEN)
    started = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    return taken[0], time.monotonic() - started


Leave = Callable[[OpenStream], Awaitable[tuple[int, float]]]

ANYIO_WAYS_TO_LEAVE = [
    break_out_of_async_with,
    raise_out_of_async_with,
    aclose_after_a_bare_async_for,
    drop_after_a_bare_async_for,
    anyio_move_on_after,
]


async def assert_leaving_closes_the_generator_and_keeps_the_worker(
    leave: Leave, kind: str, tmp_path: Path
) -> None:
    """Local: leaving closes the generator (GeneratorExit: its ``finally:`` runs) and keeps its
    worker for the next call. Ray: leaving kills the process running the generator (its
    ``finally:`` does not run), and the pool serves the next call."""
    outcome = tmp_path / "outcome"
    # One worker: the next call waits for it rather than starting another.
    async with contract_pool(1) as pool:
        pid, _ = await leave(lambda: pool.stream(generator("yield_pid_forever", kind), outcome))
        if contract().closes_generators:
            assert await wait_until_async(lambda: text_of(outcome)), (
                "the generator's finally never ran"
            )
            assert text_of(outcome) == "GeneratorExit"
        else:
            assert await killed(pid), f"the generator's process {pid} outlived the stream"
        await assert_pool_serves(pool, pid)


async def assert_leaving_kills_a_worker_whose_generator_blocks_when_closed(
    leave: Leave, kind: str, tmp_path: Path
) -> None:
    closing = tmp_path / "closing"
    fn = generator("yield_pid_forever_then_block_when_closed", kind)
    async with contract_pool(1, kill_grace=KILL_GRACE) as pool:
        pid, seconds = await leave(lambda: pool.stream(fn, closing))
        assert seconds < KILL_GRACE + 2
        assert await wait_until_async(closing.exists), "GeneratorExit never reached the generator"
        assert await wait_until_async(lambda: gone(pid), timeout=3)
        assert await pool.run(workers.current_pid) != pid


# --- items -----------------------------------------------------------------------------------


async def test_stream_returns_stream_results_without_being_awaited() -> None:
    async with contract_pool(1) as pool:
        items = pool.stream(workers.count_up, 3)
        assert isinstance(items, anypool.StreamResults)
        await items.aclose()


@pytest.mark.parametrize("buffer", [1, None], ids=["buffer=1", "default buffer"])
@pytest.mark.parametrize("kind", KINDS)
async def test_bare_async_for_yields_every_item_in_order(kind: str, buffer: int | None) -> None:
    async with contract_pool(1) as pool:
        stream = buffered(pool, buffer).stream(generator("count_up", kind), 40)
        assert [item async for item in stream] == list(range(40))


@pytest.mark.parametrize("buffer", [1, None], ids=["buffer=1", "default buffer"])
@pytest.mark.parametrize("kind", KINDS)
async def test_async_with_yields_every_item_in_order(kind: str, buffer: int | None) -> None:
    async with (
        contract_pool(1) as pool,
        buffered(pool, buffer).stream(generator("count_up", kind), 40) as items,
    ):
        assert [item async for item in items] == list(range(40))


async def test_async_generator_runs_on_the_callers_kind_of_event_loop() -> None:
    # asyncio and uvloop callers get asyncio in the worker; trio callers get trio.
    expected = "trio" if sniffio.current_async_library() == "trio" else "asyncio"
    async with contract_pool(1) as pool:
        stream = pool.stream(workers.yield_event_loop_library)
        assert [item async for item in stream] == [expected]


@pytest.mark.parametrize("kind", KINDS)
async def test_an_item_arrives_while_the_generator_is_blocked_before_the_next(
    kind: str, tmp_path
) -> None:
    # The generator produces its second item only once the test has received the first.
    release = tmp_path / "release"
    received: list[object] = []
    async with contract_pool(1) as pool:
        async for item in pool.stream(generator("yield_then_wait_for", kind), release, 1, 2):
            received.append(item)
            release.touch()
    assert received == [1, 2]


# --- backpressure ----------------------------------------------------------------------------


@pytest.mark.parametrize("buffer", [1, 4, None], ids=["buffer=1", "buffer=4", "default buffer"])
@pytest.mark.parametrize("kind", KINDS)
async def test_items_produced_never_exceed_items_taken_plus_buffer(
    kind: str, buffer: int | None, tmp_path
) -> None:
    bound = max(DEFAULT_BUFFER if buffer is None else buffer, contract().least_stream_bound)
    log = tmp_path / "produced"
    taken = 0
    async with (
        contract_pool(1) as pool,
        buffered(pool, buffer).stream(generator("count_forever_logging", kind), log) as items,
    ):
        async for item in items:
            assert item == taken
            taken += 1
            assert lines_in(log) <= taken + bound
            if taken == 5:
                break
        # While the consumer pauses, the endless generator runs up to the bound and no further.
        produced = await settled_line_count(log)
        assert produced <= taken + bound


@pytest.mark.parametrize("buffer", [0, -1])
async def test_buffer_below_one_raises_value_error_from_with_options(buffer: int) -> None:
    async with contract_pool(1) as pool:
        with pytest.raises(ValueError, match="buffer"):
            pool.with_options(buffer=buffer)


# --- stopping early --------------------------------------------------------------------------


@pytest.mark.parametrize("leave", ANYIO_WAYS_TO_LEAVE)
@pytest.mark.parametrize("kind", KINDS)
async def test_stopping_early_closes_the_generator_and_keeps_the_worker(
    kind: str, leave: Leave, tmp_path
) -> None:
    await assert_leaving_closes_the_generator_and_keeps_the_worker(leave, kind, tmp_path)


@pytest.mark.parametrize("anyio_backend", ["trio"])
@pytest.mark.parametrize("kind", KINDS)
async def test_trio_move_on_after_closes_the_generator_and_keeps_the_worker(
    kind: str, tmp_path
) -> None:
    await assert_leaving_closes_the_generator_and_keeps_the_worker(
        trio_move_on_after, kind, tmp_path
    )


@pytest.mark.parametrize("anyio_backend", ASYNCIO_BACKENDS, ids=ASYNCIO_BACKEND_IDS)
@pytest.mark.parametrize("kind", KINDS)
async def test_asyncio_task_cancel_closes_the_generator_and_keeps_the_worker(
    kind: str, tmp_path
) -> None:
    await assert_leaving_closes_the_generator_and_keeps_the_worker(
        asyncio_task_cancel, kind, tmp_path
    )


@pytest.mark.parametrize("kind", KINDS)
async def test_leaving_after_the_generator_has_returned_keeps_the_worker_serving_calls(
    kind: str, tmp_path
) -> None:
    # The generator has returned (its end is on its way) when the consumer leaves after one item.
    finished = tmp_path / "finished"
    fn = generator("yield_then_note_the_end", kind)
    async with contract_pool(1) as pool:
        pid = await pool.run(workers.current_pid)
        async with pool.stream(fn, [1, 2, 3], finished) as items:
            async for _ in items:
                assert await wait_until_async(finished.exists)
                break
        await assert_pool_serves(pool, pid)


# kill_grace after GeneratorExit: the local pool's own (Ray sends no GeneratorExit: leaving
# kills the generator's process at once, as the tests above check).
@pytest.mark.backends("local")
@pytest.mark.timing
@pytest.mark.parametrize("leave", ANYIO_WAYS_TO_LEAVE)
@pytest.mark.parametrize("kind", KINDS)
async def test_stopping_early_kills_a_worker_whose_generator_blocks_when_closed(
    kind: str, leave: Leave, tmp_path
) -> None:
    await assert_leaving_kills_a_worker_whose_generator_blocks_when_closed(leave, kind, tmp_path)


# kill_grace after GeneratorExit: the local pool's own (Ray sends no GeneratorExit: leaving
# kills the generator's process at once, as the tests above check).
@pytest.mark.backends("local")
@pytest.mark.timing
@pytest.mark.parametrize("anyio_backend", ["trio"])
@pytest.mark.parametrize("kind", KINDS)
async def test_trio_move_on_after_kills_a_worker_whose_generator_blocks_when_closed(
    kind: str, tmp_path
) -> None:
    await assert_leaving_kills_a_worker_whose_generator_blocks_when_closed(
        trio_move_on_after, kind, tmp_path
    )


# kill_grace after GeneratorExit: the local pool's own (Ray sends no GeneratorExit: leaving
# kills the generator's process at once, as the tests above check).
@pytest.mark.backends("local")
@pytest.mark.timing
@pytest.mark.parametrize("anyio_backend", ASYNCIO_BACKENDS, ids=ASYNCIO_BACKEND_IDS)
@pytest.mark.parametrize("kind", KINDS)
async def test_asyncio_task_cancel_kills_a_worker_whose_generator_blocks_when_closed(
    kind: str, tmp_path
) -> None:
    await assert_leaving_kills_a_worker_whose_generator_blocks_when_closed(
        asyncio_task_cancel, kind, tmp_path
    )


# --- errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
async def test_exception_from_the_generator_is_raised_after_the_items_before_it(
    kind: str,
) -> None:
    fn = generator("yield_then_raise", kind)
    received: list[object] = []
    async with contract_pool(1) as pool:
        pid = await pool.run(workers.current_pid)
        with pytest.raises(ValueError, match=r"^broke after two items$") as info:
            await collect_into(received, pool.stream(fn, [1, 2], "broke after two items"))
        assert received == [1, 2]
        assert type(info.value) is ValueError
        assert isinstance(info.value.__cause__, anypool.RemoteTraceback)
        assert fn.__name__ in str(info.value.__cause__)
        await assert_pool_serves(pool, pid)


@pytest.mark.parametrize(
    ("fn", "args"),
    [(workers.square, (3,)), (workers.running_event_loop, ())],
    ids=["function", "coroutine function"],
)
async def test_a_function_that_is_not_a_generator_function_raises_type_error(
    fn: Callable[..., Any], args: tuple[object, ...]
) -> None:
    async with contract_pool(1) as pool:
        with pytest.raises(TypeError) as info:
            await collect_into([], pool.stream(fn, *args))
        assert isinstance(info.value.__cause__, anypool.RemoteTraceback)
        assert await pool.run(workers.square, 3) == 9


@pytest.mark.parametrize("kind", KINDS)
async def test_worker_dying_mid_stream_raises_broken_worker_error_after_the_items_before_it(
    kind: str,
) -> None:
    received: list[object] = []
    async with contract_pool(1) as pool:
        with pytest.raises(anypool.BrokenWorkerError) as info:
            await collect_into(received, pool.stream(generator("yield_then_exit", kind), [1, 2], 3))
        assert_items_before_a_crash(received, [1, 2])
        if contract().reports_exits:
            assert info.value.exitcode == 3
            pid = info.value.pid
            assert pid is not None
            assert await wait_until_async(lambda: gone(pid))
        else:
            assert (info.value.pid, info.value.exitcode) == (None, None)
        assert await pool.run(workers.square, 3) == 9


@pytest.mark.parametrize("kind", KINDS)
async def test_an_unpicklable_item_raises_serialization_error_and_keeps_the_worker(
    kind: str,
) -> None:
    received: list[object] = []
    async with contract_pool(1) as pool:
        pid = await pool.run(workers.current_pid)
        stream = pool.stream(generator("yield_a_lock_between", kind), "before", "after")
        with pytest.raises(anypool.SerializationError, match=re.escape("_thread.lock")):
            await collect_into(received, stream)
        assert received == ["before"]
        await assert_pool_serves(pool, pid)


@pytest.mark.parametrize("kind", KINDS)
async def test_an_item_that_cannot_be_unpickled_raises_serialization_error_and_keeps_the_worker(
    kind: str,
) -> None:
    received: list[object] = []
    async with contract_pool(1) as pool:
        pid = await pool.run(workers.current_pid)
        # The stream stays referenced, as in ``try: async for ...``: the error alone must end it.
        stream = pool.stream(generator("yield_an_unloadable_item_between", kind), "before", "after")
        with pytest.raises(anypool.SerializationError):
            await collect_into(received, stream)
        assert received == ["before"]
        with anyio.fail_after(5):
            await assert_pool_serves(pool, pid)


async def test_stream_on_a_closed_pool_raises_pool_closed_error_when_iterated() -> None:
    async with contract_pool(1) as pool:
        pass
    items = pool.stream(workers.count_up, 3)
    with pytest.raises(anypool.PoolClosedError):
        await collect_into([], items)


async def test_stream_on_a_closed_pool_raises_pool_closed_error_in_async_with() -> None:
    async with contract_pool(1) as pool:
        pass
    with pytest.raises(anypool.PoolClosedError):
        async with pool.stream(workers.count_up, 3) as items:
            await collect_into([], items)


# --- stats -----------------------------------------------------------------------------------


async def test_a_stream_counts_as_one_call_running_until_its_end(tmp_path) -> None:
    # (On Ray the pool counts calls only: Ray's worker processes are Ray's.)
    release = tmp_path / "release"
    fn = workers.yield_then_wait_for
    async with contract_pool(1) as pool:
        async with pool.stream(fn, release, 1, 2) as items:
            async for item in items:
                if item == 1:
                    running = pool.stats()
                    release.touch()
        finished = pool.stats()
    assert (running.calls_running, running.calls_completed) == (1, 0)
    assert (finished.calls_running, finished.calls_completed) == (0, 1)
    if contract().owns_workers:
        assert (running.workers_busy, finished.workers_busy) == (1, 0)


async def test_a_stream_that_raises_counts_as_one_failed_call() -> None:
    async with contract_pool(1) as pool:
        with pytest.raises(ValueError, match="broke"):
            await collect_into([], pool.stream(workers.yield_then_raise, [1, 2, 3], "broke"))
        stats = pool.stats()
    assert (stats.calls_running, stats.calls_completed, stats.calls_failed) == (0, 0, 1)
