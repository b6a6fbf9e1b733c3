"""anypool.run_sync: what anyio.to_process.run_sync and trio_parallel.run_sync document, on
anypool's default pool: results, exceptions as themselves, a call that a cancellation waits for
by default (shielded), one that it kills when cancellable, and a limiter that bounds the calls
running at once."""

from __future__ import annotations

import asyncio
from pathlib import Path

import anyio
import psutil
import pytest
import trio

import anypool
import workers
from support import (
    ASYNCIO_BACKEND_IDS,
    ASYNCIO_BACKENDS,
    gone,
    read_pid,
    stays_true,
    wait_until_async,
)

on_asyncio = pytest.mark.parametrize("anyio_backend", ASYNCIO_BACKENDS, ids=ASYNCIO_BACKEND_IDS)


@pytest.mark.anyio
async def test_run_sync_returns_the_result() -> None:
    assert await anypool.run_sync(workers.combine, 1, 2) == 3
    assert await anypool.run_sync(lambda: "lambda") == "lambda"


@pytest.mark.anyio
async def test_run_sync_runs_on_the_default_pool() -> None:
    assert await anypool.run_sync(workers.current_pid) == await anypool.run(workers.current_pid)


@pytest.mark.anyio
async def test_run_sync_raises_the_functions_exception_as_itself() -> None:
    with pytest.raises(ValueError, match="from run_sync") as info:
        await anypool.run_sync(workers.raise_value_error, "from run_sync")
    assert isinstance(info.value.__cause__, anypool.RemoteTraceback)


@pytest.mark.anyio
async def test_a_cancellation_waits_for_the_call_by_default(tmp_path: Path) -> None:
    release = tmp_path / "release"
    results: list[int] = []
    scope = anyio.CancelScope()

    async def call() -> None:
        with scope:
            results.append(
                await anypool.run_sync(workers.write_pid_and_wait_for, tmp_path / "pid", release)
            )

    async with anyio.create_task_group() as group:
        group.start_soon(call)
        pid = await read_pid(tmp_path / "pid")
        scope.cancel()
        assert await stays_true(lambda: not results and psutil.pid_exists(pid), 0.3), (
            "the cancellation did not wait for the call"
        )
        release.touch()
    # The call ended, and its result came back: under a cancel scope, the cancellation is
    # raised at the caller's next checkpoint, as with anyio and trio-parallel.
    assert results == [pid]
    assert psutil.pid_exists(pid), "the worker was killed"


@pytest.mark.anyio
async def test_a_caller_cancelled_already_starts_nothing(tmp_path: Path) -> None:
    with anyio.CancelScope() as scope:
        scope.cancel()
        await anypool.run_sync(workers.touch_and_return, tmp_path / "ran", "ran")
    assert scope.cancelled_caught
    assert not (tmp_path / "ran").exists()


@pytest.mark.anyio
@pytest.mark.parametrize("option", ["cancellable", "kill_on_cancel"])
async def test_a_cancellation_kills_the_worker_of_a_cancellable_call(
    tmp_path: Path, option: str
) -> None:
    with anyio.CancelScope() as scope:

        async def cancel_when_started() -> None:
            await read_pid(tmp_path / "pid")
            scope.cancel()

        async with anyio.create_task_group() as group:
            group.start_soon(cancel_when_started)
            await anypool.run_sync(
                workers.write_pid_and_sleep, tmp_path / "pid", 60, **{option: True}
            )
    assert scope.cancelled_caught
    # As for anypool.run: reaped before the cancellation left run_sync.
    assert gone(int((tmp_path / "pid").read_text()))
    assert await anypool.run_sync(workers.square, 3) == 9


@pytest.mark.anyio
@on_asyncio
async def test_asyncio_wait_for_waits_for_the_call_then_times_out(tmp_path: Path) -> None:
    release = tmp_path / "release"
    call = asyncio.ensure_future(
        anypool.run_sync(workers.write_pid_and_wait_for, tmp_path / "pid", release)
    )
    pid = await read_pid(tmp_path / "pid")
    timed = asyncio.ensure_future(asyncio.wait_for(call, 0.01))
    assert await stays_true(lambda: not timed.done(), 0.3), "the timeout did not wait"
    release.touch()
    with pytest.raises(asyncio.TimeoutError):
        await timed
    assert psutil.pid_exists(pid), "the worker was killed"


@pytest.mark.anyio
@on_asyncio
async def test_asyncio_task_cancel_is_raised_once_the_call_has_ended(tmp_path: Path) -> None:
    release = tmp_path / "release"
    task = asyncio.ensure_future(
        anypool.run_sync(workers.write_pid_and_wait_for, tmp_path / "pid", release)
    )
    pid = await read_pid(tmp_path / "pid")
    task.cancel()
    assert await stays_true(lambda: not task.done(), 0.3), "the cancellation did not wait"
    release.touch()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert psutil.pid_exists(pid), "the worker was killed"


@pytest.mark.anyio
async def test_a_limiter_bounds_the_calls_running_at_once(tmp_path: Path) -> None:
    release = tmp_path / "release"
    limiter = anyio.CapacityLimiter(1)
    pid_files = [tmp_path / f"pid-{n}" for n in range(2)]

    def started() -> list[Path]:
        return [path for path in pid_files if path.exists()]

    async with anyio.create_task_group() as group:
        for path in pid_files:
            group.start_soon(
                lambda path=path: anypool.run_sync(
                    workers.write_pid_and_wait_for, path, release, limiter=limiter
                )
            )
        assert await wait_until_async(
            lambda: len(started()) == 1 and limiter.statistics().tasks_waiting == 1, 20
        )
        assert await stays_true(lambda: len(started()) == 1, 0.3)
        release.touch()
    assert len(started()) == 2


def test_a_trio_capacity_limiter_serves_as_limiter_under_trio() -> None:
    async def main() -> list[int]:
        limiter = trio.CapacityLimiter(1)
        results: list[int] = []

        async def call(n: int) -> None:
            results.append(await anypool.run_sync(workers.square, n, limiter=limiter))

        async with trio.open_nursery() as nursery:
            for n in range(3):
                nursery.start_soon(call, n)
        return sorted(results)

    assert trio.run(main) == [0, 1, 4]


@pytest.mark.anyio
@pytest.mark.parametrize("option", ["cancellable", "kill_on_cancel"])
async def test_an_option_that_is_not_a_bool_is_refused(option: str) -> None:
    with pytest.raises(TypeError, match=f"^{option} must be True or False, not 1$"):
        await anypool.run_sync(workers.square, 2, **{option: 1})  # type: ignore[call-overload]
