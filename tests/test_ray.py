"""The Ray backend against a real local Ray, started once for the session (``ray.init(num_cpus=2,
include_dashboard=False)``): results, errors as themselves, a dead task's BrokenWorkerError, kill
on cancel (the task's process is gone), map, what it refuses, no thread per call; on asyncio,
uvloop and trio.

Marked ``ray``: ``make test-ray`` runs these in a pytest process of their own (CI too); the
default ``make test`` leaves them out, since Ray takes seconds to start and a gigabyte of memory.
Ray's own processes (its GCS, raylet and worker pool, which it replaces as it likes) are left out
of the leak check; the session's end checks that none outlives ``ray.shutdown()``.
"""

from __future__ import annotations

import threading
from pathlib import Path

import anyio
import pytest

import anypool
import workers
from anypool.backends import RayBackend
from support import dead, read_pid, wait_until_async

pytestmark = [pytest.mark.anyio, pytest.mark.ray]


def ray_pool(max_workers: int | None = 2) -> anypool.Pool:
    return anypool.Pool(max_workers, backend=RayBackend())


async def test_run_returns_results_of_functions_lambdas_and_keyword_arguments() -> None:
    async with ray_pool() as pool:
        assert await pool.run(workers.square, 12) == 144
        assert await pool.run(lambda x, y: x - y, 5, y=2) == 3
        assert await pool.run(workers.combine, 1, 2, scale=3, offset=4) == 13


async def test_an_async_function_runs_on_the_callers_kind_of_event_loop(
    anyio_backend_name: str,
) -> None:
    async with ray_pool() as pool:
        assert await pool.run(workers.running_event_loop) == anyio_backend_name


async def test_an_exception_comes_back_as_itself_with_its_remote_traceback() -> None:
    async with ray_pool() as pool:
        with pytest.raises(ValueError, match=r"^bad input$") as caught:
            await pool.run(workers.raise_value_error, "bad input")
        assert isinstance(caught.value.__cause__, anypool.RemoteTraceback)
        assert "raise_value_error" in str(caught.value.__cause__)
        assert await pool.run(workers.square, 3) == 9
        assert pool.stats().calls_failed == 1


async def test_a_task_whose_process_dies_raises_broken_worker_error_once() -> None:
    async with ray_pool() as pool:
        with pytest.raises(anypool.BrokenWorkerError, match="during the call to exit_immediately"):
            await pool.run(workers.exit_immediately, 3)
        assert await pool.run(workers.square, 4) == 16


async def test_what_cannot_be_pickled_raises_serialization_error_naming_it() -> None:
    async with ray_pool() as pool:
        with pytest.raises(anypool.SerializationError, match="argument 0"):
            await pool.run(workers.identity, threading.Lock())
        with pytest.raises(anypool.SerializationError, match="the result of return_lock"):
            await pool.run(workers.return_lock)


async def test_a_cancelled_call_kills_the_process_running_it(tmp_path: Path) -> None:
    async with ray_pool() as pool:
        with anyio.CancelScope() as scope:

            async def cancel_once_started() -> None:
                await read_pid(tmp_path / "pid")
                scope.cancel()

            async with anyio.create_task_group() as group:
                group.start_soon(cancel_once_started)
                await pool.run(workers.write_pid_and_sleep, tmp_path / "pid", 60)
        assert scope.cancelled_caught
        pid = int((tmp_path / "pid").read_text())
        # The cancellation returns once Ray is told to kill the worker; its process is gone a
        # moment later (a fraction of a second; longer on a busy machine).
        assert await wait_until_async(lambda: dead(pid), timeout=10.0)
        assert await pool.run(workers.square, 5) == 25
        assert pool.stats().calls_cancelled == 1


async def test_a_cancellation_that_meets_its_calls_end_harms_no_other_call() -> None:
    # Ray's forced cancel of a task could kill the next task its process ran (the reason the
    # workers are actors): cancellations land around the end of calls of a few milliseconds,
    # each followed by calls that must all succeed.
    async with ray_pool() as pool:
        for attempt in range(12):
            seconds = 0.002 + attempt * 0.001
            with anyio.move_on_after(seconds + 0.0015 * (attempt % 3 - 1)):
                await pool.run(workers.sleep_then_return, seconds, attempt)
            assert await pool.run(workers.square, attempt) == attempt * attempt
            assert await pool.run(workers.sleep_then_return, 0.001, attempt) == attempt


async def test_workers_the_cluster_cannot_hold_leave_the_calls_to_those_it_can() -> None:
    # The session's Ray has 2 CPUs, a worker holds one: 2 of the 4 workers cannot start, and
    # no call may wait for those while the other two serve.
    async with ray_pool(4) as pool:
        results: dict[int, object] = {}

        async def call(index: int) -> None:
            results[index] = await pool.run(workers.sleep_then_return, 0.05, index)

        async with anyio.create_task_group() as group:
            for index in range(8):
                group.start_soon(call, index)
        assert results == {index: index for index in range(8)}
        assert pool.stats().workers_alive == 2


