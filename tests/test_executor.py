"""anypool.Executor: what concurrent.futures documents for an executor, plus what
ProcessPoolExecutor lacks: a cancelled or timed-out call (``future.cancel()``, a cancelled
``run_in_executor`` task, ``asyncio.wait_for``, ``asyncio.timeout``, ``map``'s timeout) kills
the worker running it, so that nothing keeps running, and ``shutdown`` does not wait for it."""

from __future__ import annotations

import asyncio
import concurrent.futures
import multiprocessing
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

import anypool
import workers
from support import (
    ASYNCIO_BACKEND_IDS,
    ASYNCIO_BACKENDS,
    gone,
    pool_processes,
    read_pid,
    read_pid_blocking,
    run_script,
    wait_until,
    write_script,
)

KILLED_WITHIN = 10.0
"""Seconds a cancelled call's worker may take to be gone: the executor kills it in its own
thread, after the cancellation (generous, for a busy machine)."""


def killed(pid: int) -> bool:
    return wait_until(lambda: gone(pid), KILLED_WITHIN)


def executor_threads() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name == "anypool.Executor"]


# --- results and errors ------------------------------------------------------------------------


def test_submit_returns_the_calls_result() -> None:
    with anypool.Executor(2) as executor:
        assert executor.submit(workers.combine, 1, 2, scale=3).result() == 9
        assert executor.submit(lambda: "lambda").result() == "lambda"
        assert executor.submit(workers.running_event_loop).result() == "asyncio"


def test_a_calls_exception_is_raised_with_its_original_type_and_remote_traceback() -> None:
    with anypool.Executor(1) as executor:
        future = executor.submit(workers.raise_value_error, "from the executor")
        with pytest.raises(ValueError, match="from the executor") as info:
            future.result()
        assert type(future.exception()) is ValueError
        assert isinstance(info.value.__cause__, anypool.RemoteTraceback)


def test_a_worker_that_dies_fails_only_its_call_and_the_executor_goes_on() -> None:
    with anypool.Executor(1) as executor:
        with pytest.raises(anypool.BrokenWorkerError):
            executor.submit(workers.exit_immediately, 3).result()
        assert executor.submit(workers.square, 4).result() == 16


def test_submit_refuses_what_is_not_callable() -> None:
    message = r"^fn must be callable, not 'square' \(a str\)$"
    with anypool.Executor(1) as executor, pytest.raises(TypeError, match=message):
        executor.submit("square")  # type: ignore[arg-type]


def test_submit_after_shutdown_raises_runtime_error() -> None:
    executor = anypool.Executor(1)
    assert executor.submit(workers.square, 2).result() == 4
    executor.shutdown()
    with pytest.raises(RuntimeError, match="after shutdown") as info:
        executor.submit(workers.square, 2)
    assert isinstance(info.value, anypool.PoolClosedError)


# --- cancellation --------------------------------------------------------------------------------


def test_future_cancel_kills_the_worker_running_the_call(tmp_path: Path) -> None:
    with anypool.Executor(2) as executor:
        future = executor.submit(workers.write_pid_and_sleep, tmp_path / "pid", 60)
        pid = read_pid_blocking(tmp_path / "pid")
        assert future.cancel()
        assert future.cancelled()
        assert killed(pid), f"worker {pid} outlived the cancelled call"
        assert executor.submit(workers.square, 5).result() == 25


def test_a_cancelled_call_that_waits_for_a_worker_never_runs(tmp_path: Path) -> None:
    release = tmp_path / "release"
    with anypool.Executor(1) as executor:
        running = executor.submit(workers.write_pid_and_wait_for, tmp_path / "pid", release)
        pid = read_pid_blocking(tmp_path / "pid")
        waiting = executor.submit(workers.touch_and_return, tmp_path / "ran", "ran")
        assert waiting.cancel()
        release.touch()
        assert running.result() == pid
        assert executor.submit(workers.square, 2).result() == 4
    assert not (tmp_path / "ran").exists()


