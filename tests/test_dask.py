"""The Dask backend against a real ``LocalCluster`` (two worker processes, one thread each),
started once for the session: what only Dask's backend does. The contract tests run on it too
(``support.POOL_BACKENDS``); these are its own: a cancelled call stops (what Dask's own
cancellation cannot do), ``cancel="abandon"`` is Dask's behaviour, a dead call's process is
named, a stream that ends early leaves neither a process nor a waiting Dask worker nor a queue
behind, what it refuses, the cluster it starts and closes; on asyncio, uvloop and trio.

Marked ``dask``: ``make test-dask`` runs these in a pytest process of their own (CI too); the
default ``make test`` leaves them out.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import anyio
import psutil
import pytest

import anypool
import workers
from anypool.backends import DaskBackend
from support import DASK_CLIENT, dead, descendants, gone, read_pid, wait_until_async

pytestmark = [pytest.mark.anyio, pytest.mark.dask]


def dask_pool(max_workers: int | None = 2, **options: object) -> anypool.Pool:
    return anypool.Pool(max_workers, backend=DaskBackend(DASK_CLIENT[0], **options))  # type: ignore[arg-type]


def ticks(path: Path) -> int:
    return len(path.with_suffix(".ticks").read_text().splitlines())


async def cancel_once_running(pool: anypool.Pool, pid_file: Path) -> None:
    """Run ``append_pid_and_ticks`` for a minute, cancelled once it has begun ticking."""
    with anyio.CancelScope() as scope:

        async def cancel_once_started() -> None:
            await read_pid(pid_file)
            assert await wait_until_async(lambda: ticks(pid_file) > 0, 10.0)
            scope.cancel()

        async with anyio.create_task_group() as group:
            group.start_soon(cancel_once_started)
            await pool.run(workers.append_pid_and_ticks, pid_file, 60.0)
    assert scope.cancelled_caught


async def test_a_cancelled_call_stops_and_its_process_is_killed(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    async with dask_pool() as pool:
        await cancel_once_running(pool, pid_file)
        pid = int(pid_file.read_text())
        assert await wait_until_async(lambda: dead(pid), 10.0)
        # The work stopped: the file the call appended to grows no more.
        stopped = ticks(pid_file)
        await anyio.sleep(0.3)
        assert ticks(pid_file) == stopped
        assert await pool.run(workers.square, 5) == 25
        stats = pool.stats()
        assert (stats.calls_cancelled, stats.calls_running, stats.calls_pending) == (1, 0, 0)


async def test_with_cancel_abandon_a_cancelled_call_runs_on_as_dasks_own_does(
    tmp_path: Path,
) -> None:
    pid_file = tmp_path / "pid"
    async with dask_pool(cancel="abandon") as pool:
        with anyio.move_on_after(30):
            await cancel_once_running_briefly(pool, pid_file)
        grown = ticks(pid_file)
        assert await wait_until_async(lambda: ticks(pid_file) > grown + 5, 10.0)
        assert not dead(int(pid_file.read_text()))


async def cancel_once_running_briefly(pool: anypool.Pool, pid_file: Path) -> None:
    with anyio.CancelScope() as scope:

        async def cancel_once_started() -> None:
            await read_pid(pid_file)
            scope.cancel()

        async with anyio.create_task_group() as group:
            group.start_soon(cancel_once_started)
            await pool.run(workers.append_pid_and_ticks, pid_file, 2.0)


async def test_a_call_whose_process_dies_names_it_and_its_exit_code() -> None:
    async with dask_pool() as pool:
        with pytest.raises(anypool.BrokenWorkerError) as caught:
            await pool.run(workers.exit_immediately, 3)
        assert caught.value.exitcode == 3
        assert caught.value.pid is not None
        assert await wait_until_async(lambda: gone(caught.value.pid), 10.0)  # type: ignore[arg-type]
        assert str(caught.value) == (
            f"worker process {caught.value.pid} exited with code 3 during the call to "
            "exit_immediately"
        )
        assert await pool.run(workers.square, 4) == 16


async def test_calls_run_in_processes_of_the_dask_workers_not_in_the_workers() -> None:
    client = DASK_CLIENT[0]
    dask_workers = set(client.run(os.getpid).values())
    async with dask_pool() as pool:
        pid = await pool.run(workers.current_pid)
        assert psutil.Process(pid).ppid() in dask_workers
    # The pool's end stops the children it left idle.
    assert await wait_until_async(lambda: gone(pid), 10.0)


def stream_queues() -> list[str]:
    """The queues that anypool's streams hold in the Dask scheduler."""

    def names(dask_scheduler: Any) -> list[str]:
        return [name for name in dask_scheduler.extensions["queues"].queues if "anypool" in name]

    found: list[str] = DASK_CLIENT[0].run_on_scheduler(names)
    return found