async def test_without_kill_on_cancel_the_abandoned_call_runs_to_its_end(tmp_path: Path) -> None:
    started, release, done = tmp_path / "pid", tmp_path / "release", tmp_path / "done"
    async with ray_pool() as pool:
        view = pool.with_options(kill_on_cancel=False)
        async with anyio.create_task_group() as group:
            group.start_soon(view.run, workers.write_pid_and_wait_for, started, release)
            pid = await read_pid(started)
            group.cancel_scope.cancel()
        assert pool.stats().calls_pending == 1  # join() waits for it
        assert not dead(pid)
        release.touch()
        await view.run(workers.touch_and_return, done, None)
    assert done.exists()
    assert pool.stats().calls_pending == 0


async def test_map_runs_chunks_as_tasks_in_order_or_as_they_finish() -> None:
    async with ray_pool() as pool:
        ordered = [result async for result in pool.map(workers.square, range(50), chunksize=7)]
        assert ordered == [x * x for x in range(50)]
        unordered = [r async for r in pool.map(workers.square, range(20), ordered=False)]
        assert sorted(unordered) == [x * x for x in range(20)]
        items = [1, -2, 3]
        results = pool.map(workers.square_unless_negative, items, return_exceptions=True)
        outcome = [result async for result in results]
        assert outcome[0::2] == [1, 9]
        assert isinstance(outcome[1], ValueError)


async def test_two_hundred_concurrent_calls_need_no_thread_each() -> None:
    async with ray_pool() as pool:
        await pool.run(workers.square, 1)  # Ray's own threads are up
        threads = threading.active_count()
        peak = threads

        async def call(index: int) -> None:
            nonlocal peak
            assert await pool.run(workers.square, index) == index * index
            peak = max(peak, threading.active_count())

        async with anyio.create_task_group() as group:
            for index in range(200):
                group.start_soon(call, index)
        assert peak <= threads + 2
        assert pool.stats().calls_completed == 201


@pytest.mark.parametrize("fn", [workers.count_up, workers.async_count_up], ids=["sync", "async"])
async def test_stream_yields_a_generators_items_in_order(fn: object) -> None:
    async with ray_pool() as pool:
        assert [item async for item in pool.stream(fn, 600)] == list(range(600))  # type: ignore[arg-type]
        assert pool.stats().calls_completed == 1


async def test_a_stream_raises_the_generators_exception_after_its_items() -> None:
    async with ray_pool() as pool:
        received: list[object] = []

        async def consume() -> None:
            async for item in pool.stream(workers.yield_then_raise_quota_error, "u", 3):
                received.append(item)

        with pytest.raises(workers.QuotaError, match="u is over quota"):
            await consume()
        assert received == [1]
        assert pool.stats().calls_failed == 1


async def test_leaving_a_stream_early_kills_its_generators_process(tmp_path: Path) -> None:
    outcome = tmp_path / "outcome"
    async with ray_pool() as pool:
        async with pool.stream(workers.yield_pid_forever, outcome) as items:
            pid = await anext(aiter(items))
        # Killed, as a cancelled call is: Ray's interrupt could not reach a generator Ray holds
        # back, so its finally did not run.
        assert await wait_until_async(lambda: dead(pid), timeout=10.0)
        assert not outcome.exists()
        assert await pool.run(workers.square, 6) == 36
        stats = pool.stats()
        assert (stats.calls_cancelled, stats.calls_running, stats.calls_pending) == (1, 0, 0)


@pytest.mark.parametrize("buffer", [6, None], ids=["buffer=6", "default buffer"])
async def test_a_streams_generator_runs_at_most_buffer_items_ahead(
    buffer: int | None, tmp_path: Path
) -> None:
    bound = 64 if buffer is None else buffer
    log = tmp_path / "produced"
    async with ray_pool() as pool:
        view = pool if buffer is None else pool.with_options(buffer=buffer)
        async with view.stream(workers.count_forever_logging, log) as items:
            taken = 0
            async for _ in items:
                taken += 1
                if taken == 10:
                    break
            # The consumer pauses: the endless generator runs up to the bound, and no further.
            await anyio.sleep(0.5)
            produced = len(log.read_text().split())
        assert produced <= taken + bound


async def test_what_ray_cannot_do_is_refused_by_name() -> None:
    async with ray_pool() as pool:
        with pytest.raises(
            anypool.UnsupportedError,
            match=r"^the ray backend does not support pool\.open_channel: talk to a Ray actor",
        ):
            pool.open_channel(workers.square)
        queue: anypool.Queue[int] = anypool.Queue()
        with pytest.raises(
            anypool.UnsupportedError,
            match=r"^the ray backend does not support anypool\.Queue: use ray\.util\.queue\.Queue",
        ):
            await pool.run(workers.identity, queue)
        assert pool.stats().calls_running == 0
    with pytest.raises(ValueError, match=r"^start_method: options of the pool's default backend"):
        anypool.Pool(backend=RayBackend(), start_method="fork")


async def test_a_ray_initialised_already_is_used_and_left_running() -> None:
    import ray

    assert ray.is_initialized()
    async with ray_pool() as pool:
        assert await pool.run(workers.square, 2) == 4
    assert ray.is_initialized()