def test_wait_and_as_completed_count_a_cancelled_future_as_done(tmp_path: Path) -> None:
    with anypool.Executor(1) as executor:
        future = executor.submit(workers.write_pid_and_sleep, tmp_path / "pid", 60)
        read_pid_blocking(tmp_path / "pid")
        future.cancel()
        done, not_done = concurrent.futures.wait([future], timeout=30)
        assert (done, not_done) == ({future}, set())
        assert list(concurrent.futures.as_completed([future], timeout=30)) == [future]


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ASYNCIO_BACKENDS, ids=ASYNCIO_BACKEND_IDS)
async def test_run_in_executor_returns_the_result_and_raises_the_calls_exception() -> None:
    loop = asyncio.get_running_loop()
    with anypool.Executor(1) as executor:
        assert await loop.run_in_executor(executor, workers.square, 6) == 36
        with pytest.raises(ValueError, match="awaited") as info:
            await loop.run_in_executor(executor, workers.raise_value_error, "awaited")
        assert isinstance(info.value.__cause__, anypool.RemoteTraceback)


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ASYNCIO_BACKENDS, ids=ASYNCIO_BACKEND_IDS)
async def test_cancelling_the_task_awaiting_run_in_executor_kills_the_worker(
    tmp_path: Path,
) -> None:
    loop = asyncio.get_running_loop()
    with anypool.Executor(1) as executor:

        async def call() -> object:
            return await loop.run_in_executor(
                executor, workers.write_pid_and_sleep, tmp_path / "pid", 60
            )

        task = asyncio.ensure_future(call())
        pid = await read_pid(tmp_path / "pid")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert killed(pid), f"worker {pid} outlived the cancelled task"
        assert await loop.run_in_executor(executor, workers.square, 3) == 9


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ASYNCIO_BACKENDS, ids=ASYNCIO_BACKEND_IDS)
async def test_asyncio_wait_for_timeout_kills_the_worker(tmp_path: Path) -> None:
    loop = asyncio.get_running_loop()
    with anypool.Executor(1) as executor:
        call = loop.run_in_executor(executor, workers.write_pid_and_sleep, tmp_path / "pid", 60)
        # Running before the timeout starts: the timeout can only hit a running call.
        pid = await read_pid(tmp_path / "pid")
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(call, 0.05)
        assert killed(pid), f"worker {pid} outlived the timeout"


@pytest.mark.skipif(sys.version_info < (3, 11), reason="asyncio.timeout is new in Python 3.11")
@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ASYNCIO_BACKENDS, ids=ASYNCIO_BACKEND_IDS)
async def test_asyncio_timeout_kills_the_worker_and_the_with_block_does_not_wait_for_it(
    tmp_path: Path,
) -> None:
    # The case: ProcessPoolExecutor's worker spun on after the timeout, and leaving its
    # block waited for that orphaned call.
    loop = asyncio.get_running_loop()
    with anypool.Executor(1) as executor:
        call = loop.run_in_executor(executor, workers.write_pid_and_sleep, tmp_path / "pid", 60)
        pid = await read_pid(tmp_path / "pid")
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.05):
                await call
        started_leaving = time.monotonic()
    # (The orphan would have held the block for a minute.)
    assert time.monotonic() - started_leaving < 30
    assert gone(pid)


# --- map -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("chunksize", [1, 3])
def test_map_returns_the_results_in_order(chunksize: int) -> None:
    with anypool.Executor(2) as executor:
        results = executor.map(workers.combine, range(10), range(10, 20), chunksize=chunksize)
        assert list(results) == [a + b for a, b in zip(range(10), range(10, 20), strict=True)]


def test_map_raises_a_calls_exception_when_it_gets_to_that_call() -> None:
    with anypool.Executor(2) as executor:
        results = executor.map(workers.square_unless_negative, [1, 2, -3, 4])
        assert next(results) == 1
        assert next(results) == 4
        with pytest.raises(ValueError, match="negative item -3"):
            next(results)


def test_map_timeout_raises_and_kills_the_call_it_gives_up_on(tmp_path: Path) -> None:
    with anypool.Executor(2) as executor:
        results = executor.map(workers.write_pid_and_sleep, [tmp_path / "pid"], [60], timeout=0.05)
        # The timeout runs from the map() call; the call is surely running when it is due.
        pid = read_pid_blocking(tmp_path / "pid")
        with pytest.raises(concurrent.futures.TimeoutError):
            next(results)
        assert killed(pid), f"worker {pid} outlived map's timeout"


def test_map_refuses_a_chunksize_below_one() -> None:
    with anypool.Executor(1) as executor, pytest.raises(ValueError, match="chunksize"):
        executor.map(workers.square, [1], chunksize=0)


# --- shutdown ------------------------------------------------------------------------------------


