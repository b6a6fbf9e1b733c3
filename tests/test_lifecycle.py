"""close, join, terminate and async with: which calls finish, which fail, and that no worker
process outlives the pool."""

from __future__ import annotations

import gc
import os
import signal
import time

import anyio
import anyio.abc
import pytest

import anypool
import workers
from support import (
    contract,
    contract_pool,
    dead,
    gone,
    killed,
    pool_processes,
    read_pid,
    run_script,
    start_script,
    wait_until,
    where_local,
    write_script,
)

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("contract_backend")]


async def test_run_after_close_raises_pool_closed_error() -> None:
    pool = contract_pool(1)
    assert await pool.run(workers.square, 2) == 4
    pool.close()
    with pytest.raises(anypool.PoolClosedError):
        await pool.run(workers.square, 2)
    await pool.join()


@pytest.mark.parametrize("how", ["async-with", "close", "terminate"])
async def test_entering_a_closed_pool_raises_pool_closed_error(how: str) -> None:
    pool = contract_pool(1)
    if how == "async-with":
        async with pool:
            assert await pool.run(workers.square, 2) == 4
    elif how == "close":
        pool.close()
    else:
        await pool.terminate()
    with pytest.raises(anypool.PoolClosedError, match="the pool is closed"):
        await pool.__aenter__()
    await pool.join()


@pytest.mark.backends("local")
async def test_a_pool_dropped_unclosed_warns_and_its_workers_are_stopped(tmp_path) -> None:
    pools = [contract_pool(2)]
    await pools[0].__aenter__()
    async with anyio.create_task_group() as group:
        for name in ("first", "second"):
            group.start_soon(pools[0].run, workers.write_pid_and_sleep, tmp_path / name, 0.2)
    pids = [await read_pid(tmp_path / name) for name in ("first", "second")]
    assert len(set(pids)) == 2
    del group

    def drop_the_pool() -> None:
        pools.clear()
        gc.collect()

    with pytest.warns(ResourceWarning, match=r"garbage-collected without being closed; its 2 "):
        drop_the_pool()
    # Stopped and reaped as the pool was collected, not later.
    assert [pid for pid in pids if not gone(pid)] == []


async def test_join_waits_for_running_and_queued_calls_then_stops_the_workers(tmp_path) -> None:
    release = tmp_path / "release"
    events: list[object] = []

    async def call(index: int) -> None:
        pid_file = tmp_path / f"{index}.pid"
        events.append(await pool.run(workers.write_pid_and_wait_for, pid_file, release))

    async def join() -> None:
        await pool.join()
        events.append("joined")

    pool = contract_pool(1)
    async with anyio.create_task_group() as group:
        group.start_soon(call, 1)
        pid = await read_pid(tmp_path / "1.pid")
        group.start_soon(call, 2)  # queued behind the first: the only worker is busy
        await anyio.wait_all_tasks_blocked()
        pool.close()
        group.start_soon(join)
        await anyio.wait_all_tasks_blocked()
        assert events == []
        release.touch()
    if contract().owns_workers:
        assert events == [pid, pid, "joined"]
    else:
        # Both calls, in their order, then the join (the second may run in another process).
        assert events[0] == pid
        assert isinstance(events[1], int)
        assert events[2:] == ["joined"]
    assert pool_processes() == set()
    if contract().owns_workers:
        assert gone(pid)


async def test_join_before_close_raises() -> None:
    async with contract_pool(1) as pool:
        with pytest.raises(RuntimeError):
            await pool.join()


@pytest.mark.timing
async def test_terminate_kills_busy_workers_and_their_calls_raise_pool_closed_error(
    tmp_path,
) -> None:
    outcomes: list[BaseException] = []

    async def call(index: int) -> None:
        try:
            await pool.run(workers.write_pid_and_sleep, tmp_path / f"{index}.pid", 60)
        except anypool.PoolClosedError as error:
            outcomes.append(error)

    pool = contract_pool(2, **where_local(kill_grace=0.5))
    async with anyio.create_task_group() as group:
        group.start_soon(call, 1)
        group.start_soon(call, 2)
        pids = [await read_pid(tmp_path / "1.pid"), await read_pid(tmp_path / "2.pid")]
        started = time.monotonic()
        await pool.terminate()
        assert time.monotonic() - started < pool.kill_grace + 2.0
        assert [pid for pid in pids if not await killed(pid)] == []
        assert pool_processes() == set()
    assert len(outcomes) == 2
    assert all(isinstance(error, anypool.PoolClosedError) for error in outcomes)


