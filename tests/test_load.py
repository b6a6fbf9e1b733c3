"""Load: 10 000 callers awaiting one 2-worker pool at once are all served, with correct results,
in the order they arrived, while the parent's descriptors and memory stay bounded.

Both workers are held by two blocking calls while the callers arrive, so that every caller is
waiting at once (the peak the bounds are checked at); a file releases them.

Arrival order is well defined only between callers that reach the pool at different
scheduling steps (trio runs the tasks of one step in either order), so the order tests start
callers one by one, each once the previous one is queued.
"""

from __future__ import annotations

import os
from pathlib import Path

import anyio
import anyio.abc
import psutil
import pytest

import anypool
import workers

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]

CALLERS = 10_000
MAX_WORKERS = 2
MIB = 1 << 20

FD_HEADROOM = 20
RSS_HEADROOM = 200 * MIB

# pool.run takes a checkpoint before it queues a call: scheduling steps to let a caller that
# entered pool.run reach the queue (two suffice; one more for margin).
STEPS_TO_QUEUE = 3


def open_fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


class Callers:
    """Callers of ``pool.run(workers.identity, i)`` that record when they entered ``run`` and
    when it returned."""

    def __init__(self, pool: anypool.Pool) -> None:
        self.pool = pool
        self.entered: list[int] = []
        self.completed: list[int] = []
        self.results: dict[int, object] = {}

    async def call(self, i: int) -> None:
        self.entered.append(i)
        self.results[i] = await self.pool.run(workers.identity, i)
        self.completed.append(i)

    async def all_entered(self, count: int) -> None:
        """Wait until ``count`` callers entered ``pool.run`` and had the time to queue."""
        while len(self.entered) < count:
            await anyio.sleep(0)
        for _ in range(STEPS_TO_QUEUE):
            await anyio.sleep(0)

    async def arrive_one_by_one(self, group: anyio.abc.TaskGroup, count: int) -> None:
        """Start callers 0 .. count-1, each once the previous one is queued."""
        for i in range(count):
            group.start_soon(self.call, i)
            await self.all_entered(i + 1)


async def hold_the_workers(
    pool: anypool.Pool, group: anyio.abc.TaskGroup, release: Path, workers_to_hold: int
) -> None:
    """Occupy every worker with a call that returns once ``release`` exists."""

    async def blocker() -> None:
        assert await pool.run(workers.wait_for_path_then_return, str(release), "held") == "held"

    for _ in range(workers_to_hold):
        group.start_soon(blocker)
    while pool.stats().calls_running < workers_to_hold:
        await anyio.sleep(0.01)


async def test_ten_thousand_concurrent_callers_are_all_served_with_bounded_resources(
    tmp_path: Path,
) -> None:
    process = psutil.Process()
    fds_before = open_fd_count()
    rss_before = process.memory_info().rss
    release = tmp_path / "release"
    async with anypool.Pool(MAX_WORKERS) as pool:
        callers = Callers(pool)
        async with anyio.create_task_group() as group:
            await hold_the_workers(pool, group, release, MAX_WORKERS)
            # All at once: every caller enters pool.run in the same scheduling step.
            for i in range(CALLERS):
                group.start_soon(callers.call, i)
            await callers.all_entered(CALLERS)
            # The peak: every caller waits for a worker.
            fds_at_peak = open_fd_count()
            rss_at_peak = process.memory_info().rss
            stats = pool.stats()
            release.touch()
        assert (stats.calls_running, stats.workers_alive) == (MAX_WORKERS, MAX_WORKERS)
        assert callers.results == {i: i for i in range(CALLERS)}
        assert len(callers.completed) == CALLERS
        stats = pool.stats()
        assert stats.calls_completed == CALLERS + MAX_WORKERS
        assert (stats.calls_failed, stats.calls_cancelled, stats.workers_replaced) == (0, 0, 0)
    assert fds_at_peak < fds_before + FD_HEADROOM, (
        f"{fds_at_peak - fds_before} more descriptors open while {CALLERS} callers waited"
    )
    assert rss_at_peak - rss_before < RSS_HEADROOM, (
        f"RSS grew by {(rss_at_peak - rss_before) / MIB:.0f} MiB while {CALLERS} callers waited"
    )


async def test_callers_of_a_single_worker_are_served_exactly_in_arrival_order(
    tmp_path: Path,
) -> None:
    # One worker runs one call at a time: completion order is admission order.
    count = 2_000
    release = tmp_path / "release"
    async with anypool.Pool(1) as pool:
        callers = Callers(pool)
        async with anyio.create_task_group() as group:
            await hold_the_workers(pool, group, release, 1)
            await callers.arrive_one_by_one(group, count)
            release.touch()
    assert callers.entered == list(range(count))
    assert callers.completed == list(range(count))
    assert callers.results == {i: i for i in range(count)}


async def test_ten_thousand_callers_of_two_workers_are_served_close_to_arrival_order(
    tmp_path: Path,
) -> None:
    release = tmp_path / "release"
    async with anypool.Pool(MAX_WORKERS) as pool:
        callers = Callers(pool)
        async with anyio.create_task_group() as group:
            await hold_the_workers(pool, group, release, MAX_WORKERS)
            await callers.arrive_one_by_one(group, CALLERS)
            release.touch()
    assert callers.entered == list(range(CALLERS))
    assert callers.results == {i: i for i in range(CALLERS)}
    # How many places each call completed after (+) or before (-) its place of arrival. Two
    # workers answer in either order, so neighbours swap; and while the OS pauses one worker
    # the other completes the calls behind the paused one's: a few calls come dozens of places
    # late. A LIFO or random admission would put most calls thousands of places off.
    displacements = [position - i for position, i in enumerate(callers.completed)]
    close = sum(abs(displacement) <= 2 * MAX_WORKERS for displacement in displacements)
    assert close >= 0.95 * CALLERS, (
        f"only {close} of {CALLERS} calls completed within {2 * MAX_WORKERS} places of their "
        f"arrival; worst: {max(displacements, key=abs)}"
    )
    assert max(displacements) < CALLERS // 2, "a call waited behind half the later callers"