async def assert_both_dask_workers_serve(pool: anypool.Pool) -> None:
    """Two calls run at once, one on each Dask worker (one thread each): neither thread is
    held by a stream that was left."""
    with anyio.fail_after(20):
        async with anyio.create_task_group() as group:
            for _ in range(2):
                group.start_soon(pool.run, workers.sleep_then_return, 0.5, None)


async def test_leaving_a_stream_early_kills_its_generator_and_frees_its_dask_worker(
    tmp_path: Path,
) -> None:
    outcome = tmp_path / "outcome"
    async with dask_pool() as pool:
        async with pool.stream(workers.yield_pid_forever, outcome) as items:
            pid = await anext(aiter(items))
        assert await wait_until_async(lambda: dead(pid), 10.0)
        assert not outcome.exists()  # killed: a generator held back runs no finally
        await assert_both_dask_workers_serve(pool)
        stats = pool.stats()
        assert (stats.calls_cancelled, stats.calls_running, stats.calls_pending) == (1, 0, 0)
    assert await wait_until_async(lambda: not stream_queues(), 10.0)


async def test_a_stream_cancelled_while_it_waits_for_an_item_leaves_nothing_waiting(
    tmp_path: Path,
) -> None:
    release = tmp_path / "release"
    async with dask_pool() as pool:
        received: list[object] = []
        with anyio.move_on_after(1.0) as scope:
            async for item in pool.stream(workers.yield_then_wait_for, release, "first", "second"):
                received.append(item)
        assert scope.cancelled_caught
        assert received == ["first"]
        await assert_both_dask_workers_serve(pool)
    assert await wait_until_async(lambda: not stream_queues(), 10.0)


async def test_terminating_a_pool_during_a_stream_frees_its_dask_worker(tmp_path: Path) -> None:
    log = tmp_path / "produced"
    async with dask_pool() as pool:

        async def take_slowly() -> None:
            async with pool.stream(workers.count_forever_logging, log) as items:
                async for _ in items:
                    # Not taking more: the generator waits for the consumer's credit.
                    await anyio.sleep(2.0)

        async def consume() -> None:
            with pytest.raises(anypool.PoolClosedError):
                await take_slowly()

        async with anyio.create_task_group() as group:
            group.start_soon(consume)
            assert await wait_until_async(
                lambda: log.exists() and log.read_text().count("\n") > 3, 10.0
            )
            await pool.terminate()
    async with dask_pool() as pool:
        await assert_both_dask_workers_serve(pool)
    assert await wait_until_async(lambda: not stream_queues(), 10.0)


async def test_what_dask_cannot_do_is_refused_by_name() -> None:
    async with dask_pool() as pool:
        with pytest.raises(
            anypool.UnsupportedError,
            match=r"^the dask backend does not support pool\.open_channel: use Dask's actors",
        ):
            pool.open_channel(workers.square)
        queue: anypool.Queue[int] = anypool.Queue()
        with pytest.raises(
            anypool.UnsupportedError,
            match=r"^the dask backend does not support anypool\.Queue: use distributed\.Queue",
        ):
            await pool.run(workers.identity, queue)
    with pytest.raises(ValueError, match=r"^start_method: options of the pool's default backend"):
        anypool.Pool(backend=DaskBackend(DASK_CLIENT[0]), start_method="fork")
    with pytest.raises(ValueError, match=r"^cancel must be 'kill' or 'abandon', not 'stop'"):
        DaskBackend(DASK_CLIENT[0], cancel="stop")  # type: ignore[arg-type]


@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # (an asynchronous Client needs asyncio)
async def test_an_asynchronous_client_is_refused_with_what_to_pass_instead() -> None:
    import distributed

    address = DASK_CLIENT[0].scheduler.address
    async with distributed.Client(address, asynchronous=True) as client:
        with pytest.raises(ValueError, match=r"pass a synchronous Client, or the scheduler"):
            DaskBackend(client)


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_pool_given_an_address_connects_and_leaves_the_cluster_running() -> None:
    client = DASK_CLIENT[0]
    async with anypool.Pool(2, backend=DaskBackend(client.scheduler.address)) as pool:
        assert await pool.run(workers.square, 3) == 9
    assert client.submit(pow, 2, 5).result() == 32


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_pool_without_a_cluster_starts_one_and_closes_it() -> None:
    before = set(descendants())
    async with anypool.Pool(1, backend=DaskBackend()) as pool:
        pid = await pool.run(workers.current_pid)
        started = set(descendants()) - before
        assert started
    assert gone(pid) or await wait_until_async(lambda: gone(pid), 10.0)
    assert await wait_until_async(lambda: not (set(descendants()) & started), 10.0)
    assert os.getpid() not in started