async def test_terminate_fails_calls_waiting_for_a_worker(tmp_path) -> None:
    outcomes: list[str] = []

    async def call(index: int) -> None:
        try:
            await pool.run(workers.write_pid_and_sleep, tmp_path / f"{index}.pid", 60)
        except anypool.PoolClosedError:
            outcomes.append(f"call {index} closed")

    pool = contract_pool(1)
    async with anyio.create_task_group() as group:
        group.start_soon(call, 1)
        await read_pid(tmp_path / "1.pid")
        group.start_soon(call, 2)
        await anyio.wait_all_tasks_blocked()
        await pool.terminate()
    assert sorted(outcomes) == ["call 1 closed", "call 2 closed"]
    assert not (tmp_path / "2.pid").exists()


async def test_terminate_stops_idle_workers() -> None:
    pool = contract_pool(1)
    pid = await pool.run(workers.current_pid)
    await pool.terminate()
    if contract().owns_workers:
        assert gone(pid)
    with pytest.raises(anypool.PoolClosedError):
        await pool.run(workers.current_pid)


async def test_leaving_async_with_normally_waits_for_calls_started_in_a_task_group(
    tmp_path,
) -> None:
    # A service's task group outlives its pool block: requests still being handled when the
    # block ends are finished, not dropped.
    results: list[str] = []

    async def handle_request() -> None:
        results.append(
            await pool.run(
                workers.write_pid_wait_for_and_linger, tmp_path / "pid", tmp_path / "pid", 0.3
            )
        )

    async with anyio.create_task_group() as group:
        async with contract_pool(1) as pool:
            group.start_soon(handle_request)
            pid = await read_pid(tmp_path / "pid")
        assert results == ["finished"]
        if contract().owns_workers:
            assert gone(pid)
        assert pool_processes() == set()


async def test_leaving_async_with_by_an_exception_terminates_the_pool(tmp_path) -> None:
    outcomes: list[BaseException] = []

    async def handle_request(pool: anypool.Pool) -> None:
        try:
            await pool.run(workers.write_pid_and_sleep, tmp_path / "pid", 60)
        except anypool.PoolClosedError as error:
            outcomes.append(error)

    async def serve_until_it_fails(group: anyio.abc.TaskGroup) -> None:
        async with contract_pool(1, **where_local(kill_grace=0.5)) as pool:
            group.start_soon(handle_request, pool)
            await read_pid(tmp_path / "pid")
            raise RuntimeError("boom")

    async with anyio.create_task_group() as group:
        with pytest.raises(RuntimeError, match="boom"):
            await serve_until_it_fails(group)
        assert await killed(int((tmp_path / "pid").read_text()))
        assert pool_processes() == set()
    assert len(outcomes) == 1


async def test_leaving_async_with_by_cancellation_terminates_the_pool(tmp_path) -> None:
    outcomes: list[BaseException] = []

    async def handle_request() -> None:
        try:
            await pool.run(workers.write_pid_and_sleep, tmp_path / "pid", 60)
        except anypool.PoolClosedError as error:
            outcomes.append(error)

    async with anyio.create_task_group() as group:
        with anyio.CancelScope() as scope:
            async with contract_pool(1, **where_local(kill_grace=0.5)) as pool:
                # The request runs in the outer group: only the pool block is cancelled.
                group.start_soon(handle_request)
                pid = await read_pid(tmp_path / "pid")
                scope.cancel()
                await anyio.sleep_forever()
        assert scope.cancelled_caught
        assert await killed(pid)
        assert pool_processes() == set()
    assert len(outcomes) == 1


async def test_stats_after_the_pool_is_closed_show_no_workers_and_the_totals() -> None:
    async with contract_pool(2) as pool:
        for value in range(3):
            await pool.run(workers.square, value)
    assert pool.stats() == anypool.PoolStats(
        workers_alive=0,
        workers_idle=0,
        workers_busy=0,
        calls_running=0,
        calls_completed=3,
        calls_failed=0,
        calls_cancelled=0,
        workers_replaced=0,
    )


async def test_stats_after_terminate_show_no_workers(tmp_path) -> None:
    outcomes: list[BaseException] = []

    async def call() -> None:
        try:
            await pool.run(workers.write_pid_and_sleep, tmp_path / "pid", 60)
        except anypool.PoolClosedError as error:
            outcomes.append(error)

    pool = contract_pool(1)
    async with anyio.create_task_group() as group:
        group.start_soon(call)
        await read_pid(tmp_path / "pid")
        await pool.terminate()
    stats = pool.stats()
    assert (stats.workers_alive, stats.workers_idle, stats.workers_busy) == (0, 0, 0)
    assert stats.calls_running == 0
    assert len(outcomes) == 1


