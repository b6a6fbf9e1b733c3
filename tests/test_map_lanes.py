"""pool.map runs its chunks in lanes, each on one worker at a time, that take their turn for a
worker with the pool's other calls. What that must keep: no frame size deadlocks the pipe, a
worker that dies or retires loses no chunk it never started, calls waiting for a worker still
get one, and ``max_tasks_per_worker`` and ``kill_on_cancel=False`` mean what they say.
"""

from __future__ import annotations

import collections
import itertools
import multiprocessing.connection
import os
from collections.abc import Iterator

import anyio
import pytest

import anypool
import workers
from anypool.backends._execution import run_pickled_call
from anypool.backends.local import wire
from anypool.backends.local.child.pipe import Pipe
from support import gone, stand_in_worker, wait_until_async

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]


async def collect(results: anypool.MapResults) -> list[object]:
    return [result async for result in results]


async def test_chunks_larger_than_the_pipe_both_ways_do_not_deadlock() -> None:
    # Chunks of 600 KB each way, more than a pipe holds: while a worker writes the results of
    # one chunk, the next one waits to be written to it.
    items = [bytes([index]) * 300_000 for index in range(24)]
    async with anypool.Pool(2) as pool:
        with anyio.fail_after(30):
            results = await collect(pool.map(workers.identity, items, chunksize=2))
    assert results == items


async def test_items_after_one_that_kills_its_worker_run_on_another() -> None:
    # One worker: the chunks after the fatal one run on its replacement.
    items = [(workers.identity, index) for index in range(40)]
    items[20] = (workers.exit_immediately, 3)
    async with anypool.Pool(1) as pool:
        results = await collect(pool.map(workers.apply, items, return_exceptions=True))
        assert await pool.run(workers.square, 3) == 9
    failure = results[20]
    assert isinstance(failure, anypool.BrokenWorkerError)
    assert failure.exitcode == 3
    assert results[:20] + results[21:] == [*range(20), *range(21, 40)]


def _answer_one_then_retire(connection: multiprocessing.connection.Connection) -> None:
    # Plays a worker whose idle timeout expires just as a chunk is on its way: it answers the
    # first, then, once the next waits in its pipe, announces its retirement and exits, as a
    # worker does that never read it.
    pipe = Pipe(connection.fileno(), None)
    message = pipe.receive()
    assert message is not None
    pipe.send(*run_pickled_call(message[1]))
    pipe.receive()
    pipe.send(wire.RETIRING, b"")


async def test_a_chunk_sent_to_a_worker_that_retires_runs_on_a_new_one() -> None:
    # The race cannot be provoked from outside, so a stand-in worker takes the idle slot.
    async with anypool.Pool(1, start_method="fork") as pool:
        retiring = stand_in_worker(pool, _answer_one_then_retire)

        pids = await collect(pool.map(workers.apply, [(workers.current_pid,)] * 3))

        assert pids[0] == retiring.pid
        assert pids[1] == pids[2] not in (retiring.pid, os.getpid())
        stats = pool.stats()
        assert (stats.calls_completed, stats.calls_failed, stats.workers_alive) == (3, 0, 1)
    assert retiring.exitcode == 0


async def test_a_call_gets_a_worker_while_an_endless_map_keeps_every_worker_busy() -> None:
    def endless() -> Iterator[tuple[object, ...]]:
        for index in itertools.count():
            yield (workers.sleep_then_return, 0.002, index)

    async with anypool.Pool(1) as pool, pool.map(workers.apply, endless()) as results:
        received = 0
        async with anyio.create_task_group() as group:

            async def call() -> None:
                with anyio.fail_after(10):
                    assert await pool.run(workers.square, 7) == 49
                group.cancel_scope.cancel()

            async for _ in results:
                received += 1
                if received == 5:
                    # The map holds the only worker now.
                    group.start_soon(call)
        assert received > 5


async def test_maps_that_share_one_worker_take_turns_and_all_finish() -> None:
    async with anypool.Pool(1) as pool:
        outcomes: dict[int, list[object]] = {}

        async def consume(index: int) -> None:
            outcomes[index] = await collect(pool.map(workers.square, range(20)))

        with anyio.fail_after(30):
            async with anyio.create_task_group() as group:
                for index in range(3):
                    group.start_soon(consume, index)
    assert outcomes == {index: [n * n for n in range(20)] for index in range(3)}


async def test_map_replaces_each_worker_after_max_tasks_per_worker_chunks() -> None:
    async with anypool.Pool(1, max_tasks_per_worker=2) as pool:
        pids = await collect(pool.map(workers.apply, [(workers.current_pid,)] * 8))
    assert sorted(collections.Counter(pids).values()) == [2, 2, 2, 2]


async def test_leaving_early_without_kill_on_cancel_lets_the_worker_run_its_chunks_out() -> None:
    # Fast items first; the chunk the worker runs when the consumer leaves is slow.
    items = [(workers.identity, index) for index in range(5)]
    items += [(workers.sleep_then_return, 0.2, "slow")] * 4
    async with anypool.Pool(1) as pool:
        view = pool.with_options(kill_on_cancel=False)
        async with view.map(workers.apply, items) as results:
            async for result in results:
                if result == 4:
                    break
        pid = await pool.run(workers.current_pid)
        assert not gone(pid)
        assert await wait_until_async(lambda: pool.stats().workers_busy == 0)
        stats = pool.stats()
        assert (stats.workers_replaced, stats.calls_failed) == (0, 0)
        assert await pool.run(workers.current_pid) == pid