def test_shutdown_waits_for_running_and_waiting_calls_then_reaps_everything() -> None:
    executor = anypool.Executor(1)
    futures = [executor.submit(workers.sleep_then_return, 0.1, n) for n in range(3)]
    executor.shutdown(wait=True)
    assert [future.result(timeout=0) for future in futures] == [0, 1, 2]
    assert pool_processes() == set()
    assert executor_threads() == []


def test_shutdown_without_wait_returns_at_once_and_the_calls_still_finish(
    tmp_path: Path,
) -> None:
    release = tmp_path / "release"
    executor = anypool.Executor(1)
    future = executor.submit(workers.write_pid_and_wait_for, tmp_path / "pid", release)
    pid = read_pid_blocking(tmp_path / "pid")
    executor.shutdown(wait=False)
    assert not future.done()
    with pytest.raises(RuntimeError):
        executor.submit(workers.square, 1)
    release.touch()
    assert future.result(timeout=30) == pid
    assert wait_until(lambda: not executor_threads() and not pool_processes(), 30)


def test_shutdown_cancel_futures_cancels_the_waiting_calls_not_the_running_one(
    tmp_path: Path,
) -> None:
    release = tmp_path / "release"
    executor = anypool.Executor(1)
    running = executor.submit(workers.write_pid_and_wait_for, tmp_path / "pid", release)
    pid = read_pid_blocking(tmp_path / "pid")
    waiting = [
        executor.submit(workers.touch_and_return, tmp_path / f"ran-{n}", n) for n in range(3)
    ]
    executor.shutdown(wait=False, cancel_futures=True)
    assert all(future.cancelled() for future in waiting)
    assert not running.cancelled()
    release.touch()
    executor.shutdown(wait=True)
    assert running.result(timeout=0) == pid
    assert not list(tmp_path.glob("ran-*"))
    assert pool_processes() == set()


def test_shutdown_of_an_executor_never_used_does_nothing() -> None:
    executor = anypool.Executor(2)
    executor.shutdown()
    executor.shutdown()
    assert executor_threads() == []


def test_the_with_block_shuts_down_and_reaps_every_worker() -> None:
    with anypool.Executor(2) as executor:
        pids = {executor.submit(workers.current_pid).result() for _ in range(2)}
    assert all(gone(pid) for pid in pids)
    assert executor_threads() == []


SCRIPT_WITHOUT_SHUTDOWN = """
    import os

    import anypool

    if __name__ == "__main__":
        executor = anypool.Executor(1)
        print(executor.submit(os.getpid).result())
"""


def test_an_executor_never_shut_down_is_shut_down_at_interpreter_exit(tmp_path: Path) -> None:
    output = run_script(write_script(tmp_path, SCRIPT_WITHOUT_SHUTDOWN))
    assert output.stderr == ""
    assert gone(int(output.stdout))


# --- options -------------------------------------------------------------------------------------


def test_initializer_and_initargs_run_in_each_worker() -> None:
    with anypool.Executor(1, initializer=workers.initialize, initargs=("set up",)) as executor:
        assert executor.submit(workers.initialization_state).result()[:2] == ("set up", 1)


@pytest.mark.parametrize("name", ["max_tasks_per_child", "max_tasks_per_worker"])
def test_max_tasks_per_child_replaces_a_worker_after_that_many_calls(name: str) -> None:
    with anypool.Executor(1, **{name: 1}) as executor:
        first = executor.submit(workers.current_pid).result()
        assert executor.submit(workers.current_pid).result() != first


def test_mp_context_gives_its_start_method() -> None:
    context = multiprocessing.get_context("spawn")
    with anypool.Executor(1, context) as executor:
        assert "start_method='spawn'" in repr(executor)
        # A spawned worker is this process's child (a forkserver's is the server's).
        pid = executor.submit(workers.current_pid).result()
        assert psutil.Process(pid).ppid() == psutil.Process().pid


@pytest.mark.parametrize(
    "options",
    [
        {"mp_context": multiprocessing.get_context("spawn"), "start_method": "spawn"},
        {"max_tasks_per_child": 1, "max_tasks_per_worker": 1},
    ],
    ids=["mp_context-and-start_method", "max_tasks_per_child-and-max_tasks_per_worker"],
)
def test_one_option_under_two_names_is_refused(options: dict[str, object]) -> None:
    with pytest.raises(TypeError, match="not both"):
        anypool.Executor(1, **options)  # type: ignore[arg-type]


def test_a_bad_option_raises_in_the_constructor() -> None:
    with pytest.raises(ValueError, match="max_workers"):
        anypool.Executor(0)
    assert executor_threads() == []