PARENT_DIES_SCRIPT = """
    import asyncio
    import os
    import sys
    import time
    from pathlib import Path

    import anypool


    def busy(marker):
        marker.touch()
        time.sleep(60)


    async def main(start_method, state, marker):
        pool = anypool.Pool(1, start_method=start_method)
        print(await pool.run(os.getpid), flush=True)
        if state == "busy":
            asyncio.ensure_future(pool.run(busy, marker))
            while not marker.exists():
                await asyncio.sleep(0.01)
        # Die at once: no cleanup, no atexit handlers, no closing of the pool.
        os._exit(0)


    if __name__ == "__main__":
        asyncio.run(main(sys.argv[1], sys.argv[2], Path(sys.argv[3])))
"""


@pytest.mark.backends("local")
@pytest.mark.parametrize("state", ["idle", "busy"])
@pytest.mark.parametrize("start_method", ["forkserver", "spawn", "fork"])
def test_workers_die_when_the_parent_process_dies(start_method: str, state: str, tmp_path) -> None:
    script = write_script(tmp_path, PARENT_DIES_SCRIPT)
    output = run_script(script, start_method, state, str(tmp_path / "busy"))
    pid = int(output.stdout)
    try:
        # The orphan is reaped by whoever adopts it, not by us: a zombie counts as dead.
        assert wait_until(lambda: dead(pid), timeout=5.0)
    finally:
        if not dead(pid):
            os.kill(pid, signal.SIGKILL)


PARENT_KILLED_SCRIPT = """
    import functools
    import os
    import sys
    import time
    from pathlib import Path

    import anyio

    import anypool


    def note_pid(directory, name):
        partial = directory / (name + ".partial")
        partial.write_text(str(os.getpid()))
        os.replace(partial, directory / (name + ".pid"))


    def busy(directory, name):
        note_pid(directory, name)
        time.sleep(60)


    def busy_generator(directory):
        yield 0
        busy(directory, "stream")
        yield 1


    def slow_initializer(directory):
        note_pid(directory, "initializer")
        time.sleep(60)


    async def main(start_method, stage, directory):
        if stage == "start-up":
            async with anypool.Pool(
                1, start_method=start_method, initializer=slow_initializer, initargs=(directory,)
            ) as pool:
                await pool.run(os.getpid)
            return
        async with anypool.Pool(3, start_method=start_method) as pool:
            async with anyio.create_task_group() as group:
                group.start_soon(pool.run, busy, directory, "run")
                async def map_busy():
                    async for _ in pool.map(functools.partial(busy, directory), ["map"]):
                        pass
                group.start_soon(map_busy)
                async def stream_busy():
                    async for _ in pool.stream(busy_generator, directory):
                        pass
                group.start_soon(stream_busy)


    if __name__ == "__main__":
        anyio.run(main, sys.argv[1], sys.argv[2], Path(sys.argv[3]))
"""


@pytest.mark.backends("local")
@pytest.mark.timing
@pytest.mark.parametrize("stage", ["busy", "start-up"])
@pytest.mark.parametrize("start_method", ["forkserver", "spawn", "fork"])
def test_workers_exit_within_a_second_of_the_parent_being_sigkilled(
    start_method: str, stage: str, tmp_path
) -> None:
    script = write_script(tmp_path, PARENT_KILLED_SCRIPT)
    names = ["initializer"] if stage == "start-up" else ["run", "map", "stream"]
    process = start_script(script, start_method, stage, str(tmp_path))
    try:
        pid_files = [tmp_path / f"{name}.pid" for name in names]
        assert wait_until(lambda: all(path.exists() for path in pid_files), timeout=30), (
            process.poll(),
            process.stderr.read() if process.poll() is not None and process.stderr else "",
        )
        worker_pids = [int(path.read_text()) for path in pid_files]
        os.kill(process.pid, signal.SIGKILL)
        killed = time.monotonic()
        # An orphan is reaped by whoever adopts it, not by us: a zombie counts as dead.
        assert wait_until(lambda: all(dead(pid) for pid in worker_pids), timeout=5.0)
        assert time.monotonic() - killed < 1.0
    finally:
        process.kill()
        process.communicate()
        for pid in worker_pids if "worker_pids" in locals() else []:
            if not dead(pid):
                os.kill(pid, signal.SIGKILL)
